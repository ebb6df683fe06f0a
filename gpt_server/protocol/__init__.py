"""Wire schemas: OpenAI-facing (``openai``) and internal controller/worker (``worker``)."""
