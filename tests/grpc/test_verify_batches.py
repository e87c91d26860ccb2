"""IdentityService.VerifyIdentityBatches through a real channel (SPEC §10): answers in order,
per-item errors, per-citizen audit, the miss budget per item, attestations, one query a batch."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from registry.v1 import card_service_pb2_grpc, civil_registration_service_pb2_grpc
from registry.v1 import identity_service_pb2 as pb
from registry.v1 import identity_service_pb2_grpc as id_grpc
from tests.conftest import make_agency_factory
from tests.grpc.cards import issue, person, revoke, today
from tests.grpc.identity import (
    EXCHANGE,
    MATCH,
    NOT_FOUND,
    UNSPECIFIED,
    bad_request_fields,
    campaign,
    check_answers,
    commits,
    commits_while_serving,
    jwks_of,
    start_server,
    strangers,
    verify_attestation,
    vreq,
)
from tests.helpers import call_error, decode

NOBODY = "001099999999"


def batches(identity, agency, groups, purpose=None):
    requests = (pb.VerifyIdentityBatchesRequest(requests=g) for g in groups)
    return list(
        identity.VerifyIdentityBatches(
            requests, metadata=agency.metadata(purpose=purpose), timeout=60
        )
    )


def test_answers_come_per_batch_in_order_with_per_item_errors(identity, agency, population, dsn):
    # NO_MATCH cases about a different stranger each: none reaches the per-citizen limit.
    requests, expected = campaign(population, strangers(dsn, 1500), 3000, bad=1500)
    groups = [requests[:1000], requests[1000:2500], requests[2500:]]
    answers = batches(identity, agency, groups)
    assert [len(a.responses) for a in answers] == [1000, 1500, 500]
    flat = [r for a in answers for r in a.responses]
    # Same order as sent: the correlation ids line up one to one.
    assert [r.correlation_id for r in flat] == [r.correlation_id for r in requests]
    check_answers(flat, expected, "row-01500")


def test_every_check_is_in_the_citizens_access_log_with_its_purpose(
    identity, make_agency, population, db
):
    bank = make_agency(scopes=("identity:verify",))
    p = population[1]
    groups = [
        [vreq(p["pin"], sex=p["sex"], correlation_id=f"c{i}") for i in range(3)],
        [vreq(p["pin"], full_name="Someone Else", correlation_id="c3"), vreq("12", sex=1)],
    ]
    batches(identity, bank, groups, purpose="kyc-refresh-2026")
    rows = db.fetch(
        "SELECT pins, outcome, purpose, request_id FROM audit_log WHERE agency_id = $1 "
        "AND method LIKE '%VerifyIdentityBatches' ORDER BY seq",
        bank.id,
    )
    # One entry per check of the citizen; the malformed PIN reached nobody.
    assert [(list(r["pins"]), r["outcome"], r["request_id"]) for r in rows] == [
        ([p["pin"]], "OK", f"c{i}") for i in range(4)
    ]
    assert {r["purpose"] for r in rows} == {"kyc-refresh-2026"}


def test_the_miss_budget_is_applied_per_item_and_the_batch_goes_on(
    identity, make_agency, population
):
    bank = make_agency(scopes=("identity:verify",), miss_budget=3)
    p = population[0]
    group = [
        vreq(NOBODY, sex=1, correlation_id="miss-1"),
        vreq(p["pin"], sex=p["sex"], correlation_id="match-1"),
        vreq(NOBODY, sex=1, correlation_id="miss-2"),
        vreq(NOBODY, sex=1, correlation_id="miss-3"),
        vreq(NOBODY, sex=1, correlation_id="miss-4"),
        vreq(p["pin"], sex=p["sex"], correlation_id="match-2"),
    ]
    [answer] = batches(identity, bank, [group])
    by_id = {r.correlation_id: r for r in answer.responses}
    assert [by_id[c].result for c in ("miss-1", "match-1", "miss-2", "miss-3")] == [
        NOT_FOUND,
        MATCH,
        NOT_FOUND,
        NOT_FOUND,
    ]
    # The budget of 3 misses is spent: the next items are refused, one by one.
    for cid in ("miss-4", "match-2"):
        refused = by_id[cid]
        assert refused.result == UNSPECIFIED and not refused.field_matches
        assert refused.error.code == code_pb2.RESOURCE_EXHAUSTED
        info = error_details_pb2.ErrorInfo()
        assert any(d.Unpack(info) for d in refused.error.details if d.Is(info.DESCRIPTOR))
        assert info.reason == "VERIFICATION_MISS_BUDGET_EXHAUSTED"


def test_attestations_are_given_per_item_on_request(identity, agency, population):
    p = population[2]
    jwks = jwks_of(identity, agency)
    group = [
        vreq(p["pin"], card_serial=p["active"], correlation_id="a", want_attestation=True),
        vreq(p["pin"], card_serial=p["active"], correlation_id="b"),
        vreq(p["pin"], correlation_id="empty", want_attestation=True),
    ]
    [answer] = batches(identity, agency, [group])
    a, b, empty = answer.responses
    claims = verify_attestation(a.attestation, jwks).claims
    assert (claims["sub"], claims["result"], claims["correlation_id"]) == (p["pin"], "MATCH", "a")
    assert b.result == MATCH and b.attestation == ""
    assert empty.error.code == code_pb2.INVALID_ARGUMENT and bad_request_fields(empty.error) == [
        "pin"
    ]
    assert empty.attestation == ""


@pytest.mark.parametrize("count", [0, 10_001])
def test_a_batch_of_no_or_too_many_requests_is_invalid_argument(identity, agency, count):
    group = [vreq(NOBODY, sex=1)] * count
    err = call_error(batches, identity, agency, [group])
    assert (err.code, err.bad_fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["requests"])


def test_a_batch_over_4_mib_is_invalid_argument(identity, agency):
    group = [vreq(NOBODY, full_name="x" * 300, correlation_id="y" * 128)] * 10_000
    assert pb.VerifyIdentityBatchesRequest(requests=group).ByteSize() > 4 * 1024 * 1024
    err = call_error(batches, identity, agency, [group])
    assert (err.code, err.bad_fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["request"])


def test_verification_needs_the_identity_verify_scope(identity, make_agency):
    reader = make_agency(scopes=("citizen:read",))
    err = call_error(batches, identity, reader, [[vreq(NOBODY, sex=1)]])
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")


def test_each_batch_is_looked_up_with_one_query(private_dsn):
    """3 batches of 2,000 cost a handful of transactions, not 6,000 (counted as committed
    transactions of a database only this test uses, as test_identity does for BatchVerify)."""
    bank = make_agency_factory(private_dsn)(miss_budget=1_000_000)
    seeding = start_server(private_dsn)
    try:
        with grpc.insecure_channel(seeding.target) as channel:
            civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
            cards = card_service_pb2_grpc.CardServiceStub(channel)
            people = []
            for name, sex, dob in [
                ("Nguyễn Văn An", 1, (1980, 1, 2)),
                ("Trần Thị Bích", 2, (1975,)),
            ]:
                citizen = person(civil, bank, dob=dob, full_name=name, sex=sex)
                revoked = issue(cards, bank, citizen.pin, issued=(2025, 1, 1)).card
                revoke(cards, bank, revoked.serial)
                active = issue(cards, bank, citizen.pin, kind=EXCHANGE, issued=today()).card
                full = (dob[0], dob[1] if len(dob) > 1 else 6, dob[2] if len(dob) > 2 else 15)
                people.append(
                    {"pin": citizen.pin, "name": name, "sex": sex, "dob": full,
                     "active": active.serial, "revoked": revoked.serial}
                )  # fmt: skip
    finally:
        seeding.stop()
    others = strangers(private_dsn, 3000)
    commits(private_dsn)
    requests, expected = campaign(people, others, 6000, bad=4321)
    serving = start_server(private_dsn)
    try:
        before = commits_while_serving(private_dsn)
        with grpc.insecure_channel(serving.target) as channel:
            stub = id_grpc.IdentityServiceStub(channel)
            answers = batches(stub, bank, [requests[i : i + 2000] for i in range(0, 6000, 2000)])
    finally:
        serving.stop()
    delta = commits(private_dsn) - before
    check_answers([r for a in answers for r in a.responses], expected, "row-04321")
    assert delta < 200, f"{delta} transactions for 3 batches of 2,000: not one query a batch"


def test_batches_before_an_invalid_one_are_answered_and_none_after_it(identity, agency, population):
    # Batches are checked ahead of the answers (a pipeline): the invalid batch's error still
    # comes after the answers of the batches sent before it, and nothing after it is answered.
    p = population[0]
    good = [vreq(p["pin"], sex=p["sex"], correlation_id=f"g{i}") for i in range(3)]
    groups = [good[:2], good[2:], [], good]
    requests = (pb.VerifyIdentityBatchesRequest(requests=g) for g in groups)
    stream = identity.VerifyIdentityBatches(requests, metadata=agency.metadata(), timeout=60)
    answered = []
    with pytest.raises(grpc.RpcError) as ended:
        for answer in stream:
            answered.append([r.correlation_id for r in answer.responses])
    assert answered == [["g0", "g1"], ["g2"]]
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_no_batch_is_answered_before_its_checks_are_audited(identity, agency, population, db):
    # With the audit log refusing writes, batches checked ahead of their audit must not leak
    # out: the caller gets AUDIT_UNAVAILABLE and not one answer.
    p = population[0]
    groups = [[vreq(p["pin"], sex=p["sex"], correlation_id=f"b{b}-{i}") for i in range(50)]
              for b in range(4)]  # fmt: skip
    db.execute("REVOKE INSERT ON audit_log FROM registry_runtime")
    answered = []
    try:
        requests = (pb.VerifyIdentityBatchesRequest(requests=g) for g in groups)
        stream = identity.VerifyIdentityBatches(requests, metadata=agency.metadata(), timeout=60)
        with pytest.raises(grpc.RpcError) as refused:
            for answer in stream:
                answered.append(answer)
    finally:
        db.execute("GRANT INSERT ON audit_log TO registry_runtime")
    assert answered == []
    details = decode(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE")
    # Writing resumes: the same batches are answered, in order.
    assert [len(a.responses) for a in batches(identity, agency, groups)] == [50] * 4
