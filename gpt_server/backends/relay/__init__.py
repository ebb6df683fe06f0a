"""Relay backends: engine servers on loopback and remote OpenAI-compatible upstreams."""
