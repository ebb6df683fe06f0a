"""The gateway: OpenAI-compatible HTTP front door. Never imports an engine."""
