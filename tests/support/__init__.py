"""Shared pytest fixtures; every module here is loaded as a plugin by tests/conftest.py."""
