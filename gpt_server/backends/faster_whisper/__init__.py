"""faster-whisper backend (Whisper on CTranslate2): transcriptions and translations."""
