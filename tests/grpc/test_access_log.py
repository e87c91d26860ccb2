"""AuditService.ListAccessLog through a real channel: a citizen's history, paging, validation,
scope.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

import pytest
from google.protobuf import field_mask_pb2

from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import identity_service_pb2 as id_pb
from tests.conftest import TestAgency as Agency
from tests.grpc.audit_log import (
    DENIED,
    INVALID,
    MALE,
    V1,
    batch,
    history,
    unique_unknown_pin,
)
from tests.grpc.cards import person
from tests.helpers import birth_request, call_error

# -- ListAccessLog ------------------------------------------------------------------------------


def test_a_citizens_history_lists_every_agency_newest_first(
    civil, cards, identity, audit, db, make_agency, auditor
):
    registrar = make_agency(scopes=("birth:register",))
    reader = make_agency(scopes=("citizen:read",), fields=("full_name",))
    bank = make_agency(scopes=("identity:verify",), miss_budget=1000)
    station = make_agency(scopes=("card:read",))
    windows = []

    def timed(fn: Callable[[], Any]) -> Any:
        started = time.time()
        try:
            return fn()
        finally:
            windows.append((started, time.time()))

    request = birth_request()
    pin = timed(
        lambda: civil.RegisterBirth(request, metadata=registrar.metadata(purpose="birth"))
    ).citizen.pin
    timed(
        lambda: identity.GetCitizen(
            id_pb.GetCitizenRequest(pin=pin), metadata=reader.metadata(purpose="tax file")
        )
    )
    timed(
        lambda: identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pin, full_name=request.full_name),
            metadata=bank.metadata(purpose="account opening"),
        )
    )
    timed(
        lambda: cards.ListCards(
            card_pb.ListCardsRequest(pin=pin), metadata=station.metadata(purpose="counter")
        )
    )
    mask = field_mask_pb2.FieldMask(paths=["religion"])
    denied = timed(
        lambda: call_error(
            identity.GetCitizen,
            id_pb.GetCitizenRequest(pin=pin, read_mask=mask),
            metadata=reader.metadata(purpose="curiosity"),
        )
    )
    assert denied.code == DENIED

    first = history(audit, auditor, pin)
    assert first.next_page_token == ""
    expected = [
        (reader, "IdentityService/GetCitizen", "curiosity", "PERMISSION_DENIED"),
        (station, "CardService/ListCards", "counter", "OK"),
        (bank, "IdentityService/VerifyIdentity", "account opening", "OK"),
        (reader, "IdentityService/GetCitizen", "tax file", "OK"),
        (registrar, "CivilRegistrationService/RegisterBirth", "birth", "OK"),
    ]
    got = [(e.agency_id, e.agency_name, e.method, e.purpose, e.outcome) for e in first.entries]
    assert got == [
        (a.id, f"Test agency {a.id}", V1 + method, purpose, outcome)
        for a, method, purpose, outcome in expected
    ]
    times = [e.time.ToDatetime(tzinfo=UTC).timestamp() for e in first.entries]
    for when, (started, ended) in zip(times, reversed(windows), strict=True):
        assert started - 0.001 <= when <= ended + 0.001

    # The reading itself is recorded: a second reading sees the first, on top.
    second = history(audit, auditor, pin)
    assert len(second.entries) == len(first.entries) + 1
    top = second.entries[0]
    assert (top.agency_id, top.agency_name, top.method, top.purpose, top.outcome) == (
        auditor.id,
        f"Test agency {auditor.id}",
        V1 + "AuditService/ListAccessLog",
        "citizen portal",
        "OK",
    )
    assert list(second.entries[1:]) == list(first.entries)


@pytest.fixture(scope="module")
def known_history(civil, identity, make_agency) -> tuple[str, Agency]:
    """A citizen with 7 entries: a birth and 6 verifications."""
    agency = make_agency(miss_budget=1000)
    pin = person(civil, agency).pin
    for i in range(6):
        identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pin, sex=MALE),
            metadata=agency.metadata(purpose=f"check {i}"),
        )
    return pin, agency


def stored_history(db: Any, pin: str) -> list[tuple[Any, ...]]:
    rows = db.fetch(
        "SELECT time, agency_id, method, purpose, outcome FROM audit_log "
        "WHERE pins @> ARRAY[$1::text] ORDER BY seq DESC",
        pin,
    )
    return [(r["time"], r["agency_id"], r["method"], r["purpose"], r["outcome"]) for r in rows]


def as_rows(entries: Any) -> list[tuple[Any, ...]]:
    return [
        (e.time.ToDatetime(tzinfo=UTC), e.agency_id, e.method, e.purpose, e.outcome)
        for e in entries
    ]


def test_paging_walks_every_entry_exactly_once(audit, db, auditor, known_history):
    pin, _ = known_history
    expected = stored_history(db, pin)
    assert len(expected) >= 7
    pages = []
    token = ""
    while True:
        page = history(audit, auditor, pin, page_size=2, page_token=token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
        assert len(pages) <= len(expected), "paging does not end"
    walked = [row for page in pages for row in as_rows(page.entries)]
    assert walked == expected
    assert all(len(page.entries) == 2 for page in pages[:-1])
    assert 1 <= len(pages[-1].entries) <= 2
    assert len(pages) == (len(expected) + 1) // 2


def test_a_page_holding_exactly_the_rest_has_no_next_token(audit, db, auditor, known_history):
    pin, _ = known_history
    expected = stored_history(db, pin)
    page = history(audit, auditor, pin, page_size=len(expected))
    assert as_rows(page.entries) == expected
    assert page.next_page_token == ""
    shorter = history(audit, auditor, pin, page_size=len(expected) - 1)
    assert len(shorter.entries) == len(expected) - 1
    assert shorter.next_page_token != ""


@pytest.fixture(scope="module")
def crowded_citizen(civil, identity, make_agency) -> str:
    """A citizen with 1,002 entries: a birth and 1,001 verifications over one stream."""
    bank = make_agency(scopes=("identity:verify", "birth:register"), miss_budget=1000)
    pin = person(civil, bank).pin
    items = [
        id_pb.VerifyIdentityRequest(pin=pin, sex=MALE, correlation_id=str(i)) for i in range(1001)
    ]
    answers = batch(identity)(items, metadata=bank.metadata(purpose="campaign"))
    assert len(answers) == 1001
    return pin


@pytest.mark.parametrize("size", [1001, 5000, 2**31 - 1])
def test_a_page_size_above_the_maximum_is_capped(audit, auditor, crowded_citizen, size):
    page = history(audit, auditor, crowded_citizen, page_size=size)
    assert len(page.entries) == 1000
    assert page.next_page_token != ""
    rest = history(audit, auditor, crowded_citizen, page_size=size, page_token=page.next_page_token)
    assert len(rest.entries) >= 2
    assert rest.next_page_token == ""


def test_page_size_0_is_the_default_of_50(audit, auditor, crowded_citizen):
    page = history(audit, auditor, crowded_citizen, page_size=0)
    assert len(page.entries) == 50
    assert page.next_page_token != ""
    again = history(audit, auditor, crowded_citizen, page_token=page.next_page_token)
    assert len(again.entries) == 50
    assert again.entries[0].time.ToDatetime() <= page.entries[-1].time.ToDatetime()


def bad_request(err: Any, field: str) -> None:
    assert err.code == INVALID, err
    assert err.bad_fields == [field], err


@pytest.mark.parametrize("size", [-1, -(2**31)])
def test_a_negative_page_size_is_invalid(audit, auditor, known_history, size):
    err = call_error(history, audit, auditor, known_history[0], page_size=size)
    bad_request(err, "page_size")


def token_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


GARBAGE_TOKENS = {
    "not-base64": lambda pin: "this is not a token!",
    "base64-of-text": lambda pin: token_of("hello world"),
    "wrong-version": lambda pin: token_of(f"v2:{pin}:5"),
    "position-zero": lambda pin: token_of(f"v1:{pin}:0"),
    "position-negative": lambda pin: token_of(f"v1:{pin}:-3"),
    "position-not-a-number": lambda pin: token_of(f"v1:{pin}:five"),
    "position-beyond-bigint": lambda pin: token_of(f"v1:{pin}:{2**64}"),
    "extra-part": lambda pin: token_of(f"v1:{pin}:5:6"),
    "non-ascii": lambda pin: "dg€x",
}


@pytest.mark.parametrize("kind", list(GARBAGE_TOKENS))
def test_a_garbage_page_token_is_invalid(audit, auditor, known_history, kind):
    pin = known_history[0]
    err = call_error(history, audit, auditor, pin, page_token=GARBAGE_TOKENS[kind](pin))
    bad_request(err, "page_token")


def test_a_page_token_of_another_pin_is_invalid(audit, auditor, known_history, crowded_citizen):
    token = history(audit, auditor, crowded_citizen, page_size=1).next_page_token
    assert token
    err = call_error(history, audit, auditor, known_history[0], page_token=token)
    bad_request(err, "page_token")


@pytest.mark.parametrize("pin", ["", "12345", "0012000000012", "00120000000x", "٠٠١٢٠٠٠٠٠٠٠١"])
def test_a_malformed_pin_is_invalid(audit, auditor, pin):
    err = call_error(history, audit, auditor, pin)
    bad_request(err, "pin")


def test_an_unknown_pin_has_an_empty_history(audit, auditor):
    page = history(audit, auditor, unique_unknown_pin())
    assert list(page.entries) == []
    assert page.next_page_token == ""


def test_listing_needs_audit_read(audit, make_agency, known_history):
    everything_else = make_agency(scopes=("citizen:read", "identity:verify", "card:read"))
    err = call_error(history, audit, everything_else, known_history[0])
    assert (err.code, err.reason) == (DENIED, "SCOPE_MISSING")
    assert err.metadata.get("required_scope") == "audit:read"
