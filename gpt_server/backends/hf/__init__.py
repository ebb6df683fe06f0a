"""The transformers backend (work_mode: hf)."""
