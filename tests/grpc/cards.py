"""Helpers for the card tests and every test that needs a citizen with cards: constants,
request builders, calls and database look-ups (CardService, IdentityService.ResolveLegacyId).

Tests share one database: every helper makes serials, legacy numbers and request ids unique to
the run.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from registry.runtime import clock
from registry.v1 import card_pb2
from registry.v1 import card_service_pb2 as pb
from tests.helpers import birth_request, date, decode

FIRST = card_pb2.CARD_KIND_FIRST_ISSUE
EXCHANGE = card_pb2.CARD_KIND_EXCHANGE
REISSUE = card_pb2.CARD_KIND_REISSUE
ACTIVE = card_pb2.CARD_STATE_ACTIVE
SUPERSEDED = card_pb2.CARD_STATE_SUPERSEDED
REVOKED = card_pb2.CARD_STATE_REVOKED
WITHHELD = card_pb2.CARD_STATE_WITHHELD
EXPIRED = card_pb2.CARD_STATE_EXPIRED
# Stored states (migrations/0002_cards.sql); EXPIRED is never stored.
DB_ACTIVE, DB_SUPERSEDED, DB_REVOKED, DB_WITHHELD = 1, 2, 3, 4
PIN_CANCELLED = 4
AUTHORITY = "Cục Cảnh sát QLHC về TTXH"
# No citizen can hold a PIN under an unknown province code (FK to pin_prefixes).
NOBODY = "998060000001"
ADULT_DOB = (2000, 5, 10)

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED


# -- helpers ------------------------------------------------------------------------------------


def new_serial() -> str:
    return "T-" + uuid.uuid4().hex[:12].upper()


def new_rid() -> str:
    return str(uuid.uuid4())


def legacy(digits: int) -> str:
    """A legacy CMND number unique to this run."""
    return str(uuid.uuid4().int)[:digits]


def pdate(d: dt.date) -> Any:
    return date(d.year, d.month, d.day)


def today() -> dt.date:
    return clock.today()


def ymd(d: Any) -> tuple[int, int, int]:
    return (d.year, d.month, d.day)


def person(civil: Any, agency: Any, dob: tuple[int, ...] = ADULT_DOB, **overrides: Any) -> Any:
    """Register a citizen (a late registration for an old date of birth) and return it."""
    request = birth_request(
        date_of_birth=date(*dob),
        registration_number=f"T-{uuid.uuid4().hex[:16]}",
        **overrides,
    )
    return civil.RegisterBirth(request, metadata=agency.metadata()).citizen


def issue_request(
    pin: str,
    *,
    kind: int = FIRST,
    issued: tuple[int, int, int] | dt.date = (2025, 3, 1),
    serial: str | None = None,
    authority: str = AUTHORITY,
    request_id: str | None = None,
) -> pb.IssueCardRequest:
    issue_date = pdate(issued) if isinstance(issued, dt.date) else date(*issued)
    return pb.IssueCardRequest(
        request_id=request_id or new_rid(),
        pin=pin,
        kind=kind,
        serial=serial or new_serial(),
        issue_date=issue_date,
        issuing_authority=authority,
    )


def issue(cards: Any, agency: Any, pin: str, **kwargs: Any) -> Any:
    """IssueCard; return the response."""
    return cards.IssueCard(issue_request(pin, **kwargs), metadata=agency.metadata())


def withhold(cards: Any, agency: Any, serial: str, reason: str = "held for checks", **kw: Any):
    request = pb.WithholdCardRequest(
        request_id=kw.get("request_id") or new_rid(), serial=serial, reason=reason
    )
    return cards.WithholdCard(request, metadata=agency.metadata())


def release(cards: Any, agency: Any, serial: str, reason: str = "checks done", **kw: Any):
    request = pb.ReleaseCardRequest(
        request_id=kw.get("request_id") or new_rid(), serial=serial, reason=reason
    )
    return cards.ReleaseCard(request, metadata=agency.metadata())


def revoke(cards: Any, agency: Any, serial: str, reason: str = "issued in error", **kw: Any):
    request = pb.RevokeCardRequest(
        request_id=kw.get("request_id") or new_rid(), serial=serial, reason=reason
    )
    return cards.RevokeCard(request, metadata=agency.metadata())


def link(identity_or_cards: Any, agency: Any, pin: str, legacy_id: str, **kw: Any) -> Any:
    request = pb.LinkLegacyIdRequest(
        request_id=kw.get("request_id") or new_rid(), pin=pin, legacy_id=legacy_id
    )
    return identity_or_cards.LinkLegacyId(request, metadata=agency.metadata())


def listed(cards: Any, agency: Any, pin: str) -> list[Any]:
    return list(cards.ListCards(pb.ListCardsRequest(pin=pin), metadata=agency.metadata()).cards)


def db_cards(db: Any, pin: str) -> list[tuple[str, int]]:
    """(serial, stored state) of a citizen's cards, in order of recording."""
    rows = db.fetch("SELECT serial, state FROM cards WHERE pin = $1 ORDER BY seq", pin)
    return [(r["serial"], r["state"]) for r in rows]


def card_count(db: Any, pin: str) -> int:
    return int(db.fetchval("SELECT count(*) FROM cards WHERE pin = $1", pin))


def active_count(db: Any, pin: str) -> int:
    return int(db.fetchval("SELECT count(*) FROM cards WHERE pin = $1 AND state = 1", pin))


def key_stored(db: Any, agency: Any, request_id: str) -> bool:
    return bool(
        db.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE agency_id = $1 AND request_id = $2",
            agency.id,
            request_id,
        )
    )


def cancel_pin(db: Any, old_pin: str, new_pin: str) -> None:
    """Cancel old_pin and point it at new_pin (a PIN re-establishment, done directly)."""
    db.execute(
        "UPDATE citizens SET status = $2, replaced_by_pin = $3 WHERE pin = $1",
        old_pin,
        PIN_CANCELLED,
        new_pin,
    )


def race(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run call(0..n-1) in n threads released at the same instant; errors are decoded."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = call(i)
        except grpc.RpcError as exc:
            results[i] = decode(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a call hung (deadlock?)"
    return results


def each(method: Callable[..., Any], requests: list[Any], metadata: list[Any]) -> Any:
    """A race call sending requests[i] with metadata[i] (tokens made before the start)."""
    return lambda i: method(requests[i], metadata=metadata[i], timeout=30)


def is_error(result: Any) -> bool:
    return hasattr(result, "code") and isinstance(result.code, grpc.StatusCode)
