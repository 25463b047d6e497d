"""Integrations with verl internals that have no public hook (kept in one module each)."""
