"""Shared chat layer: templates, tool-call parsers, reasoning parsers, structured output."""
