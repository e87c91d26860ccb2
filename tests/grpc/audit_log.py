"""Helpers for the audit log tests: entries and heads read from the database, the `registry`
CLI, private databases for tampering, and the fixtures shared by the audit log's files
(tests/grpc/conftest.py lists them).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from registry.config import Settings
from registry.db.migrate import migrate
from registry.v1 import audit_service_pb2 as pb
from registry.v1 import (
    audit_service_pb2_grpc,
    citizen_pb2,
)
from tests.conftest import TestAgency as Agency
from tests.conftest import (
    run,
)
from tests.helpers import call_error

REGISTRY = Path(sys.executable).parent / "registry"
V1 = "/registry.v1."
MALE = citizen_pb2.SEX_MALE
FEMALE = citizen_pb2.SEX_FEMALE
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
TRIGGER_REFUSAL = asyncpg.exceptions.InsufficientPrivilegeError


# -- helpers ------------------------------------------------------------------------------------


def unique_unknown_pin() -> str:
    """A well-formed PIN no citizen holds and no other test names (province 998 is unused)."""
    return "998" + str(uuid.uuid4().int)[:9]


def head_seq(db: Any) -> int:
    return int(db.fetchval("SELECT seq FROM audit_head"))


def entries_by(db: Any, agency: Agency, after: int) -> list[dict[str, Any]]:
    """The audit entries an agency's calls wrote after position `after`, in chain order."""
    rows = db.fetch(
        "SELECT seq, time, agency_id, method, pins, outcome, purpose, request_id "
        "FROM audit_log WHERE seq > $1 AND agency_id = $2 ORDER BY seq",
        after,
        agency.id,
    )
    return [dict(r) for r in rows]


def naming(db: Any, pin: str, after: int) -> list[dict[str, Any]]:
    """The audit entries naming a PIN written after position `after`."""
    rows = db.fetch(
        "SELECT seq, agency_id, method, pins, outcome FROM audit_log "
        "WHERE seq > $1 AND pins @> ARRAY[$2::text] ORDER BY seq",
        after,
        pin,
    )
    return [dict(r) for r in rows]


def assert_entry(
    row: dict[str, Any],
    agency: Agency,
    method: str,
    pins: list[str],
    *,
    outcome: str = "OK",
    purpose: str = "",
    request_id: str = "",
    window: tuple[float, float] | None = None,
) -> None:
    assert row["agency_id"] == agency.id
    assert row["method"] == V1 + method
    assert sorted(row["pins"]) == sorted(pins)
    assert row["outcome"] == outcome
    assert row["purpose"] == purpose
    assert row["request_id"] == request_id
    if window is not None:
        # The entry's time is when the call was made.
        assert window[0] - 0.001 <= row["time"].timestamp() <= window[1] + 0.001


class Calls:
    """An agency's calls, each followed by a direct read of the audit table."""

    def __init__(self, db: Any, agency: Agency, purpose: str):
        self.db = db
        self.agency = agency
        self.purpose = purpose
        self.md = agency.metadata(purpose=purpose)
        self.before = head_seq(db)
        self.window = (0.0, 0.0)

    def __call__(self, fn: Callable[..., Any], request: Any) -> Any:
        self.before = head_seq(self.db)
        started = time.time()
        try:
            return fn(request, metadata=self.md)
        finally:
            self.window = (started, time.time())

    def fails(self, fn: Callable[..., Any], request: Any) -> Any:
        self.before = head_seq(self.db)
        started = time.time()
        try:
            return call_error(fn, request, metadata=self.md)
        finally:
            self.window = (started, time.time())

    def written(self) -> list[dict[str, Any]]:
        """The entries written by the last call (read as soon as it answered)."""
        return entries_by(self.db, self.agency, self.before)

    def one(self, method: str, pins: list[str], **expected: Any) -> dict[str, Any]:
        written = self.written()
        assert len(written) == 1, written
        expected.setdefault("purpose", self.purpose)
        assert_entry(written[0], self.agency, method, pins, window=self.window, **expected)
        return written[0]


def history(audit: Any, agency: Agency, pin: str, **kw: Any) -> pb.ListAccessLogResponse:
    request = pb.ListAccessLogRequest(pin=pin, **kw)
    return audit.ListAccessLog(request, metadata=agency.metadata(purpose="citizen portal"))


def registry_cli(
    *args: str, dsn: str, settings: Settings | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `registry` command on dsn; with `settings`, with the signing keys and data
    directory (audit checkpoint file) of the server that ran with them."""
    env = dict(os.environ, REGISTRY_DATABASE_URL=dsn)
    if settings is not None:
        env.update(
            REGISTRY_DATA_DIR=str(settings.data_dir),
            REGISTRY_SIGNING_KEY_DIR=str(settings.signing_keys_path),
        )
    return subprocess.run(
        [str(REGISTRY), *args], capture_output=True, text=True, env=env, timeout=60
    )


def verify_chain(dsn: str, settings: Settings | None = None) -> subprocess.CompletedProcess[str]:
    result = registry_cli("audit", "verify", dsn=dsn, settings=settings)
    assert "Traceback" not in result.stderr, result.stderr
    return result


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def execute(dsn: str, *statements: str) -> None:
    run(_execute(dsn, *statements))


@pytest.fixture(scope="module")
def audit(channel: grpc.Channel) -> audit_service_pb2_grpc.AuditServiceStub:
    return audit_service_pb2_grpc.AuditServiceStub(channel)


@pytest.fixture(scope="module")
def auditor(make_agency: Callable[..., Agency]) -> Agency:
    return make_agency(scopes=("audit:read",))


def database_dsn(dsn: str, name: str) -> str:
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


@contextlib.contextmanager
def private_database(dsn: str) -> Iterator[str]:
    """A database of its own in the test cluster, migrated; yields its name."""
    name = f"audit_{uuid.uuid4().hex[:10]}"
    execute(dsn, f'CREATE DATABASE "{name}"')
    try:

        async def go() -> None:
            conn = await asyncpg.connect(database_dsn(dsn, name))
            try:
                await migrate(conn)
            finally:
                await conn.close()

        run(go())
        yield name
    finally:
        execute(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


DISABLE = "ALTER TABLE audit_log DISABLE TRIGGER USER"
REPLICA = "SET session_replication_role = replica"
LAST = "(SELECT max(seq) FROM audit_log)"


@pytest.fixture
def calls(db, make_agency) -> Callable[..., Calls]:
    def make(purpose: str = "audit coverage", **kw: Any) -> Calls:
        kw.setdefault("miss_budget", 1000)
        return Calls(db, make_agency(**kw), purpose)

    return make


def batch(identity: Any) -> Callable[..., list[Any]]:
    """BatchVerify as a call taking a list of items."""
    return lambda items, metadata: list(identity.BatchVerify(iter(items), metadata=metadata))
