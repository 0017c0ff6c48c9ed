"""Helpers for Ferry's functional tests (tests/functional)."""
