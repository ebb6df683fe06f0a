"""Backends: one folder per engine, one class implementing the capabilities it declares."""
