"""Shared audio helpers: decode uploads (PyAV, soundfile fallback), encode speech incrementally.

Submodules import numpy/PyAV; this package root stays import-light so the gateway can use
``gpt_server.audio.formats`` (pure text formatting) without loading them.
"""

__all__: list[str] = []
