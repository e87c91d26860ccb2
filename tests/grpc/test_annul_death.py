"""Civil status only through civil-status paths (issue 13 item 6): UpdateCitizen cannot revive
a registered death; CivilRegistrationService.AnnulDeathRegistration reverses one registered in
error, through a real channel."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from registry.v1 import card_pb2, citizen_pb2
from registry.v1 import civil_registration_service_pb2 as civil_pb
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.grpc.cards import issue, person, withhold
from tests.helpers import call_error, date, death_request

ALIVE = citizen_pb2.CITIZEN_STATUS_ALIVE
DECEASED = citizen_pb2.CITIZEN_STATUS_DECEASED
UPDATED = 3  # change_events.type (migration 0007)
NOBODY = "998060000001"  # no citizen can hold a PIN under an unknown province code


@pytest.fixture(scope="module")
def population(channel: grpc.Channel) -> Any:
    return pop_grpc.PopulationServiceStub(channel)


def annul_request(pin: str, **overrides: Any) -> civil_pb.AnnulDeathRegistrationRequest:
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "pin": pin,
        "reason": "death registered under the wrong PIN",
        "decision_reference": "QĐ 17/2026/QĐ-UBND ngày 02/03/2026",
    }
    fields.update(overrides)
    return civil_pb.AnnulDeathRegistrationRequest(**fields)


def dead_person(civil: Any, agency: Any) -> Any:
    citizen = person(civil, agency)
    request = death_request(citizen.pin, date_of_death=date(2021, 4, 5))
    return civil.RegisterDeath(request, metadata=agency.metadata()).citizen


def row(db: Any, pin: str) -> Any:
    return db.fetch(
        "SELECT status, version, death_year, death_month, death_day, "
        "death_registration_authority, death_registration_number FROM citizens WHERE pin = $1",
        pin,
    )[0]


def test_update_citizen_cannot_change_civil_status(population, civil, agency, db):
    dead = dead_person(civil, agency)
    for path, value in (
        ("status", {"status": ALIVE}),
        ("status", {"status": citizen_pb2.CITIZEN_STATUS_MISSING}),
        ("date_of_death", {"date_of_death": date(2022, 1, 1)}),
    ):
        request = pop_pb.UpdateCitizenRequest(
            request_id=str(uuid.uuid4()),
            citizen=citizen_pb2.Citizen(pin=dead.pin, **value),
            update_mask=field_mask_pb2.FieldMask(paths=[path]),
            expected_version=dead.version,
        )
        with pytest.raises(grpc.RpcError) as info:
            population.UpdateCitizen(request, metadata=agency.metadata())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(info.value)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        [detail] = [d for d in status.details if d.Is(bad.DESCRIPTOR)]
        detail.Unpack(bad)
        [violation] = bad.field_violations
        assert violation.field == "update_mask.paths[0]"
        assert violation.description.startswith(f"'{path}' cannot be changed here")
    r = row(db, dead.pin)
    assert (r["status"], r["version"], r["death_year"]) == (DECEASED, dead.version, 2021)


def test_annulment_revives_the_record_keeps_history_and_reports_an_update(
    civil, cards, identity, agency, db
):
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    death = death_request(citizen.pin, date_of_death=date(2021, 4, 5))
    dead = civil.RegisterDeath(death, metadata=agency.metadata()).citizen
    request = annul_request(citizen.pin)
    response = civil.AnnulDeathRegistration(request, metadata=agency.metadata())

    assert response.replayed is False
    alive = response.citizen
    assert (alive.pin, alive.status, alive.version) == (citizen.pin, ALIVE, dead.version + 1)
    assert not alive.HasField("date_of_death")
    r = row(db, citizen.pin)
    assert (r["status"], r["version"]) == (ALIVE, dead.version + 1)
    assert (r["death_year"], r["death_month"], r["death_day"]) == (None, None, None)
    assert (r["death_registration_authority"], r["death_registration_number"]) == (None, None)

    # The deceased version is in the history, with who, why and on whose decision.
    [h] = db.fetch(
        "SELECT version, record->>'status' AS status, record->>'death_year' AS died, fields, "
        "changed_by, request_id, reason, decision_reference FROM citizen_history "
        "WHERE pin = $1 AND version = $2",
        citizen.pin,
        dead.version,
    )
    assert (h["status"], h["died"]) == (str(DECEASED), "2021")
    assert list(h["fields"]) == ["status", "date_of_death"]
    assert (h["changed_by"], h["request_id"]) == (agency.id, request.request_id)
    assert (h["reason"], h["decision_reference"]) == (request.reason, request.decision_reference)

    # The change feed reports it as UPDATED (after DIED).
    types = [
        r["type"]
        for r in db.fetch("SELECT type FROM change_events WHERE pin = $1 ORDER BY id", citizen.pin)
    ]
    assert types[-2:] == [2, UPDATED]

    # The card is as it was: ACTIVE, and it verifies again now that its holder is alive.
    assert db.fetchval("SELECT state FROM cards WHERE serial = $1", card.serial) == 1
    check = identity.VerifyIdentity(
        id_pb.VerifyIdentityRequest(pin=citizen.pin, card_serial=card.serial),
        metadata=agency.metadata(),
    )
    assert check.result == id_pb.VERIFY_RESULT_MATCH

    # A later death registration works as for anyone alive.
    again = civil.RegisterDeath(
        death_request(citizen.pin, date_of_death=date(2023, 6, 7)), metadata=agency.metadata()
    )
    assert again.citizen.status == DECEASED


def test_a_withheld_or_superseded_card_is_not_revived(civil, cards, agency, db):
    citizen = person(civil, agency)
    old = issue(cards, agency, citizen.pin).card
    card = issue(
        cards, agency, citizen.pin, kind=card_pb2.CARD_KIND_REISSUE, issued=(2025, 4, 1)
    ).card
    withhold(cards, agency, card.serial)
    civil.RegisterDeath(death_request(citizen.pin), metadata=agency.metadata())
    before = db.fetch("SELECT serial, state, update_time FROM cards WHERE pin = $1", citizen.pin)
    civil.AnnulDeathRegistration(annul_request(citizen.pin), metadata=agency.metadata())
    after = db.fetch("SELECT serial, state, update_time FROM cards WHERE pin = $1", citizen.pin)
    assert sorted(map(tuple, after)) == sorted(map(tuple, before))
    assert {r["serial"]: r["state"] for r in after} == {old.serial: 2, card.serial: 4}


def test_annulment_is_idempotent(civil, agency, db):
    dead = dead_person(civil, agency)
    request = annul_request(dead.pin)
    first = civil.AnnulDeathRegistration(request, metadata=agency.metadata())
    version = first.citizen.version
    again = civil.AnnulDeathRegistration(request, metadata=agency.metadata())
    assert again.replayed is True
    assert again.citizen == first.citizen
    assert row(db, dead.pin)["version"] == version
    assert db.fetchval("SELECT count(*) FROM citizen_history WHERE pin = $1", dead.pin) == 1

    other = annul_request(dead.pin, request_id=request.request_id, reason="another reason")
    err = call_error(civil.AnnulDeathRegistration, other, metadata=agency.metadata())
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert row(db, dead.pin)["version"] == version


def test_annulment_refusals_change_nothing(civil, agency, db, population):
    alive = person(civil, agency)
    before = db.counts()
    err = call_error(
        civil.AnnulDeathRegistration, annul_request(alive.pin), metadata=agency.metadata()
    )
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CITIZEN_NOT_DECEASED")
    assert [t for t, _ in err.preconditions] == ["CITIZEN_NOT_DECEASED"]

    err = call_error(
        civil.AnnulDeathRegistration, annul_request(NOBODY), metadata=agency.metadata()
    )
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "CITIZEN_NOT_FOUND")

    bad = annul_request("12ab", reason="", decision_reference="x" * 201, request_id="")
    err = call_error(civil.AnnulDeathRegistration, bad, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(err.bad_fields) == ["decision_reference", "pin", "reason", "request_id"]
    long_reason = annul_request(alive.pin, reason="x" * 501)
    err = call_error(civil.AnnulDeathRegistration, long_reason, metadata=agency.metadata())
    assert err.bad_fields == ["reason"]
    assert db.counts() == before

    # A cancelled PIN: answered as elsewhere, pointing at the PIN in use.
    dead = dead_person(civil, agency)
    sex = citizen_pb2.SEX_FEMALE if dead.sex == citizen_pb2.SEX_MALE else citizen_pb2.SEX_MALE
    moved = population.UpdateCitizen(
        pop_pb.UpdateCitizenRequest(
            request_id=str(uuid.uuid4()),
            citizen=citizen_pb2.Citizen(pin=dead.pin, sex=sex),
            update_mask=field_mask_pb2.FieldMask(paths=["sex"]),
            expected_version=dead.version,
        ),
        metadata=agency.metadata(),
    ).citizen
    err = call_error(
        civil.AnnulDeathRegistration, annul_request(dead.pin), metadata=agency.metadata()
    )
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PIN_CANCELLED")
    assert err.metadata == {"replaced_by_pin": moved.pin}


def test_annulment_needs_the_death_register_scope_and_is_audited(civil, agency, make_agency, db):
    dead = dead_person(civil, agency)
    births_only = make_agency(scopes=("birth:register",))
    err = call_error(
        civil.AnnulDeathRegistration, annul_request(dead.pin), metadata=births_only.metadata()
    )
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    justice = make_agency(scopes=("death:register",))
    request = annul_request(dead.pin)
    civil.AnnulDeathRegistration(request, metadata=justice.metadata(purpose="annulment"))
    # No answer leaves before its audit entry is durable: no waiting needed.
    entries = db.fetch(
        "SELECT agency_id, outcome, purpose, request_id FROM audit_log "
        "WHERE method = $1 AND $2 = ANY(pins) ORDER BY seq",
        "/registry.v1.CivilRegistrationService/AnnulDeathRegistration",
        dead.pin,
    )
    assert [(e["agency_id"], e["outcome"]) for e in entries] == [
        (births_only.id, "PERMISSION_DENIED"),
        (justice.id, "OK"),
    ]
    assert (entries[1]["purpose"], entries[1]["request_id"]) == ("annulment", request.request_id)
