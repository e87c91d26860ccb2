"""Fixtures of the token attack matrix: the session agency once the server knows it, and new
agencies returned once the server knows them (these override tests/conftest.py's `agency` in
this folder only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.grpc.auth.tokens import (
    wait_known,
)


@pytest.fixture(scope="module")
def agency(agency: Any, civil: Any) -> Any:
    """The session agency holding every scope, known to the server."""
    wait_known(civil, agency.metadata())
    return agency


@pytest.fixture
def new_agency(make_agency: Any, civil: Any) -> Callable[..., Any]:
    """make_agency, returning once the server knows the agency."""

    def factory(**kwargs: Any) -> Any:
        created = make_agency(**kwargs)
        wait_known(civil, created.metadata())
        return created

    return factory
