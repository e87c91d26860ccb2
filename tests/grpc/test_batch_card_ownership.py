"""BatchVerify never vouches for a card presented with another citizen's PIN.

A one-item batch takes the unary query (registry/db/verification.py `_ONE`); only a batch of two
or more takes `_MANY`, whose card join must also match the card's holder. These batches mix two
citizens' ACTIVE cards item by item, in both orders, beside honest items, so the batched query's
ownership condition is what decides the answers.
"""

from __future__ import annotations

from typing import Any

import pytest

from registry.v1 import card_pb2
from registry.v1 import identity_service_pb2 as pb
from tests.grpc.cards import issue, person

MATCH = pb.VERIFY_RESULT_MATCH
NO_MATCH = pb.VERIFY_RESULT_NO_MATCH
ACTIVE = card_pb2.CARD_STATE_ACTIVE
UNSPECIFIED_STATE = card_pb2.CARD_STATE_UNSPECIFIED


@pytest.fixture(scope="module")
def two_holders(civil: Any, cards: Any, agency: Any) -> list[tuple[str, str]]:
    """Two citizens, each with one ACTIVE card: [(pin, serial), (pin, serial)]."""
    holders = []
    for dob in ((1990, 4, 10), (1991, 8, 21)):
        citizen = person(civil, agency, dob=dob)
        card = issue(cards, agency, citizen.pin, issued=(2025, 3, 1)).card
        assert card.state == ACTIVE
        holders.append((citizen.pin, card.serial))
    return holders


@pytest.fixture
def checker(make_agency: Any) -> Any:
    """A verifying agency of each test's own: the claims here fail on purpose, and five
    NO_MATCH answers about one citizen stop an agency's checks of that citizen for a day."""
    return make_agency(miss_budget=1_000_000)


def _batch(identity: Any, agency: Any, claims: list[tuple[str, str, str]]) -> dict[str, Any]:
    requests = [
        pb.VerifyIdentityRequest(pin=pin, card_serial=serial, correlation_id=cid)
        for cid, pin, serial in claims
    ]
    answers = list(identity.BatchVerify(iter(requests), metadata=agency.metadata(), timeout=60))
    assert len(answers) == len(claims)
    return {a.correlation_id: a for a in answers}


@pytest.mark.parametrize("size", [2, 3, 6])
def test_a_card_presented_with_another_citizens_pin_is_no_match_in_a_batch(
    identity, checker, two_holders, size
):
    (pin_a, card_a), (pin_b, card_b) = two_holders
    claims = [
        ("a-with-b-card", pin_a, card_b),
        ("b-with-a-card", pin_b, card_a),
        ("a-own", pin_a, card_a),
        ("b-own", pin_b, card_b),
        ("a-with-b-card-again", pin_a, card_b),
        ("b-own-again", pin_b, card_b),
    ][:size]
    by_id = _batch(identity, checker, claims)
    for cid, pin, serial in claims:
        answer = by_id[cid]
        owned = (pin, serial) in two_holders
        assert dict(answer.field_matches) == {"card_serial": owned}, cid
        assert answer.result == (MATCH if owned else NO_MATCH), cid
        # The state of a card is told only to its holder's verifier.
        assert answer.card_state == (ACTIVE if owned else UNSPECIFIED_STATE), cid


def test_the_batched_answer_equals_the_unary_answer_for_every_mix(identity, checker, two_holders):
    (pin_a, card_a), (pin_b, card_b) = two_holders
    claims = [
        (f"{i}", pin, serial)
        for i, (pin, serial) in enumerate(
            (p, s) for p in (pin_a, pin_b) for s in (card_a, card_b, "NO-SUCH-CARD-1")
        )
    ]
    by_id = _batch(identity, checker, claims)
    for cid, pin, serial in claims:
        alone = identity.VerifyIdentity(
            pb.VerifyIdentityRequest(pin=pin, card_serial=serial), metadata=checker.metadata()
        )
        batched = by_id[cid]
        assert (batched.result, dict(batched.field_matches), batched.card_state) == (
            alone.result,
            dict(alone.field_matches),
            alone.card_state,
        ), (cid, pin, serial)
