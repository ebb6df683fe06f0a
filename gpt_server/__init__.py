"""GPT Server: one OpenAI-compatible port in front of self-hosted models."""

__version__ = "0.1.0"
__all__ = ["__version__"]
