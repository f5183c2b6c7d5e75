"""Fixtures of the sessions tests: see tests/conftest.py for the shared ones."""
