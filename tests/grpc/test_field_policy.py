"""The field policy on every response carrying a Citizen (SPEC §6, issue 13 item 1), through a
real channel.

Agencies registered to read no field get back only `pin`, `status`, `version` and the fields
their own request supplied, from every RPC that answers with a record and from its replays;
a replay answers the record as the original call left it, never as it is now.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from registry.v1 import citizen_pb2
from registry.v1 import civil_registration_service_pb2 as civil_pb
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.grpc.cards import legacy, link, person
from tests.helpers import birth_request, call_error, date, death_request

ALWAYS = {"pin", "status", "version"}
BIRTH_SUPPLIED = {
    "full_name",
    "sex",
    "date_of_birth",
    "place_of_birth",
    "registration_province_code",
    "hometown",
    "ethnicity",
    "nationality",
    "mother_pin",
}
SECRET_ADDRESS = "Số 9 ngõ Bí Mật, phường Kín Đáo"


@pytest.fixture(scope="module")
def population(channel: grpc.Channel) -> Any:
    return pop_grpc.PopulationServiceStub(channel)


def shown(citizen: citizen_pb2.Citizen) -> set[str]:
    """The fields a Citizen message carries."""
    return {f.name for f, _ in citizen.ListFields()}


def set_fields(population: Any, agency: Any, pin: str, version: int, **fields: Any) -> Any:
    request = pop_pb.UpdateCitizenRequest(
        request_id=str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=pin, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        expected_version=version,
    )
    return population.UpdateCitizen(request, metadata=agency.metadata()).citizen


def annul(civil: Any, agency: Any, pin: str, request_id: str | None = None) -> Any:
    request = civil_pb.AnnulDeathRegistrationRequest(
        request_id=request_id or str(uuid.uuid4()),
        pin=pin,
        reason="registered in error",
        decision_reference="QĐ 1/2026",
    )
    return civil.AnnulDeathRegistration(request, metadata=agency.metadata())


def test_agencies_registered_to_read_nothing_learn_nothing_else_on_any_path(
    civil, cards, identity, population, agency, make_agency
):
    """Sweep every RPC answering with a Citizen, and its replay after others changed the record."""
    justice = make_agency(scopes=("birth:register", "death:register"), fields=())
    police = make_agency(scopes=("card:issue",), fields=())
    clerk = make_agency(scopes=("citizen:update",), fields=())
    reader = make_agency(scopes=("citizen:read",), fields=())
    full = agency  # registered to read everything: it fills the record in

    mother = person(civil, full)
    birth = birth_request(
        date_of_birth=date(2001, 2, 3),
        mother_pin=mother.pin,
        registration_number=f"T-{uuid.uuid4().hex[:12]}",
    )
    born = civil.RegisterBirth(birth, metadata=justice.metadata())
    child = born.citizen
    # A civil-status system gets back the child it registered, and nothing it did not send.
    assert shown(child) == ALWAYS | BIRTH_SUPPLIED
    assert (child.full_name, child.mother_pin) == (birth.full_name, mother.pin)
    assert (child.status, child.version) == (citizen_pb2.CITIZEN_STATUS_ALIVE, 1)

    # Another agency fills in what these agencies may not read.
    first_id = legacy(9)
    link(cards, full, child.pin, first_id)
    now = set_fields(
        population,
        full,
        child.pin,
        1,  # a link does not change the record's version
        current_address=SECRET_ADDRESS,
        religion="Không",
        marital_status=citizen_pb2.MARITAL_STATUS_SINGLE,
    )
    assert now.current_address == SECRET_ADDRESS

    # The birth's replay: the record as registered, not as it is now.
    again = civil.RegisterBirth(birth, metadata=justice.metadata())
    assert again.replayed is True
    assert again.citizen == child

    # LinkLegacyId (police): the number it linked, not the citizen's other old numbers.
    second_id = legacy(12)
    link_request_id = str(uuid.uuid4())
    linked = link(cards, police, child.pin, second_id, request_id=link_request_id)
    assert shown(linked.citizen) == ALWAYS | {"legacy_ids"}
    assert list(linked.citizen.legacy_ids) == [second_id]
    # An agency registered to read them sees every linked number, each once.
    third_id = legacy(9)
    by_full = link(cards, full, child.pin, third_id)
    assert sorted(by_full.citizen.legacy_ids) == sorted([first_id, second_id, third_id])

    # UpdateCitizen (a clerk): the fields it set, not the address set by the other agency.
    update_id = str(uuid.uuid4())
    request = pop_pb.UpdateCitizenRequest(
        request_id=update_id,
        citizen=citizen_pb2.Citizen(pin=child.pin, hometown="Xã Mới, Nam Định"),
        update_mask=field_mask_pb2.FieldMask(paths=["hometown"]),
        expected_version=linked.citizen.version,
    )
    updated = population.UpdateCitizen(request, metadata=clerk.metadata())
    assert shown(updated.citizen) == ALWAYS | {"hometown"}
    assert updated.citizen.hometown == "Xã Mới, Nam Định"

    # Its ABORTED answer hands out the current version, nothing else of the record.
    stale = pop_pb.UpdateCitizenRequest(
        request_id=str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=child.pin, hometown="x"),
        update_mask=field_mask_pb2.FieldMask(paths=["hometown"]),
        expected_version=1,
    )
    err = call_error(population.UpdateCitizen, stale, metadata=clerk.metadata())
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "VERSION_MISMATCH")
    assert err.metadata == {"version": str(updated.citizen.version)}
    for secret in (SECRET_ADDRESS, child.full_name, "2001-02-03", first_id):
        assert secret not in err.message

    # GetCitizen (a reader registered for nothing): the PIN it asked about.
    got = identity.GetCitizen(id_pb.GetCitizenRequest(pin=child.pin), metadata=reader.metadata())
    assert shown(got.citizen) == {"pin"}

    # RegisterDeath (justice): what it sent (the date of death), pin, status, version.
    death = death_request(child.pin, date_of_death=date(2024, 5, 6))
    died = civil.RegisterDeath(death, metadata=justice.metadata())
    assert shown(died.citizen) == ALWAYS | {"date_of_death"}
    assert died.citizen.status == citizen_pb2.CITIZEN_STATUS_DECEASED

    # AnnulDeathRegistration (justice): pin, status, version.
    annul_id = str(uuid.uuid4())
    annulled = annul(civil, justice, child.pin, annul_id)
    assert shown(annulled.citizen) == ALWAYS
    assert annulled.citizen.status == citizen_pb2.CITIZEN_STATUS_ALIVE

    # The record moves on: a new death, a new address.
    civil.RegisterDeath(
        death_request(child.pin, date_of_death=date(2025, 1, 1)), metadata=full.metadata()
    )
    latest = identity.GetCitizen(id_pb.GetCitizenRequest(pin=child.pin), metadata=full.metadata())
    set_fields(population, full, child.pin, latest.citizen.version, current_address="Nơi ở mới")

    # Every replay answers as its original call did: same fields, same values, same version.
    replays = {
        "RegisterBirth": (civil.RegisterBirth(birth, metadata=justice.metadata()), born),
        "LinkLegacyId": (
            link(cards, police, child.pin, second_id, request_id=link_request_id),
            linked,
        ),
        "UpdateCitizen": (population.UpdateCitizen(request, metadata=clerk.metadata()), updated),
        "RegisterDeath": (civil.RegisterDeath(death, metadata=justice.metadata()), died),
        "AnnulDeathRegistration": (annul(civil, justice, child.pin, annul_id), annulled),
    }
    for name, (replay, original) in replays.items():
        assert replay.replayed is True, name
        assert replay.citizen == original.citizen, name


def test_registered_read_fields_are_added_to_what_the_request_supplied(civil, agency, make_agency):
    names_only = make_agency(scopes=("death:register",), fields=("full_name", "religion"))
    citizen = person(civil, agency)
    died = civil.RegisterDeath(death_request(citizen.pin), metadata=names_only.metadata())
    assert shown(died.citizen) == ALWAYS | {"date_of_death", "full_name"}  # religion is ""
    assert died.citizen.full_name == citizen.full_name


def test_a_replay_is_cut_down_by_the_registration_of_the_day(
    civil, population, agency, make_agency, db
):
    """An agency whose read fields were withdrawn no longer gets them back from a replay."""
    citizen = person(civil, agency)
    clerk = make_agency(scopes=("citizen:update",), fields=("full_name",))
    request = pop_pb.UpdateCitizenRequest(
        request_id=str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=citizen.pin, religion="Phật giáo"),
        update_mask=field_mask_pb2.FieldMask(paths=["religion"]),
        expected_version=citizen.version,
    )
    first = population.UpdateCitizen(request, metadata=clerk.metadata())
    assert shown(first.citizen) == ALWAYS | {"religion", "full_name"}
    db.execute("UPDATE agencies SET fields = '{}' WHERE id = $1", clerk.id)
    deadline = time.monotonic() + 10
    while True:
        again = population.UpdateCitizen(request, metadata=clerk.metadata())
        if "full_name" not in shown(again.citizen) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.replayed is True
    assert shown(again.citizen) == ALWAYS | {"religion"}
    assert again.citizen.version == first.citizen.version


def test_the_kept_birth_answer_is_the_record_as_stored(civil, identity, agency):
    """A birth's answer is rendered before its single insert: it must be the stored record."""
    mother = person(civil, agency)
    request = birth_request(mother_pin=mother.pin, registration_number=uuid.uuid4().hex[:10])
    born = civil.RegisterBirth(request, metadata=agency.metadata()).citizen
    stored = identity.GetCitizen(id_pb.GetCitizenRequest(pin=born.pin), metadata=agency.metadata())
    assert born == stored.citizen
    assert born.HasField("create_time") and born.create_time == born.update_time
