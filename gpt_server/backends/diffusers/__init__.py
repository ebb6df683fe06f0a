"""Image generation and editing with diffusers pipelines (``work_mode: diffusers``)."""
