"""CardService and IdentityService.ResolveLegacyId through a real channel.

A station's whole day: issue, exchange at a milestone, re-issue after loss, revoke a card issued
in error, withhold and release; expiry dates by the Law on Identification 2023 art. 21 (exchange
at 14, 25, 40, 60; valid until the day before the next milestone birthday; issued within two
years before a milestone: until the day before the milestone after it; issued at 58 or later:
no expiry); at most one ACTIVE card per citizen also under concurrent issuance; refusals that
write nothing; idempotency; old CMND numbers; scopes.

Tests share one database: every test registers its own citizens and uses serials and legacy
numbers unique to the run. Expected expiry dates below are worked out by hand from the rule.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest

from registry.runtime import clock
from registry.v1 import card_pb2
from registry.v1 import card_service_pb2 as pb
from registry.v1 import identity_service_pb2 as id_pb
from tests.helpers import birth_request, call_error, date, death_request, decode

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


# -- issuing and expiry ---------------------------------------------------------------------


@pytest.fixture
def frozen_today(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.date], None]:
    """Freeze the registry's "today" (registry.runtime.clock, read by the in-process server and by
    today() here), so that expected expiries and states do not drift with the calendar."""

    def freeze(day: dt.date) -> None:
        monkeypatch.setattr(clock, "today", lambda: day)

    return freeze


def test_first_issue_for_an_adult(civil, cards, agency, db, frozen_today):
    frozen_today(dt.date(2026, 5, 20))
    citizen = person(civil, agency, dob=ADULT_DOB)
    serial = new_serial()
    day = today()
    response = issue(cards, agency, citizen.pin, issued=day, serial=serial)
    card = response.card
    assert response.replayed is False
    assert card.pin == citizen.pin
    assert card.serial == serial
    assert card.kind == FIRST
    assert card.state == ACTIVE
    assert ymd(card.issue_date) == ymd(day)
    assert card.issuing_authority == AUTHORITY
    assert card.state_reason == ""
    # Born 2000-05-10, issued at 26: next milestone 40 on 2040-05-10 (not within 2 years).
    assert card.HasField("expiry_date")
    assert ymd(card.expiry_date) == (2040, 5, 9)

    rows = db.fetch("SELECT * FROM cards WHERE serial = $1", serial)
    assert len(rows) == 1
    row = rows[0]
    assert row["pin"] == citizen.pin
    assert row["state"] == DB_ACTIVE
    assert row["kind"] == FIRST
    assert row["issue_date"] == day
    assert row["expiry_date"] == dt.date(2040, 5, 9)
    assert row["issuing_authority"] == AUTHORITY
    assert row["issued_by"] == agency.id

    [only] = listed(cards, agency, citizen.pin)
    assert only == card


def test_child_card_expires_the_day_before_the_14th_birthday(civil, cards, agency):
    citizen = person(civil, agency, dob=(2020, 6, 1))
    card = issue(cards, agency, citizen.pin, issued=(2025, 3, 1)).card
    assert card.state == ACTIVE
    assert ymd(card.expiry_date) == (2034, 5, 31)


def test_card_issued_at_70_never_expires(civil, cards, agency, db):
    citizen = person(civil, agency, dob=(1950, 3, 3), registered_on=pdate(today()))
    card = issue(cards, agency, citizen.pin, issued=today()).card
    assert card.state == ACTIVE
    assert not card.HasField("expiry_date")
    assert db.fetchval("SELECT expiry_date FROM cards WHERE serial = $1", card.serial) is None
    [listed_card] = listed(cards, agency, citizen.pin)
    assert listed_card.state == ACTIVE
    assert not listed_card.HasField("expiry_date")


@pytest.mark.parametrize(
    ("dob", "issued", "expiry"),
    [
        # Both sides of the two-year window before 14 (12th birthday 2022-07-20).
        pytest.param((2010, 7, 20), (2022, 7, 19), (2024, 7, 19), id="age11-until-14"),
        pytest.param((2010, 7, 20), (2022, 7, 20), (2035, 7, 19), id="age12-until-25"),
        pytest.param((2010, 7, 20), (2024, 7, 19), (2035, 7, 19), id="eve-of-14-until-25"),
        pytest.param((2010, 7, 20), (2024, 7, 20), (2035, 7, 19), id="on-14th-until-25"),
        # Around 23 (window before 25).
        pytest.param((1990, 4, 10), (2013, 4, 9), (2015, 4, 9), id="age22-until-25"),
        pytest.param((1990, 4, 10), (2013, 4, 10), (2030, 4, 9), id="age23-until-40"),
        # Around 38 (window before 40).
        pytest.param((1980, 9, 30), (2018, 9, 29), (2020, 9, 29), id="age37-until-40"),
        pytest.param((1980, 9, 30), (2018, 9, 30), (2040, 9, 29), id="age38-until-60"),
        # Around 58: from then on, never expires.
        pytest.param((1966, 1, 1), (2023, 12, 31), (2025, 12, 31), id="age57-until-60"),
        pytest.param((1966, 1, 1), (2024, 1, 1), None, id="age58-never"),
        # 29 February: birthdays in common years fall on 1 March.
        pytest.param((2004, 2, 29), (2016, 2, 28), (2018, 2, 28), id="leap-age11-until-14"),
        pytest.param((2004, 2, 29), (2016, 2, 29), (2029, 2, 28), id="leap-age12-until-25"),
        # Partial dates of birth: the earliest expiry over every possible birth day up to the
        # issue date (registry/rules/cards.py docstring).
        pytest.param((1990,), (2025, 1, 5), (2029, 12, 31), id="year-only"),
        pytest.param((1990, 6), (2025, 1, 5), (2030, 5, 31), id="year-month"),
        # Born 2000-01-01..06-01: 12 already, until 2025; born 2000-06-02: 11, until 2014-06-01.
        pytest.param((2000,), (2012, 6, 1), (2014, 6, 1), id="year-only-window-14"),
        # Born by 1966-06-01: 58, never; born 1966-06-02: 57, until the day before 60.
        pytest.param((1966,), (2024, 6, 1), (2026, 6, 1), id="year-only-58"),
        # Only the days up to the issue date count: born 2020-01-01..03-10.
        pytest.param((2020,), (2020, 3, 10), (2033, 12, 31), id="year-only-issued-same-year"),
    ],
)
def test_expiry_follows_article_21(civil, cards, agency, db, dob, issued, expiry):
    citizen = person(civil, agency, dob=dob)
    card = issue(cards, agency, citizen.pin, issued=issued).card
    stored = db.fetchval("SELECT expiry_date FROM cards WHERE serial = $1", card.serial)
    if expiry is None:
        assert not card.HasField("expiry_date")
        assert stored is None
        assert card.state == ACTIVE
    else:
        assert ymd(card.expiry_date) == expiry
        assert stored == dt.date(*expiry)
        expected_state = EXPIRED if dt.date(*expiry) < today() else ACTIVE
        assert card.state == expected_state


def test_a_stations_day_exchange_at_milestone_then_reissue_after_loss(
    civil, cards, agency, db, frozen_today
):
    frozen_today(dt.date(2026, 6, 1))
    citizen = person(civil, agency, dob=(2001, 1, 15))
    pin = citizen.pin

    # First card at 14 (2015-02-01): 14 reached, next milestone 25 → until 2026-01-14, which
    # has passed: reported EXPIRED straight away, though stored ACTIVE.
    first = issue(cards, agency, pin, kind=FIRST, issued=(2015, 2, 1)).card
    assert ymd(first.expiry_date) == (2026, 1, 14)
    assert first.state == EXPIRED
    assert db_cards(db, pin) == [(first.serial, DB_ACTIVE)]

    # Exchange at the milestone, 2026-01-10 (age 24, within 2 years before 25) → until the day
    # before 40.
    exchange = issue(cards, agency, pin, kind=EXCHANGE, issued=(2026, 1, 10)).card
    assert exchange.kind == EXCHANGE
    assert exchange.state == ACTIVE
    assert ymd(exchange.expiry_date) == (2041, 1, 14)
    assert [(c.serial, c.state) for c in listed(cards, agency, pin)] == [
        (exchange.serial, ACTIVE),
        (first.serial, SUPERSEDED),
    ]

    # Lost: re-issued today (age 25) → until the day before 40.
    reissue = issue(cards, agency, pin, kind=REISSUE, issued=today()).card
    assert reissue.kind == REISSUE
    assert reissue.state == ACTIVE
    assert ymd(reissue.expiry_date) == (2041, 1, 14)

    now = listed(cards, agency, pin)
    assert [c.serial for c in now] == [reissue.serial, exchange.serial, first.serial]
    assert [c.state for c in now] == [ACTIVE, SUPERSEDED, SUPERSEDED]
    assert [c.kind for c in now] == [REISSUE, EXCHANGE, FIRST]
    assert [ymd(c.expiry_date) for c in now] == [(2041, 1, 14), (2041, 1, 14), (2026, 1, 14)]
    assert db_cards(db, pin) == [
        (first.serial, DB_SUPERSEDED),
        (exchange.serial, DB_SUPERSEDED),
        (reissue.serial, DB_ACTIVE),
    ]

    # A card issued in error, replaced at once by the right one, then revoked.
    wrong = issue(cards, agency, pin, kind=REISSUE, issued=today()).card
    right = issue(cards, agency, pin, kind=REISSUE, issued=today()).card
    revoked = revoke(cards, agency, wrong.serial, reason="issued in error").card
    assert revoked.state == REVOKED
    assert revoked.state_reason == "issued in error"

    # Withhold and release the right one.
    held = withhold(cards, agency, right.serial, reason="court order 12/2026").card
    assert held.state == WITHHELD
    assert held.state_reason == "court order 12/2026"
    back = release(cards, agency, right.serial, reason="order lifted").card
    assert back.state == ACTIVE
    assert back.state_reason == "order lifted"

    end = listed(cards, agency, pin)
    assert [(c.serial, c.state) for c in end] == [
        (right.serial, ACTIVE),
        (wrong.serial, REVOKED),
        (reissue.serial, SUPERSEDED),
        (exchange.serial, SUPERSEDED),
        (first.serial, SUPERSEDED),
    ]
    assert active_count(db, pin) == 1


def test_listing_orders_by_issue_date_then_recording(civil, cards, agency):
    citizen = person(civil, agency, dob=(1985, 8, 8))
    a = issue(cards, agency, citizen.pin, kind=FIRST, issued=(2024, 5, 5)).card
    b = issue(cards, agency, citizen.pin, kind=EXCHANGE, issued=(2025, 5, 5)).card
    c = issue(cards, agency, citizen.pin, kind=REISSUE, issued=(2025, 5, 5)).card
    assert [x.serial for x in listed(cards, agency, citizen.pin)] == [c.serial, b.serial, a.serial]


def test_superseded_card_keeps_an_empty_state_reason(civil, cards, agency):
    # card.proto: state_reason is "empty for a card that has only been issued or superseded".
    citizen = person(civil, agency)
    old = issue(cards, agency, citizen.pin, kind=FIRST).card
    issue(cards, agency, citizen.pin, kind=EXCHANGE, issued=today())
    superseded = next(c for c in listed(cards, agency, citizen.pin) if c.serial == old.serial)
    assert superseded.state == SUPERSEDED
    assert superseded.state_reason == ""


def test_active_card_past_its_expiry_is_reported_expired(civil, cards, agency, db):
    citizen = person(civil, agency, dob=(1990, 1, 1))
    # Issued at 20 → until the day before 25: 2014-12-31.
    response = issue(cards, agency, citizen.pin, issued=(2010, 1, 1))
    card = response.card
    assert ymd(card.expiry_date) == (2014, 12, 31)
    assert card.state == EXPIRED
    [seen] = listed(cards, agency, citizen.pin)
    assert seen.serial == card.serial
    assert seen.state == EXPIRED
    # Derived, never stored.
    assert db_cards(db, citizen.pin) == [(card.serial, DB_ACTIVE)]

    # The expired card cannot be withheld; a new card supersedes it.
    error = call_error(withhold, cards, agency, card.serial)
    assert error.code == PRECONDITION
    assert error.reason == "CARD_EXPIRED"
    assert error.preconditions == [("CARD_EXPIRED", card.serial)]
    assert db_cards(db, citizen.pin) == [(card.serial, DB_ACTIVE)]

    new = issue(cards, agency, citizen.pin, kind=EXCHANGE, issued=(2025, 6, 1)).card
    assert new.state == ACTIVE
    # Issued at 35 → until the day before 40: 2029-12-31.
    assert ymd(new.expiry_date) == (2029, 12, 31)
    assert [(c.serial, c.state) for c in listed(cards, agency, citizen.pin)] == [
        (new.serial, ACTIVE),
        (card.serial, SUPERSEDED),
    ]


def test_revoking_an_expired_card_works(civil, cards, agency):
    citizen = person(civil, agency, dob=(1990, 1, 1))
    card = issue(cards, agency, citizen.pin, issued=(2010, 1, 1)).card
    assert card.state == EXPIRED
    revoked = revoke(cards, agency, card.serial, reason="reported stolen").card
    assert revoked.state == REVOKED
    assert [c.state for c in listed(cards, agency, citizen.pin)] == [REVOKED]


def test_withheld_card_that_expired_meanwhile_cannot_be_released(civil, cards, agency, db):
    # card_service.proto, ReleaseCard: FAILED_PRECONDITION when the card "is not WITHHELD ...,
    # or it has expired". A card withheld in 2014 whose validity ended while it was held.
    citizen = person(civil, agency, dob=(1990, 1, 1))
    card = issue(cards, agency, citizen.pin, issued=(2010, 1, 1)).card  # until 2014-12-31
    db.execute(
        "UPDATE cards SET state = $2, state_reason = 'held in 2014' WHERE serial = $1",
        card.serial,
        DB_WITHHELD,
    )
    assert [c.state for c in listed(cards, agency, citizen.pin)] == [WITHHELD]
    error = call_error(release, cards, agency, card.serial)
    assert error.code == PRECONDITION
    assert error.reason == "CARD_EXPIRED"
    assert db_cards(db, citizen.pin) == [(card.serial, DB_WITHHELD)]


def test_list_cards_of_a_citizen_without_cards_is_empty(civil, cards, agency):
    citizen = person(civil, agency)
    assert listed(cards, agency, citizen.pin) == []


def test_list_cards_refusals(cards, agency):
    error = call_error(listed, cards, agency, NOBODY)
    assert error.code == NOT_FOUND
    assert error.reason == "CITIZEN_NOT_FOUND"
    error = call_error(listed, cards, agency, "12345")
    assert error.code == INVALID
    assert error.bad_fields == ["pin"]


# -- concurrency ------------------------------------------------------------------------------


def test_eight_stations_exchanging_at_once_leave_exactly_one_active_card(civil, cards, agency, db):
    citizen = person(civil, agency)
    pin = citizen.pin
    first = issue(cards, agency, pin, kind=FIRST).card
    issued = [first.serial]
    for _round in range(3):
        requests = [issue_request(pin, kind=EXCHANGE, issued=today()) for _ in range(8)]
        metadata = [agency.metadata() for _ in range(8)]
        results = race(8, each(cards.IssueCard, requests, metadata))
        errors = [r for r in results if is_error(r)]
        assert errors == [], errors
        assert all(r.replayed is False and r.card.state == ACTIVE for r in results)
        serials = [r.card.serial for r in results]
        assert sorted(serials) == sorted(q.serial for q in requests)
        issued += serials

        assert active_count(db, pin) == 1
        now = listed(cards, agency, pin)
        assert sorted(c.serial for c in now) == sorted(issued)
        states = [c.state for c in now]
        assert states.count(ACTIVE) == 1
        assert states.count(SUPERSEDED) == len(issued) - 1
        # Newest first: the last one recorded is the one left active, and it is from this round.
        assert now[0].state == ACTIVE
        assert now[0].serial in serials
        round_states = [c.state for c in now if c.serial in serials]
        assert sorted(round_states) == [ACTIVE] + [SUPERSEDED] * 7


def test_concurrent_first_issues_give_one_card(civil, cards, agency, db):
    citizen = person(civil, agency)
    requests = [issue_request(citizen.pin, kind=FIRST) for _ in range(4)]
    metadata = [agency.metadata() for _ in range(4)]
    results = race(4, each(cards.IssueCard, requests, metadata))
    ok = [r for r in results if not is_error(r)]
    refused = [r for r in results if is_error(r)]
    assert len(ok) == 1
    assert len(refused) == 3
    for error in refused:
        assert error.code == PRECONDITION
        assert error.reason == "CARD_ALREADY_ISSUED"
        assert error.preconditions == [("CARD_ALREADY_ISSUED", citizen.pin)]
    assert db_cards(db, citizen.pin) == [(ok[0].card.serial, DB_ACTIVE)]
    for request, result in zip(requests, results, strict=True):
        assert key_stored(db, agency, request.request_id) == (not is_error(result))


def test_withhold_release_racing_an_exchange_never_leaves_two_active(civil, cards, agency, db):
    citizen = person(civil, agency)
    pin = citizen.pin
    current = issue(cards, agency, pin, kind=FIRST).card
    for _round in range(3):
        withhold(cards, agency, current.serial)
        new_request = issue_request(pin, kind=EXCHANGE, issued=today())
        release_request = pb.ReleaseCardRequest(
            request_id=new_rid(), serial=current.serial, reason="checks done"
        )
        md = [agency.metadata(), agency.metadata()]
        calls = [
            functools.partial(cards.ReleaseCard, release_request, metadata=md[0], timeout=30),
            functools.partial(cards.IssueCard, new_request, metadata=md[1], timeout=30),
        ]
        released, issued = race(2, lambda i, calls=calls: calls[i]())
        assert not is_error(issued), issued
        assert issued.card.state == ACTIVE
        if is_error(released):  # the exchange came first
            assert released.code == PRECONDITION
            assert released.reason == "CARD_SUPERSEDED"
        states = dict(db_cards(db, pin))
        assert states[current.serial] == DB_SUPERSEDED
        assert states[new_request.serial] == DB_ACTIVE
        assert active_count(db, pin) == 1
        current = issued.card


# -- refusals: FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS, nothing written -------------------


def refused_issue(cards, agency, db, request) -> Any:
    """IssueCard that must fail; check that it wrote nothing and return the error."""
    before = db_cards(db, request.pin)
    error = call_error(cards.IssueCard, request, metadata=agency.metadata())
    assert db_cards(db, request.pin) == before
    assert not key_stored(db, agency, request.request_id)
    assert not db.fetch(
        "SELECT 1 FROM cards WHERE serial = $1 AND pin = $2", request.serial, request.pin
    )
    return error


def test_no_card_for_a_deceased_citizen(civil, cards, agency, db):
    citizen = person(civil, agency)
    civil.RegisterDeath(death_request(citizen.pin), metadata=agency.metadata())
    error = refused_issue(cards, agency, db, issue_request(citizen.pin))
    assert error.code == PRECONDITION
    assert error.reason == "CITIZEN_DECEASED"
    assert error.preconditions == [("CITIZEN_DECEASED", citizen.pin)]
    assert card_count(db, citizen.pin) == 0


def test_deceased_citizen_with_a_card_gets_no_exchange(civil, cards, agency, db):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    civil.RegisterDeath(death_request(citizen.pin), metadata=agency.metadata())
    error = refused_issue(
        cards, agency, db, issue_request(citizen.pin, kind=EXCHANGE, issued=today())
    )
    assert error.code == PRECONDITION
    assert error.reason == "CITIZEN_DECEASED"
    assert db_cards(db, citizen.pin) == [(card.serial, DB_ACTIVE)]


def test_no_card_under_a_cancelled_pin(civil, cards, agency, db):
    old = person(civil, agency)
    new = person(civil, agency)
    cancel_pin(db, old.pin, new.pin)
    error = refused_issue(cards, agency, db, issue_request(old.pin))
    assert error.code == PRECONDITION
    assert error.reason == "PIN_CANCELLED"
    assert error.metadata.get("replaced_by_pin") == new.pin
    assert error.preconditions == [("PIN_CANCELLED", old.pin)]
    assert card_count(db, old.pin) == 0
    # The new PIN takes the card.
    assert issue(cards, agency, new.pin).card.state == ACTIVE


def test_issue_date_before_birth_is_refused(civil, cards, agency, db):
    citizen = person(civil, agency, dob=ADULT_DOB)
    error = refused_issue(cards, agency, db, issue_request(citizen.pin, issued=(2000, 5, 9)))
    assert error.code == PRECONDITION
    assert error.reason == "ISSUE_DATE_BEFORE_BIRTH"
    assert error.preconditions == [("ISSUE_DATE_BEFORE_BIRTH", "issue_date")]
    # On the day of birth: allowed (a newborn's card, until the day before 14).
    card = issue(cards, agency, citizen.pin, issued=(2000, 5, 10)).card
    assert ymd(card.expiry_date) == (2014, 5, 9)


def test_issue_date_in_the_future_is_refused(civil, cards, agency, db):
    citizen = person(civil, agency)
    tomorrow = today() + timedelta(days=1)
    error = refused_issue(cards, agency, db, issue_request(citizen.pin, issued=tomorrow))
    assert error.code == PRECONDITION
    assert error.reason == "ISSUE_DATE_IN_FUTURE"
    assert error.preconditions == [("ISSUE_DATE_IN_FUTURE", "issue_date")]
    assert card_count(db, citizen.pin) == 0
    assert issue(cards, agency, citizen.pin, issued=today()).card.state == ACTIVE


def test_first_issue_when_a_card_exists_is_refused(civil, cards, agency, db):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin, kind=FIRST).card
    error = refused_issue(cards, agency, db, issue_request(citizen.pin, kind=FIRST))
    assert error.code == PRECONDITION
    assert error.reason == "CARD_ALREADY_ISSUED"
    assert error.preconditions == [("CARD_ALREADY_ISSUED", citizen.pin)]
    assert db_cards(db, citizen.pin) == [(card.serial, DB_ACTIVE)]
    # Even when the only card was revoked: the station must exchange or re-issue.
    revoke(cards, agency, card.serial)
    error = refused_issue(cards, agency, db, issue_request(citizen.pin, kind=FIRST))
    assert error.reason == "CARD_ALREADY_ISSUED"
    assert issue(cards, agency, citizen.pin, kind=REISSUE, issued=today()).card.state == ACTIVE


def test_unknown_pin_is_not_found(cards, agency, db):
    error = refused_issue(cards, agency, db, issue_request(NOBODY))
    assert error.code == NOT_FOUND
    assert error.reason == "CITIZEN_NOT_FOUND"


def test_duplicate_serial_is_already_exists_and_changes_nothing(civil, cards, agency, db):
    holder = person(civil, agency)
    other = person(civil, agency)
    taken = issue(cards, agency, holder.pin).card
    other_card = issue(cards, agency, other.pin).card
    before = {p: db_cards(db, p) for p in (holder.pin, other.pin)}

    # Another citizen's exchange with the serial in use.
    request = issue_request(other.pin, kind=EXCHANGE, issued=today(), serial=taken.serial)
    error = call_error(cards.IssueCard, request, metadata=agency.metadata())
    assert error.code == EXISTS
    assert error.reason == "SERIAL_IN_USE"
    # The same holder's exchange reusing the serial of the card it would supersede.
    request2 = issue_request(holder.pin, kind=EXCHANGE, issued=today(), serial=taken.serial)
    error = call_error(cards.IssueCard, request2, metadata=agency.metadata())
    assert error.code == EXISTS
    assert error.reason == "SERIAL_IN_USE"
    # Serials are compared in upper case.
    request3 = issue_request(
        other.pin, kind=EXCHANGE, issued=today(), serial=other_card.serial.lower()
    )
    error = call_error(cards.IssueCard, request3, metadata=agency.metadata())
    assert error.code == EXISTS
    assert error.reason == "SERIAL_IN_USE"

    # Nothing superseded, nothing written.
    assert {p: db_cards(db, p) for p in (holder.pin, other.pin)} == before
    for r in (request, request2, request3):
        assert not key_stored(db, agency, r.request_id)
    assert [c.state for c in listed(cards, agency, holder.pin)] == [ACTIVE]
    assert [c.state for c in listed(cards, agency, other.pin)] == [ACTIVE]


def test_invalid_issue_request_names_every_bad_field(cards, agency, db):
    keys = db.counts()["idempotency_keys"]
    cards_before = int(db.fetchval("SELECT count(*) FROM cards"))
    request = pb.IssueCardRequest(
        request_id=new_rid(),
        pin="12345678901x",
        kind=card_pb2.CARD_KIND_UNSPECIFIED,
        serial="",
        issue_date=date(2020, 5),
        issuing_authority="  ",
    )
    error = call_error(cards.IssueCard, request, metadata=agency.metadata())
    assert error.code == INVALID
    assert set(error.bad_fields) == {"pin", "kind", "serial", "issue_date", "issuing_authority"}
    assert db.counts()["idempotency_keys"] == keys
    assert int(db.fetchval("SELECT count(*) FROM cards")) == cards_before


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        pytest.param({"pin": "00109000012"}, {"pin"}, id="pin-11"),
        pytest.param({"pin": ""}, {"pin"}, id="pin-empty"),
        pytest.param({"kind": card_pb2.CARD_KIND_UNSPECIFIED}, {"kind"}, id="kind-unspecified"),
        pytest.param({"kind": 9}, {"kind"}, id="kind-9"),
        pytest.param({"serial": ""}, {"serial"}, id="serial-empty"),
        pytest.param({"serial": "AB CD"}, {"serial"}, id="serial-space"),
        pytest.param({"issue_date": None}, {"issue_date"}, id="issue-date-missing"),
        pytest.param({"issue_date": date(2020)}, {"issue_date"}, id="issue-date-year-only"),
        pytest.param({"issue_date": date(2021, 2, 30)}, {"issue_date.day"}, id="issue-30feb"),
        pytest.param({"issuing_authority": ""}, {"issuing_authority"}, id="authority-empty"),
        pytest.param({"request_id": ""}, {"request_id"}, id="request-id-empty"),
        pytest.param({"request_id": "a b"}, {"request_id"}, id="request-id-space"),
    ],
)
def test_invalid_issue_field(civil, cards, agency, db, overrides, fields):
    citizen = person(civil, agency)
    request = issue_request(citizen.pin)
    for name, value in overrides.items():
        if value is None:
            request.ClearField(name)
        elif name == "issue_date":
            request.issue_date.CopyFrom(value)
        else:
            setattr(request, name, value)
    error = call_error(cards.IssueCard, request, metadata=agency.metadata())
    assert error.code == INVALID
    assert set(error.bad_fields) == fields
    assert card_count(db, citizen.pin) == 0


# -- state changes ----------------------------------------------------------------------------


def test_withhold_and_release(civil, cards, agency, db):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card

    held = withhold(cards, agency, card.serial, reason="under investigation")
    assert held.replayed is False
    assert held.card.serial == card.serial
    assert held.card.state == WITHHELD
    assert held.card.state_reason == "under investigation"
    assert db_cards(db, citizen.pin) == [(card.serial, DB_WITHHELD)]
    assert [c.state for c in listed(cards, agency, citizen.pin)] == [WITHHELD]

    error = call_error(withhold, cards, agency, card.serial)
    assert error.code == PRECONDITION
    assert error.reason == "CARD_WITHHELD"
    assert error.preconditions == [("CARD_WITHHELD", card.serial)]
    assert db_cards(db, citizen.pin) == [(card.serial, DB_WITHHELD)]

    back = release(cards, agency, card.serial, reason="investigation closed").card
    assert back.state == ACTIVE
    assert back.state_reason == "investigation closed"
    assert db_cards(db, citizen.pin) == [(card.serial, DB_ACTIVE)]

    error = call_error(release, cards, agency, card.serial)
    assert error.code == PRECONDITION
    assert error.reason == "CARD_ACTIVE"
    assert error.preconditions == [("CARD_ACTIVE", card.serial)]
    assert db_cards(db, citizen.pin) == [(card.serial, DB_ACTIVE)]

    # Serials are matched in upper case; a withheld card can be revoked.
    assert withhold(cards, agency, card.serial.lower()).card.state == WITHHELD
    assert revoke(cards, agency, card.serial).card.state == REVOKED
    assert db_cards(db, citizen.pin) == [(card.serial, DB_REVOKED)]


def test_revoked_is_final(civil, cards, agency, db):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    revoked = revoke(cards, agency, card.serial, reason="forged data")
    assert revoked.replayed is False
    assert revoked.card.state == REVOKED
    assert revoked.card.state_reason == "forged data"
    assert db_cards(db, citizen.pin) == [(card.serial, DB_REVOKED)]
    for action in (release, withhold, revoke):
        error = call_error(action, cards, agency, card.serial)
        assert error.code == PRECONDITION, action
        assert error.reason == "CARD_REVOKED", action
        assert error.preconditions == [("CARD_REVOKED", card.serial)]
    assert db_cards(db, citizen.pin) == [(card.serial, DB_REVOKED)]
    [seen] = listed(cards, agency, citizen.pin)
    assert (seen.state, seen.state_reason) == (REVOKED, "forged data")


def test_withheld_card_is_superseded_by_a_new_card(civil, cards, agency, db):
    citizen = person(civil, agency)
    old = issue(cards, agency, citizen.pin).card
    withhold(cards, agency, old.serial)
    new = issue(cards, agency, citizen.pin, kind=REISSUE, issued=today()).card
    assert new.state == ACTIVE
    assert [(c.serial, c.state) for c in listed(cards, agency, citizen.pin)] == [
        (new.serial, ACTIVE),
        (old.serial, SUPERSEDED),
    ]
    error = call_error(release, cards, agency, old.serial)
    assert error.code == PRECONDITION
    assert error.reason == "CARD_SUPERSEDED"
    error = call_error(withhold, cards, agency, old.serial)
    assert error.reason == "CARD_SUPERSEDED"
    assert db_cards(db, citizen.pin) == [(old.serial, DB_SUPERSEDED), (new.serial, DB_ACTIVE)]
    # A superseded card can still be revoked; the current one is untouched.
    assert revoke(cards, agency, old.serial).card.state == REVOKED
    assert db_cards(db, citizen.pin) == [(old.serial, DB_REVOKED), (new.serial, DB_ACTIVE)]


def test_state_change_refusals(civil, cards, agency, db):
    for action in (revoke, withhold, release):
        error = call_error(action, cards, agency, new_serial())
        assert error.code == NOT_FOUND, action
        assert error.reason == "CARD_NOT_FOUND"
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    for action in (revoke, withhold, release):
        error = call_error(action, cards, agency, card.serial, reason="   ")
        assert error.code == INVALID, action
        assert error.bad_fields == ["reason"]
    error = call_error(revoke, cards, agency, "", reason="")
    assert error.code == INVALID
    assert set(error.bad_fields) == {"serial", "reason"}
    assert db_cards(db, citizen.pin) == [(card.serial, DB_ACTIVE)]


def test_withheld_card_of_a_citizen_who_died_is_not_released(civil, cards, agency, db):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    withhold(cards, agency, card.serial)
    civil.RegisterDeath(death_request(citizen.pin), metadata=agency.metadata())
    error = call_error(release, cards, agency, card.serial)
    assert error.code == PRECONDITION
    assert error.reason == "CITIZEN_DECEASED"
    assert db_cards(db, citizen.pin) == [(card.serial, DB_WITHHELD)]


def test_withheld_card_under_a_cancelled_pin_is_not_released(civil, cards, agency, db):
    citizen = person(civil, agency)
    other = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    withhold(cards, agency, card.serial)
    cancel_pin(db, citizen.pin, other.pin)
    error = call_error(release, cards, agency, card.serial)
    assert error.code == PRECONDITION
    assert error.reason == "PIN_CANCELLED"
    assert db_cards(db, citizen.pin) == [(card.serial, DB_WITHHELD)]


# -- idempotency ------------------------------------------------------------------------------


def test_issue_card_replay(civil, cards, agency, db):
    citizen = person(civil, agency)
    request = issue_request(citizen.pin)
    first = cards.IssueCard(request, metadata=agency.metadata())
    again = cards.IssueCard(request, metadata=agency.metadata())
    assert first.replayed is False
    assert again.replayed is True
    assert again.card == first.card
    assert card_count(db, citizen.pin) == 1

    # The replay is the card as it is now.
    withhold(cards, agency, first.card.serial)
    later = cards.IssueCard(request, metadata=agency.metadata())
    assert later.replayed is True
    assert later.card.serial == first.card.serial
    assert later.card.state == WITHHELD
    assert card_count(db, citizen.pin) == 1

    # Same request_id, different content.
    changed = pb.IssueCardRequest()
    changed.CopyFrom(request)
    changed.serial = new_serial()
    error = call_error(cards.IssueCard, changed, metadata=agency.metadata())
    assert error.code == EXISTS
    assert error.reason == "REQUEST_ID_REUSED"
    assert card_count(db, citizen.pin) == 1
    assert not db.fetch("SELECT 1 FROM cards WHERE serial = $1", changed.serial)

    # Same request_id for another method.
    error = call_error(revoke, cards, agency, first.card.serial, request_id=request.request_id)
    assert error.code == EXISTS
    assert error.reason == "REQUEST_ID_REUSED"
    assert db_cards(db, citizen.pin) == [(first.card.serial, DB_WITHHELD)]


def test_issue_card_replay_after_the_holder_died(civil, cards, agency, db):
    citizen = person(civil, agency)
    request = issue_request(citizen.pin)
    first = cards.IssueCard(request, metadata=agency.metadata())
    civil.RegisterDeath(death_request(citizen.pin), metadata=agency.metadata())
    again = cards.IssueCard(request, metadata=agency.metadata())
    assert again.replayed is True
    assert again.card == first.card
    assert card_count(db, citizen.pin) == 1


def test_request_ids_are_per_agency(civil, cards, agency, make_agency, db):
    other_agency = make_agency()
    citizen = person(civil, agency)
    request = issue_request(citizen.pin)
    cards.IssueCard(request, metadata=agency.metadata())
    theirs = pb.IssueCardRequest()
    theirs.CopyFrom(request)
    theirs.serial = new_serial()
    theirs.kind = EXCHANGE
    response = cards.IssueCard(theirs, metadata=other_agency.metadata())
    assert response.replayed is False
    assert response.card.serial == theirs.serial
    assert card_count(db, citizen.pin) == 2


def test_refused_issue_can_be_corrected_under_the_same_request_id(civil, cards, agency, db):
    citizen = person(civil, agency)
    request = issue_request(citizen.pin, issued=today() + timedelta(days=1))
    assert call_error(cards.IssueCard, request, metadata=agency.metadata()).code == PRECONDITION
    request.issue_date.CopyFrom(pdate(today()))
    response = cards.IssueCard(request, metadata=agency.metadata())
    assert response.replayed is False
    assert response.card.state == ACTIVE


def test_six_identical_concurrent_issues_make_one_card(civil, cards, agency, db):
    citizen = person(civil, agency)
    request = issue_request(citizen.pin)
    metadata = [agency.metadata() for _ in range(6)]
    results = race(6, each(cards.IssueCard, [request] * 6, metadata))
    errors = [r for r in results if is_error(r)]
    assert errors == [], errors
    assert sorted(r.replayed for r in results) == [False] + [True] * 5
    assert {r.card.serial for r in results} == {request.serial}
    assert db_cards(db, citizen.pin) == [(request.serial, DB_ACTIVE)]
    assert key_stored(db, agency, request.request_id)


def test_revoke_card_replay(civil, cards, agency, db):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    rid = new_rid()
    first = revoke(cards, agency, card.serial, reason="lost", request_id=rid)
    again = revoke(cards, agency, card.serial, reason="lost", request_id=rid)
    assert first.replayed is False
    assert again.replayed is True
    assert again.card == first.card
    assert again.card.state == REVOKED
    assert db_cards(db, citizen.pin) == [(card.serial, DB_REVOKED)]
    error = call_error(revoke, cards, agency, card.serial, reason="stolen", request_id=rid)
    assert error.code == EXISTS
    assert error.reason == "REQUEST_ID_REUSED"
    [seen] = listed(cards, agency, citizen.pin)
    assert seen.state_reason == "lost"


def test_withhold_card_replay(civil, cards, agency, db):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    rid = new_rid()
    first = withhold(cards, agency, card.serial, reason="check", request_id=rid)
    again = withhold(cards, agency, card.serial, reason="check", request_id=rid)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.card.state == WITHHELD
    # Replaying a release does not release twice-over or fail once the card is active.
    rrid = new_rid()
    assert release(cards, agency, card.serial, request_id=rrid).replayed is False
    replay = release(cards, agency, card.serial, request_id=rrid)
    assert replay.replayed is True
    assert replay.card.state == ACTIVE
    assert db_cards(db, citizen.pin) == [(card.serial, DB_ACTIVE)]


# -- legacy CMND numbers ----------------------------------------------------------------------


def test_link_and_resolve_legacy_ids(civil, cards, identity, agency, db):
    citizen = person(civil, agency)
    nine, twelve = legacy(9), legacy(12)
    rid = new_rid()
    first = link(cards, agency, citizen.pin, nine, request_id=rid)
    assert first.replayed is False
    assert first.citizen.pin == citizen.pin
    assert list(first.citizen.legacy_ids) == [nine]
    second = link(cards, agency, citizen.pin, twelve)
    assert second.replayed is False
    assert sorted(second.citizen.legacy_ids) == sorted([nine, twelve])

    # A replay of the first link answers what that call answered (SPEC §5, §6): the record
    # as it left it, with one number, never the record as it is now.
    replay = link(cards, agency, citizen.pin, nine, request_id=rid)
    assert replay.replayed is True
    assert replay.citizen == first.citizen
    assert int(db.fetchval("SELECT count(*) FROM legacy_ids WHERE pin = $1", citizen.pin)) == 2

    # Linking it again with a new request_id: fine, no duplicate.
    again = link(cards, agency, citizen.pin, nine)
    assert again.replayed is False
    assert sorted(again.citizen.legacy_ids) == sorted([nine, twelve])

    # Same request_id, different content.
    error = call_error(link, cards, agency, citizen.pin, legacy(9), request_id=rid)
    assert error.code == EXISTS
    assert error.reason == "REQUEST_ID_REUSED"

    for number in (nine, twelve):
        resolved = identity.ResolveLegacyId(
            id_pb.ResolveLegacyIdRequest(legacy_id=number), metadata=agency.metadata()
        )
        assert resolved.pin == citizen.pin


def test_legacy_id_has_one_owner(civil, cards, agency, db):
    owner = person(civil, agency)
    other = person(civil, agency)
    number = legacy(12)
    link(cards, agency, owner.pin, number)
    rid = new_rid()
    error = call_error(link, cards, agency, other.pin, number, request_id=rid)
    assert error.code == EXISTS
    assert error.reason == "LEGACY_ID_TAKEN"
    assert db.fetchval("SELECT pin FROM legacy_ids WHERE legacy_id = $1", number) == owner.pin
    assert not key_stored(db, agency, rid)


def test_concurrent_claims_of_one_legacy_id(civil, cards, agency, db):
    people = [person(civil, agency) for _ in range(4)]
    number = legacy(9)
    md = [agency.metadata() for _ in range(4)]
    requests = [
        pb.LinkLegacyIdRequest(request_id=new_rid(), pin=p.pin, legacy_id=number) for p in people
    ]
    results = race(4, each(cards.LinkLegacyId, requests, md))
    ok = [r for r in results if not is_error(r)]
    assert len(ok) == 1
    assert all(r.reason == "LEGACY_ID_TAKEN" for r in results if is_error(r))
    assert (
        db.fetchval("SELECT pin FROM legacy_ids WHERE legacy_id = $1", number) == ok[0].citizen.pin
    )


@pytest.mark.parametrize(
    "number",
    ["1234567890", "12345678", "1234567890123", "12345678A", "", "１２３４５６７８９"],
    ids=["10-digits", "8-digits", "13-digits", "letter", "empty", "fullwidth"],
)
def test_malformed_legacy_id_is_invalid(civil, cards, identity, agency, db, number):
    citizen = person(civil, agency)
    error = call_error(link, cards, agency, citizen.pin, number)
    assert error.code == INVALID
    assert error.bad_fields == ["legacy_id"]
    error = call_error(
        identity.ResolveLegacyId,
        id_pb.ResolveLegacyIdRequest(legacy_id=number),
        metadata=agency.metadata(),
    )
    assert error.code == INVALID
    assert error.bad_fields == ["legacy_id"]
    assert int(db.fetchval("SELECT count(*) FROM legacy_ids WHERE pin = $1", citizen.pin)) == 0


def test_link_legacy_id_refusals(civil, cards, agency, db):
    error = call_error(link, cards, agency, NOBODY, legacy(9))
    assert error.code == NOT_FOUND
    assert error.reason == "CITIZEN_NOT_FOUND"
    error = call_error(link, cards, agency, "123", "12")
    assert error.code == INVALID
    assert set(error.bad_fields) == {"pin", "legacy_id"}

    old = person(civil, agency)
    new = person(civil, agency)
    cancel_pin(db, old.pin, new.pin)
    number = legacy(9)
    error = call_error(link, cards, agency, old.pin, number)
    assert error.code == PRECONDITION
    assert error.reason == "PIN_CANCELLED"
    assert error.metadata.get("replaced_by_pin") == new.pin
    assert error.preconditions == [("PIN_CANCELLED", old.pin)]
    assert db.fetchval("SELECT pin FROM legacy_ids WHERE legacy_id = $1", number) is None


def test_resolve_unknown_legacy_id(identity, agency):
    number = legacy(12)
    error = call_error(
        identity.ResolveLegacyId,
        id_pb.ResolveLegacyIdRequest(legacy_id=number),
        metadata=agency.metadata(),
    )
    assert error.code == NOT_FOUND
    assert error.reason == "LEGACY_ID_NOT_FOUND"


def test_legacy_id_resolves_to_the_pin_in_use_after_re_establishment(
    civil, cards, identity, agency, db
):
    first = person(civil, agency)
    second = person(civil, agency)
    third = person(civil, agency)
    number = legacy(9)
    link(cards, agency, first.pin, number)

    def resolve() -> str:
        request = id_pb.ResolveLegacyIdRequest(legacy_id=number)
        return identity.ResolveLegacyId(request, metadata=agency.metadata()).pin

    assert resolve() == first.pin
    cancel_pin(db, first.pin, second.pin)
    assert resolve() == second.pin
    cancel_pin(db, second.pin, third.pin)
    assert resolve() == third.pin


# -- scopes -----------------------------------------------------------------------------------


def test_scopes(civil, cards, identity, agency, make_agency, db):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    number = legacy(9)
    link(cards, agency, citizen.pin, number)

    reader = make_agency(scopes=("card:read",))
    request = issue_request(citizen.pin, kind=EXCHANGE, issued=today())
    error = call_error(cards.IssueCard, request, metadata=reader.metadata())
    assert error.code == DENIED
    assert error.reason == "SCOPE_MISSING"
    assert error.metadata.get("required_scope") == "card:issue"
    error = call_error(link, cards, reader, citizen.pin, legacy(9))
    assert (error.code, error.reason) == (DENIED, "SCOPE_MISSING")
    assert [c.serial for c in listed(cards, reader, citizen.pin)] == [card.serial]

    issuer = make_agency(scopes=("card:issue", "card:read"))
    for action in (revoke, withhold, release):
        error = call_error(action, cards, issuer, card.serial)
        assert error.code == DENIED, action
        assert error.reason == "SCOPE_MISSING"
        assert error.metadata.get("required_scope") == "card:revoke"
    error = call_error(listed, cards, make_agency(scopes=("card:issue",)), citizen.pin)
    assert (error.code, error.reason) == (DENIED, "SCOPE_MISSING")

    resolve = id_pb.ResolveLegacyIdRequest(legacy_id=number)
    error = call_error(identity.ResolveLegacyId, resolve, metadata=issuer.metadata())
    assert error.code == DENIED
    assert error.metadata.get("required_scope") == "citizen:read"
    lookup = make_agency(scopes=("citizen:read",))
    assert identity.ResolveLegacyId(resolve, metadata=lookup.metadata()).pin == citizen.pin

    revoker = make_agency(scopes=("card:revoke",))
    assert withhold(cards, revoker, card.serial).card.state == WITHHELD
    # Nothing was changed by the refused calls.
    assert db_cards(db, citizen.pin) == [(card.serial, DB_WITHHELD)]
    assert not key_stored(db, reader, request.request_id)


def test_a_new_card_cannot_be_dated_before_the_citizens_latest_card(civil, cards, agency, db):
    citizen = person(civil, agency)
    current = issue(cards, agency, citizen.pin, issued=(2025, 3, 1)).card
    err = call_error(
        cards.IssueCard,
        issue_request(citizen.pin, kind=EXCHANGE, issued=(2024, 12, 31)),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "ISSUE_DATE_BEFORE_LATEST_CARD"
    assert err.preconditions == [("ISSUE_DATE_BEFORE_LATEST_CARD", "issue_date")]
    listed = cards.ListCards(pb.ListCardsRequest(pin=citizen.pin), metadata=agency.metadata())
    assert [(c.serial, c.state) for c in listed.cards] == [
        (current.serial, card_pb2.CARD_STATE_ACTIVE)
    ]
    # The same day as the latest card is fine (an exchange on the day of issue).
    same_day = issue(cards, agency, citizen.pin, kind=EXCHANGE, issued=(2025, 3, 1)).card
    assert same_day.state == card_pb2.CARD_STATE_ACTIVE
