"""The web playground and dashboard (static assets under ``static/``, served at /ui)."""
