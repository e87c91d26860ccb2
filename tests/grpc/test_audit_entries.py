"""What writes audit entries (SPEC §7), through real channels and the real database.

- Every RPC that touches a citizen, refusals included, and the entry is in the table when the
  call answers (durable before the answer); what must not: calls that are unauthenticated,
  rate limited, name no well-formed PIN, or touch no citizen.
- Group commit: concurrent calls share transactions.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from registry.v1 import audit_service_pb2 as pb
from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import identity_service_pb2 as id_pb
from tests.conftest import TestAgency as Agency
from tests.conftest import (
    new_private_key,
    run,
)
from tests.grpc.audit_log import (
    DENIED,
    FEMALE,
    INVALID,
    MALE,
    V1,
    Calls,
    assert_entry,
    batch,
    entries_by,
    head_seq,
    naming,
    unique_unknown_pin,
    verify_chain,
)
from tests.grpc.cards import issue_request, legacy, new_rid, person
from tests.helpers import birth_request, call_error, death_request, decode

# -- what writes entries ------------------------------------------------------------------------


def test_register_birth_records_the_child_and_the_parents(civil, agency, calls):
    father = person(civil, agency, full_name="Ngô Văn Cha", sex=MALE)
    mother = person(civil, agency, full_name="Đặng Thị Mẹ", sex=FEMALE)
    c = calls("birth registration")
    request = birth_request(father_pin=father.pin, mother_pin=mother.pin)
    child = c(civil.RegisterBirth, request).citizen
    c.one(
        "CivilRegistrationService/RegisterBirth",
        [child.pin, father.pin, mother.pin],
        request_id=request.request_id,
    )
    # A replay is a call too.
    assert c(civil.RegisterBirth, request).replayed
    c.one(
        "CivilRegistrationService/RegisterBirth",
        [child.pin, father.pin, mother.pin],
        request_id=request.request_id,
    )


def test_a_refused_birth_naming_a_parent_records_the_parent(civil, calls):
    c = calls()
    unknown = unique_unknown_pin()
    request = birth_request(mother_pin=unknown)
    err = c.fails(civil.RegisterBirth, request)
    c.one(
        "CivilRegistrationService/RegisterBirth",
        [unknown],
        outcome=err.code.name,
        request_id=request.request_id,
    )


def test_register_death(civil, agency, calls):
    pin = person(civil, agency).pin
    c = calls("death registration")
    request = death_request(pin)
    c(civil.RegisterDeath, request)
    c.one("CivilRegistrationService/RegisterDeath", [pin], request_id=request.request_id)


def test_issue_card_and_card_state_changes_record_the_holder(civil, cards, agency, calls):
    pin = person(civil, agency).pin
    c = calls("card station")
    issued = issue_request(pin)
    serial = c(cards.IssueCard, issued).card.serial
    c.one("CardService/IssueCard", [pin], request_id=issued.request_id)
    # The state changes name only a serial: the entry names the holder.
    for method, message in [
        ("WithholdCard", card_pb.WithholdCardRequest),
        ("ReleaseCard", card_pb.ReleaseCardRequest),
        ("RevokeCard", card_pb.RevokeCardRequest),
    ]:
        request = message(request_id=new_rid(), serial=serial, reason="audit test")
        c(getattr(cards, method), request)
        c.one(f"CardService/{method}", [pin], request_id=request.request_id)
    # A refused change of a known card names its holder too.
    again = card_pb.RevokeCardRequest(request_id=new_rid(), serial=serial, reason="twice")
    err = c.fails(cards.RevokeCard, again)
    c.one("CardService/RevokeCard", [pin], outcome=err.code.name, request_id=again.request_id)


def test_list_cards(civil, cards, agency, calls):
    pin = person(civil, agency).pin
    c = calls("card lookup")
    c(cards.ListCards, card_pb.ListCardsRequest(pin=pin))
    c.one("CardService/ListCards", [pin])


def test_link_and_resolve_legacy_id(civil, cards, identity, agency, calls):
    pin = person(civil, agency).pin
    number = legacy(9)
    c = calls("legacy number")
    request = card_pb.LinkLegacyIdRequest(request_id=new_rid(), pin=pin, legacy_id=number)
    c(cards.LinkLegacyId, request)
    c.one("CardService/LinkLegacyId", [pin], request_id=request.request_id)
    # The resolution names only the old number: the entry names the PIN it resolved to.
    assert c(identity.ResolveLegacyId, id_pb.ResolveLegacyIdRequest(legacy_id=number)).pin == pin
    c.one("IdentityService/ResolveLegacyId", [pin])


def test_verify_identity_known_and_unknown_pin(civil, identity, agency, calls):
    pin = person(civil, agency).pin
    c = calls("account opening")
    answer = c(identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin=pin, sex=MALE))
    assert answer.result == id_pb.VERIFY_RESULT_MATCH
    c.one("IdentityService/VerifyIdentity", [pin])
    unknown = unique_unknown_pin()
    answer = c(identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin=unknown, sex=MALE))
    assert answer.result == id_pb.VERIFY_RESULT_NOT_FOUND
    c.one("IdentityService/VerifyIdentity", [unknown])


def test_verify_identity_records_its_correlation_id(civil, identity, agency, calls):
    """The same check is recorded alike whether it came alone or in a BatchVerify stream."""
    pin = person(civil, agency).pin
    c = calls()
    c(identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin=pin, sex=MALE, correlation_id="k"))
    c.one("IdentityService/VerifyIdentity", [pin], request_id="k")


def test_batch_verify_records_one_entry_per_item(civil, identity, agency, calls):
    pin = person(civil, agency).pin
    unknown = unique_unknown_pin()
    c = calls("data cleaning")
    requests = [
        id_pb.VerifyIdentityRequest(pin=pin, sex=MALE, correlation_id="c-match"),
        id_pb.VerifyIdentityRequest(pin=unknown, sex=MALE, correlation_id="c-unknown"),
        id_pb.VerifyIdentityRequest(pin=pin, sex=FEMALE, correlation_id="c-no-match"),
        # Malformed claims: a well-formed PIN is recorded with the refusal; a malformed one
        # names no citizen.
        id_pb.VerifyIdentityRequest(pin=pin, correlation_id="c-nothing-to-check"),
        id_pb.VerifyIdentityRequest(pin="12345", sex=MALE, correlation_id="c-bad-pin"),
    ]
    answers = c(batch(identity), requests)
    assert len(answers) == len(requests)
    written = c.written()
    got = sorted((e["request_id"], tuple(e["pins"]), e["outcome"]) for e in written)
    assert got == sorted(
        [
            ("c-match", (pin,), "OK"),
            ("c-unknown", (unknown,), "OK"),
            ("c-no-match", (pin,), "OK"),
            ("c-nothing-to-check", (pin,), "INVALID_ARGUMENT"),
        ]
    )
    for e in written:
        assert (e["method"], e["purpose"]) == (V1 + "IdentityService/BatchVerify", c.purpose)
        assert c.window[0] - 0.001 <= e["time"].timestamp() <= c.window[1] + 0.001


def test_get_citizen_and_its_refusals(civil, identity, agency, calls):
    pin = person(civil, agency).pin
    c = calls("tax file", scopes=("citizen:read",), fields=("full_name",))
    c(identity.GetCitizen, id_pb.GetCitizenRequest(pin=pin))
    c.one("IdentityService/GetCitizen", [pin])
    mask = field_mask_pb2.FieldMask(paths=["religion"])
    err = c.fails(identity.GetCitizen, id_pb.GetCitizenRequest(pin=pin, read_mask=mask))
    assert err.code == DENIED
    c.one("IdentityService/GetCitizen", [pin], outcome="PERMISSION_DENIED")
    unknown = unique_unknown_pin()
    err = c.fails(identity.GetCitizen, id_pb.GetCitizenRequest(pin=unknown))
    assert err.code == grpc.StatusCode.NOT_FOUND
    c.one("IdentityService/GetCitizen", [unknown], outcome="NOT_FOUND")
    # Authenticated but without the scope: the refusal is recorded.
    err = c.fails(identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin=pin, sex=MALE))
    assert err.code == DENIED
    c.one("IdentityService/VerifyIdentity", [pin], outcome="PERMISSION_DENIED")


def test_list_access_log_is_recorded(audit, civil, agency, calls):
    pin = person(civil, agency).pin
    c = calls("citizen portal", scopes=("audit:read",))
    c(audit.ListAccessLog, pb.ListAccessLogRequest(pin=pin))
    c.one("AuditService/ListAccessLog", [pin])


PADDED: dict[str, Callable[[str], Any]] = {
    "IdentityService/VerifyIdentity": lambda pin: id_pb.VerifyIdentityRequest(pin=pin, sex=MALE),
    "IdentityService/GetCitizen": lambda pin: id_pb.GetCitizenRequest(pin=pin),
    "CardService/ListCards": lambda pin: card_pb.ListCardsRequest(pin=pin),
    "CardService/IssueCard": lambda pin: issue_request(pin),
    "CivilRegistrationService/RegisterDeath": death_request,
    "AuditService/ListAccessLog": lambda pin: pb.ListAccessLogRequest(pin=pin),
}


@pytest.mark.parametrize("method", list(PADDED))
def test_a_pin_with_surrounding_spaces_is_still_recorded(
    civil, cards, identity, audit, agency, calls, method
):
    """The servicers accept a PIN with surrounding ASCII whitespace (they trim it): the call
    reached that citizen, so its entry must name the citizen like any other."""
    pin = person(civil, agency).pin
    stubs = {"IdentityService": identity, "CardService": cards, "AuditService": audit,
             "CivilRegistrationService": civil}  # fmt: skip
    service, name = method.split("/")
    c = calls("padded pin")
    request = PADDED[method](f" {pin}\t")
    c(getattr(stubs[service], name), request)  # accepted: the servicer trimmed the PIN
    c.one(method, [pin], request_id=getattr(request, "request_id", ""))


def test_a_parent_pin_with_surrounding_spaces_is_still_recorded(civil, agency, calls):
    father = person(civil, agency, full_name="Ngô Văn Cha", sex=MALE)
    c = calls("birth registration")
    request = birth_request(father_pin=f" {father.pin}\t")
    child = c(civil.RegisterBirth, request).citizen
    assert child.father_pin == father.pin  # accepted: the PIN was trimmed
    c.one(
        "CivilRegistrationService/RegisterBirth",
        [child.pin, father.pin],
        request_id=request.request_id,
    )


def test_the_whole_request_id_is_recorded(civil, identity, agency, calls):
    """request_id may be up to 128 characters (correlation_id too): the entry keeps all of it,
    or two calls differing only after the 64th character could not be told apart."""
    c = calls()
    request = birth_request(request_id="r" * 64 + uuid.uuid4().hex + "-" * 31)
    assert len(request.request_id) == 127
    pin = c(civil.RegisterBirth, request).citizen.pin
    c.one("CivilRegistrationService/RegisterBirth", [pin], request_id=request.request_id)
    correlation = "c" * 100 + uuid.uuid4().hex[:28]
    item = id_pb.VerifyIdentityRequest(pin=pin, sex=MALE, correlation_id=correlation)
    c(batch(identity), [item])
    c.one("IdentityService/BatchVerify", [pin], request_id=correlation)


@pytest.mark.parametrize("refused", [False, True], ids=["answered", "refused"])
def test_no_answer_leaves_before_its_entry_is_committed(civil, identity, agency, db, refused):
    """While the chain's head is locked (so no audit group can commit) a call touching a
    citizen does not answer; once the lock is released it answers, its entry in the table."""
    pin = unique_unknown_pin() if refused else person(civil, agency).pin
    reader = Calls(db, agency, "held")

    async def scenario() -> Any:
        conn = await asyncpg.connect(db.dsn)
        try:
            transaction = conn.transaction()
            await transaction.start()
            try:
                await conn.execute("SELECT 1 FROM audit_head FOR UPDATE")
                future = identity.GetCitizen.future(
                    id_pb.GetCitizenRequest(pin=pin), metadata=reader.md, timeout=30
                )
                await asyncio.sleep(0.5)
                assert not future.done(), "answered before its audit entry could be written"
            finally:
                await transaction.rollback()
            try:
                return await asyncio.get_running_loop().run_in_executor(None, future.result, 30)
            except grpc.RpcError as exc:
                return exc.code()
        finally:
            await conn.close()

    outcome = run(scenario())
    if refused:
        assert outcome == grpc.StatusCode.NOT_FOUND
    else:
        assert outcome.citizen.pin == pin
    written = reader.written()
    assert [(e["method"], e["pins"], e["outcome"]) for e in written] == [
        (V1 + "IdentityService/GetCitizen", [pin], "NOT_FOUND" if refused else "OK")
    ]


# -- what must not write entries ----------------------------------------------------------------


def test_unauthenticated_calls_write_nothing(civil, identity, agency, db, make_agency):
    pin = person(civil, agency).pin
    before = head_seq(db)
    stranger = make_agency()
    forged = stranger.token(key=new_private_key())  # signed with a key it never registered
    expired = stranger.token(iat_offset=-1000)
    for metadata in [(), (("authorization", f"Bearer {forged}"),), stranger.metadata(expired)]:
        err = call_error(identity.GetCitizen, id_pb.GetCitizenRequest(pin=pin), metadata=metadata)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert naming(db, pin, before) == []


def test_rate_limited_calls_write_nothing(civil, identity, agency, db, make_agency):
    pin = person(civil, agency).pin
    limited = make_agency(rate_limit=1, fields=("full_name",))
    before = head_seq(db)
    md = limited.metadata()
    identity.GetCitizen(id_pb.GetCitizenRequest(pin=pin), metadata=md)
    err = call_error(identity.GetCitizen, id_pb.GetCitizenRequest(pin=pin), metadata=md)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    written = entries_by(db, limited, before)
    assert [(e["method"], e["outcome"]) for e in written] == [
        (V1 + "IdentityService/GetCitizen", "OK")
    ]


def test_calls_naming_no_well_formed_pin_write_nothing(civil, cards, identity, audit, calls):
    c = calls()
    for fn, request in [
        (identity.GetCitizen, id_pb.GetCitizenRequest(pin="12345")),
        (identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin="00120000000x", sex=MALE)),
        (cards.ListCards, card_pb.ListCardsRequest(pin="0012000000012")),
        (audit.ListAccessLog, pb.ListAccessLogRequest(pin="abc")),
        (civil.RegisterDeath, death_request("1")),
        (civil.RegisterBirth, birth_request(full_name="")),
        (civil.RegisterBirth, birth_request(father_pin="123")),
    ]:
        assert c.fails(fn, request).code == INVALID
        assert c.written() == []


def test_calls_reaching_no_citizen_write_nothing(cards, identity, calls):
    c = calls()
    c(identity.GetSigningKeys, id_pb.GetSigningKeysRequest())
    assert c.written() == []
    request = card_pb.RevokeCardRequest(request_id=new_rid(), serial="T-NOSUCHCARD", reason="x")
    assert c.fails(cards.RevokeCard, request).code == grpc.StatusCode.NOT_FOUND
    assert c.written() == []
    unknown = id_pb.ResolveLegacyIdRequest(legacy_id=legacy(9))
    assert c.fails(identity.ResolveLegacyId, unknown).code == grpc.StatusCode.NOT_FOUND
    assert c.written() == []


# -- group commit -------------------------------------------------------------------------------

CONCURRENT = 64


@pytest.fixture(scope="module")
def busy_citizen(civil, identity, db, make_agency) -> tuple[str, Agency, int, tuple[float, float]]:
    """A citizen verified by 64 concurrent calls: (pin, agency, head before, time window)."""
    bank = make_agency(scopes=("identity:verify", "birth:register"), miss_budget=1000)
    pin = person(civil, bank).pin
    before = head_seq(db)
    md = bank.metadata(purpose="concurrent")
    request = id_pb.VerifyIdentityRequest(pin=pin, sex=MALE)
    started = time.time()
    futures = [identity.VerifyIdentity.future(request, metadata=md) for _ in range(CONCURRENT)]
    answers = [f.result(timeout=60) for f in futures]
    window = (started, time.time())
    assert all(a.result == id_pb.VERIFY_RESULT_MATCH for a in answers)
    return pin, bank, before, window


def test_concurrent_calls_share_transactions(db, dsn, server, busy_citizen):
    pin, bank, before, _ = busy_citizen
    written = entries_by(db, bank, before)
    assert len(written) == CONCURRENT
    assert all(e["pins"] == [pin] for e in written)
    # Rows inserted by one transaction share its xmin.
    transactions = db.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM audit_log WHERE seq > $1 AND agency_id = $2",
        before,
        bank.id,
    )
    assert 1 <= transactions < CONCURRENT
    result = verify_chain(dsn, server.settings)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("audit log intact: ")


def test_concurrent_entries_are_complete(db, busy_citizen):
    pin, bank, before, window = busy_citizen
    for e in entries_by(db, bank, before):
        assert_entry(
            e, bank, "IdentityService/VerifyIdentity", [pin], purpose="concurrent", window=window
        )


def test_a_call_without_a_purpose_is_audited_with_an_empty_one(civil, agency, db):
    before = head_seq(db)
    child = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    (entry,) = [e for e in entries_by(db, agency, before) if child.pin in e["pins"]]
    assert entry["purpose"] == ""
    purposed = civil.RegisterBirth(birth_request(), metadata=agency.metadata(purpose="khai sinh"))
    (entry,) = [e for e in entries_by(db, agency, before) if purposed.citizen.pin in e["pins"]]
    assert entry["purpose"] == "khai sinh"


def test_purposes_in_vietnamese_travel_as_utf8_bytes_and_are_audited_as_text(civil, agency, db):
    # gRPC metadata values are ASCII: a purpose in Vietnamese is sent as x-purpose-bin.
    sent = {
        "đăng ký khai sinh": "đăng ký khai sinh".encode(),
        "hồ sơ \ufffd": "hồ sơ ".encode() + b"\xff",  # invalid UTF-8 replaced, not refused
        "ậ" * 200: "ậ".encode() * 300,  # at most 200 characters kept
    }
    before = head_seq(db)
    for expected, raw in sent.items():
        md = (*agency.metadata(), ("x-purpose-bin", raw))
        child = civil.RegisterBirth(birth_request(), metadata=md).citizen
        (entry,) = [e for e in entries_by(db, agency, before) if child.pin in e["pins"]]
        assert entry["purpose"] == expected
    md = (*agency.metadata(), ("x-purpose", "a" * 250))
    child = civil.RegisterBirth(birth_request(), metadata=md).citizen
    (entry,) = [e for e in entries_by(db, agency, before) if child.pin in e["pins"]]
    assert entry["purpose"] == "a" * 200
    # Other binary metadata (tracing, the caller's own) is not a purpose.
    md = (*agency.metadata(purpose="kyc"), ("x-trace-bin", b"\x01\x02"))
    child = civil.RegisterBirth(birth_request(), metadata=md).citizen
    (entry,) = [e for e in entries_by(db, agency, before) if child.pin in e["pins"]]
    assert entry["purpose"] == "kyc"


def test_a_refusal_whose_entry_cannot_be_written_is_audit_unavailable(identity, agency, db):
    # A lookup of an unknown PIN is a refusal that reached a citizen's number: it answers
    # only once its entry is durable. With the audit log refusing writes, the caller learns
    # nothing about the PIN: AUDIT_UNAVAILABLE, not NOT_FOUND.
    unknown = "001099000777"
    db.execute("REVOKE INSERT ON audit_log FROM registry_runtime")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            identity.GetCitizen(
                id_pb.GetCitizenRequest(pin=unknown), metadata=agency.metadata(), timeout=30
            )
    finally:
        db.execute("GRANT INSERT ON audit_log TO registry_runtime")
    details = decode(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE")
    # Writing resumes: the same lookup now answers NOT_FOUND, with its entry.
    with pytest.raises(grpc.RpcError) as answered:
        identity.GetCitizen(
            id_pb.GetCitizenRequest(pin=unknown), metadata=agency.metadata(), timeout=30
        )
    assert decode(answered.value).reason == "CITIZEN_NOT_FOUND"
