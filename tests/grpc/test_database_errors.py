"""What a caller is told when the database fails a call in the middle (registry/grpc/gate.py
`_as_registry_error`): a conflict is ABORTED and retried, an outage is UNAVAILABLE, anything
else INTERNAL with an error id for the operator, and never the database's own words.

The failures are real PostgreSQL errors, raised on purpose by a trigger the database superuser
plants on `legacy_ids` for one citizen only, for the length of one call.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator

import grpc
import pytest

from registry.v1 import card_service_pb2 as card_pb
from tests.grpc.cards import legacy, person
from tests.helpers import decode

PLANTED = "planted failure f3b1"  # the database's words: must never reach the caller


@pytest.fixture
def failing(db) -> Iterator[object]:
    """plant(pin, sqlstate): the next legacy-id link of that citizen fails with sqlstate."""
    function = f"test_fail_{uuid.uuid4().hex[:8]}"
    db.execute(
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"RAISE EXCEPTION '{PLANTED}' USING ERRCODE = TG_ARGV[0]; END $$"
    )
    planted: list[str] = []

    def plant(pin: str, sqlstate: str) -> None:
        trigger = f"{function}_{len(planted)}"
        db.execute(
            f"CREATE TRIGGER {trigger} BEFORE INSERT ON legacy_ids FOR EACH ROW "
            f"WHEN (NEW.pin = '{pin}') EXECUTE FUNCTION {function}('{sqlstate}')"
        )
        planted.append(trigger)

    try:
        yield plant
    finally:
        for trigger in planted:
            db.execute(f"DROP TRIGGER IF EXISTS {trigger} ON legacy_ids")
        db.execute(f"DROP FUNCTION {function}()")


def link(cards, agency, pin: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        cards.LinkLegacyId(
            card_pb.LinkLegacyIdRequest(request_id=str(uuid.uuid4()), pin=pin, legacy_id=legacy(9)),
            metadata=agency.metadata(),
            timeout=30,
        )
    return refused.value


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])  # serialization failure, deadlock
def test_a_conflict_is_aborted_with_a_short_retry(civil, cards, agency, failing, sqlstate, caplog):
    caplog.set_level(logging.WARNING, logger="registry.grpc.gate")
    pin = person(civil, agency).pin
    failing(pin, sqlstate)
    details = decode(link(cards, agency, pin))
    assert (details.code, details.reason, details.message, details.retry_delay_s) == (
        grpc.StatusCode.ABORTED,
        "CONCURRENT_UPDATE",
        "the call collided with a concurrent change; retry it with the same request_id",
        pytest.approx(0.1),
    )
    warned = [r.getMessage() for r in caplog.records if r.name == "registry.grpc.gate"]
    assert [w.split(": ")[0] for w in warned] == ["transaction conflict"], warned


def test_a_database_going_away_mid_call_is_unavailable(civil, cards, agency, failing, caplog):
    caplog.set_level(logging.WARNING, logger="registry.grpc.gate")
    pin = person(civil, agency).pin
    failing(pin, "57P01")  # admin_shutdown
    details = decode(link(cards, agency, pin))
    assert (details.code, details.reason, details.message) == (
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "the register's database is temporarily unavailable; retry shortly",
    )
    warned = [r.getMessage() for r in caplog.records if r.name == "registry.grpc.gate"]
    assert [w.split(": ")[0] for w in warned] == ["database unavailable"], warned


def test_anything_else_is_internal_with_an_error_id_the_log_also_names(
    civil, cards, agency, failing, caplog
):
    caplog.set_level(logging.ERROR, logger="registry.grpc.gate")
    pin = person(civil, agency).pin
    failing(pin, "P0001")
    error = link(cards, agency, pin)
    details = decode(error)
    assert (details.code, details.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    match = re.fullmatch(
        r"internal error; quote error id ([0-9a-f]{12}) to the registry operator",
        details.message,
    )
    assert match, details.message
    assert details.metadata == {"error_id": match.group(1)}
    logged = [r for r in caplog.records if r.name == "registry.grpc.gate"]
    assert [r.getMessage() for r in logged] == [f"internal error {match.group(1)}"]
    assert PLANTED not in str(error.details()) and PLANTED not in str(error.trailing_metadata())
