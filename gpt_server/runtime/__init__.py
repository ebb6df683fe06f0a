"""Run-time model management: replicas started and stopped while traffic flows."""
