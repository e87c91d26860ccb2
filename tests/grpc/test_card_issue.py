"""CardService through a real channel: issuing, expiry and concurrent issuance.

A station's whole day: issue, exchange at a milestone, re-issue after loss; expiry dates by the
Law on Identification 2023 art. 21 (exchange at 14, 25, 40, 60; valid until the day before the
next milestone birthday; issued within two years before a milestone: until the day before the
milestone after it; issued at 58 or later: no expiry); at most one ACTIVE card per citizen also
under concurrent issuance.

Tests share one database: every test registers its own citizens and uses serials unique to the
run. Expected expiry dates below are worked out by hand from the rule.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable

import pytest

from registry.runtime import clock
from registry.v1 import card_service_pb2 as pb
from tests.grpc.cards import (
    ACTIVE,
    ADULT_DOB,
    AUTHORITY,
    DB_ACTIVE,
    DB_SUPERSEDED,
    DB_WITHHELD,
    EXCHANGE,
    EXPIRED,
    FIRST,
    INVALID,
    NOBODY,
    NOT_FOUND,
    PRECONDITION,
    REISSUE,
    REVOKED,
    SUPERSEDED,
    WITHHELD,
    active_count,
    db_cards,
    each,
    is_error,
    issue,
    issue_request,
    key_stored,
    listed,
    new_rid,
    new_serial,
    pdate,
    person,
    race,
    release,
    revoke,
    today,
    withhold,
    ymd,
)
from tests.helpers import call_error

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
