"""CardService refusals through a real channel: FAILED_PRECONDITION, NOT_FOUND, ALREADY_EXISTS
and INVALID_ARGUMENT, each writing nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest

from registry.v1 import card_pb2
from registry.v1 import card_service_pb2 as pb
from tests.grpc.cards import (
    ACTIVE,
    ADULT_DOB,
    DB_ACTIVE,
    EXCHANGE,
    EXISTS,
    FIRST,
    INVALID,
    NOBODY,
    NOT_FOUND,
    PRECONDITION,
    REISSUE,
    cancel_pin,
    card_count,
    db_cards,
    issue,
    issue_request,
    key_stored,
    listed,
    new_rid,
    person,
    revoke,
    today,
    ymd,
)
from tests.helpers import call_error, date, death_request

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
