"""Thin routes: get the service from app.state, call it, return JSON or SSE."""
