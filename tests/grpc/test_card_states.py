"""CardService state changes and idempotency through a real channel: withhold and release,
revoke a card issued in error, supersession, and replays of every card write.
"""

from __future__ import annotations

from datetime import timedelta

from registry.v1 import card_service_pb2 as pb
from tests.grpc.cards import (
    ACTIVE,
    DB_ACTIVE,
    DB_REVOKED,
    DB_SUPERSEDED,
    DB_WITHHELD,
    EXCHANGE,
    EXISTS,
    INVALID,
    NOT_FOUND,
    PRECONDITION,
    REISSUE,
    REVOKED,
    SUPERSEDED,
    WITHHELD,
    cancel_pin,
    card_count,
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
)
from tests.helpers import call_error, death_request

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
