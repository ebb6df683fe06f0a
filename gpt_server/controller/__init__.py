"""The controller: registry of workers and dispatch policies."""
