"""Old CMND numbers (LinkLegacyId, IdentityService.ResolveLegacyId) and the card RPCs' scopes,
through a real channel.
"""

from __future__ import annotations

import pytest

from registry.v1 import card_service_pb2 as pb
from registry.v1 import identity_service_pb2 as id_pb
from tests.grpc.cards import (
    DB_WITHHELD,
    DENIED,
    EXCHANGE,
    EXISTS,
    INVALID,
    NOBODY,
    NOT_FOUND,
    PRECONDITION,
    WITHHELD,
    cancel_pin,
    db_cards,
    each,
    is_error,
    issue,
    issue_request,
    key_stored,
    legacy,
    link,
    listed,
    new_rid,
    person,
    race,
    release,
    revoke,
    today,
    withhold,
)
from tests.helpers import call_error

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
