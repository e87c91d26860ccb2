"""Limits through the channel: per-agency rate limits, the verification miss budget, the
request size limit and deadlines."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import asyncpg
import grpc
import pytest

from registry.v1 import card_pb2
from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import identity_service_pb2 as pb
from tests.conftest import run
from tests.helpers import birth_request, call_error, date, decode

UNKNOWN_PIN = "001099999999"
MISS_BUDGET_REASON = "VERIFICATION_MISS_BUDGET_EXHAUSTED"


def _keys(identity, agency, token):
    return identity.GetSigningKeys(pb.GetSigningKeysRequest(), metadata=agency.metadata(token))


def test_an_agency_over_its_rate_limit_is_throttled_and_others_are_not(identity, make_agency):
    limited = make_agency(rate_limit=5)
    other = make_agency(rate_limit=5)
    limited_token, other_token = limited.token(), other.token()
    outcomes = []
    for _ in range(15):
        try:
            _keys(identity, limited, limited_token)
            outcomes.append("OK")
        except grpc.RpcError as exc:
            details = decode(exc)
            assert (details.code, details.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RATE_LIMITED",
            )
            assert details.retry_delay_s is not None and 0 < details.retry_delay_s <= 1
            assert details.quota_subjects == [f"agency:{limited.id}"]
            outcomes.append("LIMITED")
    assert outcomes.count("OK") >= 5  # the burst
    assert outcomes.count("LIMITED") >= 5
    # The other agency's budget is its own.
    for _ in range(5):
        _keys(identity, other, other_token)
    # After the retry delay the limited agency is served again.
    time.sleep(0.5)
    _keys(identity, limited, limited_token)


def test_an_oversized_request_is_refused_and_writes_nothing(civil, agency, db):
    # Refused by gRPC's message size limit (4 MiB) before any registry code runs.
    before = db.counts()
    with pytest.raises(grpc.RpcError) as info:
        civil.RegisterBirth(
            birth_request(full_name="A" * (5 * 1024 * 1024)), metadata=agency.metadata()
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert db.counts() == before


# -- verification miss budget -------------------------------------------------------------------


def _verify(identity, agency, pin, **claims):
    claims = claims or {"full_name": "Nguyễn Văn An"}
    request = pb.VerifyIdentityRequest(pin=pin, **claims)
    return identity.VerifyIdentity(request, metadata=agency.metadata())


@pytest.fixture(scope="module")
def known(civil, agency):
    """A registered citizen: verifications of their true data MATCH."""
    return civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen


def test_misses_beyond_the_budget_throttle_the_agency_and_raise_one_alert(
    identity, make_agency, known, caplog
):
    prober = make_agency(miss_budget=5)
    other = make_agency(miss_budget=5)
    caplog.set_level(logging.WARNING, logger="registry.alerts")
    for _ in range(5):
        assert _verify(identity, prober, UNKNOWN_PIN).result == pb.VERIFY_RESULT_NOT_FOUND
    refused = call_error(_verify, identity, prober, UNKNOWN_PIN)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        MISS_BUDGET_REASON,
    )
    assert refused.quota_subjects == [f"agency:{prober.id}"]
    # 5 a minute: the next one refills in about 12 s.
    assert refused.retry_delay_s is not None and 5 < refused.retry_delay_s <= 12.5
    # Throttled means throttled: while the budget is spent even a true claim is refused.
    again = call_error(_verify, identity, prober, known.pin, full_name=known.full_name)
    assert again.reason == MISS_BUDGET_REASON
    alerts = [r for r in caplog.records if r.name == "registry.alerts" and prober.id in r.message]
    assert len(alerts) == 1, "one alert per episode, not one per refused call"
    assert alerts[0].fields["alert"] == MISS_BUDGET_REASON  # type: ignore[attr-defined]
    # Another agency's budget is its own.
    assert _verify(identity, other, UNKNOWN_PIN).result == pb.VERIFY_RESULT_NOT_FOUND


def test_matches_do_not_spend_the_budget(identity, make_agency, known):
    honest = make_agency(miss_budget=2)
    for _ in range(12):
        answer = _verify(identity, honest, known.pin, full_name=known.full_name)
        assert answer.result == pb.VERIFY_RESULT_MATCH
    # NO_MATCH spends it like NOT_FOUND does.
    for _ in range(2):
        answer = _verify(identity, honest, known.pin, full_name="Trần Văn Khác")
        assert answer.result == pb.VERIFY_RESULT_NO_MATCH
    assert call_error(_verify, identity, honest, UNKNOWN_PIN).reason == MISS_BUDGET_REASON


def test_the_budget_refills_over_the_minute(identity, make_agency):
    prober = make_agency(miss_budget=120)  # refills two a second
    claims = [pb.VerifyIdentityRequest(pin=UNKNOWN_PIN, full_name="An") for _ in range(120)]
    assert len(list(identity.BatchVerify(iter(claims), metadata=prober.metadata()))) == 120
    refused = call_error(_verify, identity, prober, UNKNOWN_PIN)
    assert refused.reason == MISS_BUDGET_REASON
    assert refused.retry_delay_s is not None and refused.retry_delay_s <= 0.6
    time.sleep(refused.retry_delay_s + 0.1)
    assert _verify(identity, prober, UNKNOWN_PIN).result == pb.VERIFY_RESULT_NOT_FOUND


def test_batch_verify_is_throttled_by_the_same_budget(identity, make_agency):
    prober = make_agency(miss_budget=10)
    claims = [
        pb.VerifyIdentityRequest(pin=UNKNOWN_PIN, full_name="An", correlation_id=str(i))
        for i in range(30)
    ]
    # Exactly the budget is answered, item by item (not a whole batch of 512 past it), and the
    # stream ends at the first miss beyond it...
    answered = []
    with pytest.raises(grpc.RpcError) as info:
        for answer in identity.BatchVerify(iter(claims), metadata=prober.metadata()):
            answered.append(answer.correlation_id)
    assert answered == [str(i) for i in range(10)]
    refused = decode(info.value)
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        MISS_BUDGET_REASON,
    )
    # ... and its next stream is refused until the budget is back (one miss in 6 s).
    stream = identity.BatchVerify(iter(claims), metadata=prober.metadata())
    again = call_error(lambda: list(stream))
    assert again.reason == MISS_BUDGET_REASON
    assert again.retry_delay_s is not None and 0 < again.retry_delay_s <= 6


# -- deadlines ----------------------------------------------------------------------------------


def _citizens_with_request(db, agency_id, request_id):
    return db.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE agency_id = $1 AND request_id = $2",
        agency_id,
        request_id,
    )


def test_a_call_whose_deadline_passed_before_it_ran_does_nothing(server, civil, agency, db):
    request = birth_request()
    # The server's event loop is held up for 1.5 s: the call arrives, waits, and its 0.5 s
    # deadline has passed by the time the registry could start it.
    server.loop.call_soon_threadsafe(time.sleep, 1.5)
    with pytest.raises(grpc.RpcError) as info:
        civil.RegisterBirth(request, metadata=agency.metadata(), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.5)  # the loop is free again; anything left of the call has run by now
    assert _citizens_with_request(db, agency.id, request.request_id) == 0
    # The same request with time to spare registers the birth once.
    answer = civil.RegisterBirth(request, metadata=agency.metadata(), timeout=10)
    assert not answer.replayed
    assert _citizens_with_request(db, agency.id, request.request_id) == 1


def test_work_is_abandoned_when_the_deadline_passes_mid_call(civil, cards, agency, db, dsn):
    citizen = civil.RegisterBirth(
        birth_request(date_of_birth=date(1990, 5, 17)), metadata=agency.metadata()
    ).citizen
    card = cards.IssueCard(
        card_pb.IssueCardRequest(
            request_id=uuid.uuid4().hex,
            pin=citizen.pin,
            serial="T-" + uuid.uuid4().hex[:12].upper(),
            kind=card_pb2.CARD_KIND_FIRST_ISSUE,
            issue_date=date(2025, 1, 2),
            issuing_authority="Cục Cảnh sát QLHC về TTXH",
        ),
        metadata=agency.metadata(),
    ).card
    revoke = card_pb.RevokeCardRequest(
        request_id=uuid.uuid4().hex, serial=card.serial, reason="stolen"
    )

    async def hold_citizen_row_then_release(seconds: float) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM citizens WHERE pin = $1 FOR UPDATE", citizen.pin)
                # The revocation blocks on this lock until its deadline passes.
                with pytest.raises(grpc.RpcError) as info:
                    await asyncio.to_thread(
                        cards.RevokeCard, revoke, metadata=agency.metadata(), timeout=0.5
                    )
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                await asyncio.sleep(seconds)
        finally:
            await conn.close()

    run(hold_citizen_row_then_release(0.5))
    time.sleep(0.5)  # the lock is gone: a call still running would now revoke the card
    state = db.fetchval("SELECT state FROM cards WHERE serial = $1", card.serial)
    assert state == 1, "the abandoned revocation went through"
    assert _citizens_with_request(db, agency.id, revoke.request_id) == 0
    # Retried in time, it is done once.
    answer = cards.RevokeCard(revoke, metadata=agency.metadata(), timeout=10)
    assert (answer.card.state, answer.replayed) == (card_pb2.CARD_STATE_REVOKED, False)
