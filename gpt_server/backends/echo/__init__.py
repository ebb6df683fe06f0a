"""A no-op benchmark backend (issue 4)."""
