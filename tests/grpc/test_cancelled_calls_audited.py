"""A call cancelled after it reached a citizen is still in the audit log (SPEC §7).

The hard case is a birth whose insert commits while the caller is already gone: the servicer
never gets to say which PIN it created, so the gate must know the PIN before the insert. The
test makes that moment deterministic: a trigger (installed by the superuser, for this test's
marker name only) holds the insert on an advisory lock the test owns and swallows the query
cancel that the server sends when the call is cancelled, counting it in a sequence. The test
cancels the call, waits for that count, releases the lock so the insert commits, and then looks
for the entry.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import grpc
import pytest

from tests.conftest import DB
from tests.helpers import birth_request

LOCK_KEY = 1_400_014
MARKER = "Trần Thị Hủy Ngang"


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def held_births(db: DB) -> Iterator[str]:
    """Install the holding trigger; yield the sequence that counts swallowed cancels."""
    seq = f"cancel_seen_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE SEQUENCE {seq}")
    db.execute(
        f"""
        CREATE FUNCTION test_hold_birth() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN
            IF NEW.full_name = '{MARKER}' THEN
                LOOP
                    BEGIN
                        PERFORM pg_advisory_xact_lock({LOCK_KEY});
                        EXIT;
                    EXCEPTION WHEN query_canceled THEN
                        PERFORM nextval('{seq}');
                    END;
                END LOOP;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_hold_birth AFTER INSERT ON citizens
            FOR EACH ROW EXECUTE FUNCTION test_hold_birth();
        """
    )
    try:
        yield seq
    finally:
        db.execute("DROP TRIGGER test_hold_birth ON citizens")
        db.execute("DROP FUNCTION test_hold_birth()")
        db.execute(f"DROP SEQUENCE {seq}")


def test_a_birth_committed_after_its_caller_cancelled_is_audited(
    civil, agency, db, dsn, held_births
):
    request = birth_request(full_name=MARKER)

    async def hold() -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn)
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        return conn

    loop = asyncio.new_event_loop()  # the locking connection lives on one loop
    locker = loop.run_until_complete(hold())
    try:
        call = civil.RegisterBirth.future(request, metadata=agency.metadata(), timeout=60)
        _wait(
            lambda: db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objid = $1",
                LOCK_KEY,
            ),
            20,
            "the insert to wait on the test's lock",
        )
        call.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            call.result()
        # The server cancelled its database work: the trigger saw the query cancel.
        _wait(
            lambda: db.fetchval(f"SELECT is_called FROM {held_births}"),
            20,
            "the server to cancel the insert",
        )
    finally:
        loop.run_until_complete(locker.close())  # the insert goes on and commits
        loop.close()

    pin = _wait(
        lambda: db.fetchval(
            "SELECT c.pin FROM citizens c JOIN idempotency_keys k ON k.result_key = c.pin "
            "WHERE k.agency_id = $1 AND k.request_id = $2",
            agency.id,
            request.request_id,
        ),
        20,
        "the birth to commit",
    )
    entries = _wait(
        lambda: db.fetch(
            "SELECT method, outcome, request_id FROM audit_log "
            "WHERE pins @> ARRAY[$1]::text[] AND agency_id = $2",
            pin,
            agency.id,
        ),
        10,
        f"an audit entry naming the new PIN {pin}",
    )
    assert [(e["method"], e["outcome"], e["request_id"]) for e in entries] == [
        (
            "/registry.v1.CivilRegistrationService/RegisterBirth",
            "CANCELLED",
            request.request_id,
        )
    ]
