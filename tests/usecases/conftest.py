"""Fixtures of the use-case tests: the repository tests' connections (tests/db/conftest.py)."""

from tests.db.conftest import rt, su

__all__ = ["rt", "su"]
