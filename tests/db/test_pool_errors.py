"""Which database failures are 'unavailable' (retry) and which are bugs (INTERNAL)."""

from __future__ import annotations

import asyncpg
import pytest

from registry.db.pool import is_conflict, is_unavailable


def _raised_while_handling(first: BaseException, second: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise second  # noqa: B904 - implicit chaining is what asyncpg does
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("too many clients"),
    ],
)
def test_connection_class_failures_are_unavailable(exc):
    assert is_unavailable(exc)


def test_a_pool_error_raised_while_a_crashed_connection_is_released_is_unavailable():
    # Seen when PostgreSQL crashed mid-call: asyncpg's release of the dead connection raised
    # InternalClientError with the real failure as its context.
    exc = _raised_while_handling(
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InternalClientError("PoolConnectionHolder.release() called on a free holder"),
    )
    assert is_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.InternalClientError("a bug in the client, not an outage"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.UndefinedColumnError("column does not exist"),
        ValueError("a bug"),
        _raised_while_handling(ValueError("first bug"), KeyError("second bug")),
    ],
)
def test_bugs_are_not_unavailable(exc):
    assert not is_unavailable(exc)


def test_serialization_failures_are_conflicts_not_outages():
    exc = asyncpg.SerializationError("could not serialize access")
    assert is_conflict(exc) and not is_unavailable(exc)
