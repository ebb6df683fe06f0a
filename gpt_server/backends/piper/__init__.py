"""Piper backend (ONNX VITS voices): text-to-speech, whole files or streamed sentence by sentence."""
