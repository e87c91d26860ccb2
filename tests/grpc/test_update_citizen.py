"""PopulationService.UpdateCitizen through the real channel: corrections, optimistic
concurrency, history, and PIN re-establishment (Circular 59/2021 art. 6)."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

from registry.v1 import card_pb2, citizen_pb2
from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import population_service_pb2 as pb
from registry.v1 import population_service_pb2_grpc as pb_grpc
from tests.grpc.cards import issue, legacy, person
from tests.helpers import call_error, date

MALE, FEMALE = citizen_pb2.SEX_MALE, citizen_pb2.SEX_FEMALE


@pytest.fixture(scope="module")
def population(channel):
    return pb_grpc.PopulationServiceStub(channel)


def update(population, agency, pin, version, *, request_id=None, **fields):
    request = pb.UpdateCitizenRequest(
        request_id=request_id or str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=pin, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        expected_version=version,
    )
    return population.UpdateCitizen(request, metadata=agency.metadata())


def test_an_update_sets_the_named_fields_bumps_the_version_and_keeps_history(
    population, civil, agency, db
):
    citizen = person(civil, agency)
    answer = update(
        population,
        agency,
        citizen.pin,
        citizen.version,
        current_address="12 Phố Huế, Hai Bà Trưng, Hà Nội",
        marital_status=citizen_pb2.MARITAL_STATUS_MARRIED,
    )
    after = answer.citizen
    assert (after.pin, after.version, answer.replayed) == (citizen.pin, citizen.version + 1, False)
    assert after.current_address == "12 Phố Huế, Hai Bà Trưng, Hà Nội"
    assert after.marital_status == citizen_pb2.MARITAL_STATUS_MARRIED
    assert (after.full_name, after.hometown) == (citizen.full_name, citizen.hometown)
    history = db.fetch(
        "SELECT version, fields, changed_by, record->>'current_address' AS address "
        "FROM citizen_history WHERE pin = $1",
        citizen.pin,
    )
    assert [(h["version"], list(h["fields"]), h["changed_by"]) for h in history] == [
        (citizen.version, ["current_address", "marital_status"], agency.id)
    ]
    assert history[0]["address"] == citizen.current_address
    events = db.fetch("SELECT type FROM change_events WHERE pin = $1 ORDER BY id", citizen.pin)
    assert [e["type"] for e in events] == [1, 3]  # BORN, UPDATED


def test_a_stale_version_is_aborted_and_changes_nothing(population, civil, agency, db):
    citizen = person(civil, agency)
    update(population, agency, citizen.pin, citizen.version, religion="Phật giáo")
    err = call_error(update, population, agency, citizen.pin, citizen.version, religion="Không")
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "VERSION_MISMATCH")
    assert err.metadata["version"] == str(citizen.version + 1)
    assert db.fetchval("SELECT religion FROM citizens WHERE pin = $1", citizen.pin) == "Phật giáo"


def test_a_retry_replays_and_a_reused_request_id_is_refused(population, civil, agency):
    citizen = person(civil, agency)
    rid = str(uuid.uuid4())
    first = update(population, agency, citizen.pin, citizen.version, request_id=rid, religion="A")
    again = update(population, agency, citizen.pin, citizen.version, request_id=rid, religion="A")
    assert again.replayed and again.citizen.version == first.citizen.version
    err = call_error(
        update, population, agency, citizen.pin, citizen.version, request_id=rid, religion="B"
    )
    assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


@pytest.mark.parametrize(
    ("paths", "fields", "version", "bad"),
    [
        ([], {}, 1, ["update_mask"]),
        (["pin"], {}, 1, ["update_mask.paths[0]"]),
        (["version", "religion"], {"religion": "x"}, 1, ["update_mask.paths[0]"]),
        (["no_such_field"], {}, 1, ["update_mask.paths[0]"]),
        # A field name with a trailing NUL must not pass for the field (the protobuf runtime's
        # own name map matches it as a C string; found by the fuzz test).
        (["full_name\x00"], {"full_name": "Lê Văn Tám"}, 1, ["update_mask.paths[0]"]),
        (["religion", "sex\x00x"], {"religion": "x"}, 1, ["update_mask.paths[1]"]),
        (["legacy_ids"], {}, 1, ["update_mask.paths[0]"]),
        (["date_of_death"], {}, 1, ["update_mask.paths[0]"]),
        (["religion"], {"religion": "x"}, 0, ["expected_version"]),
        (["sex"], {"sex": 9}, 1, ["citizen.sex"]),
        # Civil status changes only through CivilRegistrationService (issue 13 item 6).
        (["status"], {"status": citizen_pb2.CITIZEN_STATUS_DECEASED}, 1, ["update_mask.paths[0]"]),
        (["status"], {"status": citizen_pb2.CITIZEN_STATUS_ALIVE}, 1, ["update_mask.paths[0]"]),
        (["status"], {"status": citizen_pb2.CITIZEN_STATUS_MISSING}, 1, ["update_mask.paths[0]"]),
        (["religion", "date_of_death"], {"religion": "x", "date_of_death": date(2020, 1, 1)}, 1,
         ["update_mask.paths[1]"]),
        (["full_name"], {"full_name": ""}, 1, ["citizen.full_name"]),
        (["father_pin"], {"father_pin": "12ab"}, 1, ["citizen.father_pin"]),
        (["date_of_birth"], {"date_of_birth": date(2020, 2, 30)}, 1, ["citizen.date_of_birth.day"]),
        (["registration_province_code"], {"registration_province_code": "003"}, 1,
         ["citizen.registration_province_code"]),
    ],
)  # fmt: skip
def test_invalid_updates_name_every_bad_field_and_write_nothing(
    population, civil, agency, db, paths, fields, version, bad
):
    citizen = person(civil, agency)
    request = pb.UpdateCitizenRequest(
        request_id=str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=citizen.pin, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        expected_version=version,
    )
    err = call_error(population.UpdateCitizen, request, metadata=agency.metadata())
    assert (err.code, err.bad_fields) == (grpc.StatusCode.INVALID_ARGUMENT, bad)
    assert db.fetchval("SELECT version FROM citizens WHERE pin = $1", citizen.pin) == 1


def test_unknown_pin_and_unknown_related_citizen(population, civil, agency):
    err = call_error(update, population, agency, "001099999997", 1, religion="x")
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "CITIZEN_NOT_FOUND")
    citizen = person(civil, agency)
    err = call_error(update, population, agency, citizen.pin, 1, spouse_pin="001099999997")
    assert (err.code, err.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RELATED_CITIZEN_NOT_FOUND",
    )


def test_changing_the_day_of_birth_within_the_year_keeps_the_pin(population, civil, agency):
    citizen = person(civil, agency, dob=(1985, 3, 4))
    answer = update(population, agency, citizen.pin, 1, date_of_birth=date(1985, 11, 30))
    assert answer.citizen.pin == citizen.pin
    assert (answer.citizen.date_of_birth.month, answer.citizen.date_of_birth.day) == (11, 30)


def test_correcting_the_sex_re_establishes_the_pin(population, civil, cards, identity, agency, db):
    citizen = person(civil, agency, dob=(1985, 3, 4), sex=MALE)
    card = issue(cards, agency, citizen.pin).card
    old_number = legacy(9)
    cards.LinkLegacyId(
        card_pb.LinkLegacyIdRequest(
            request_id=str(uuid.uuid4()), pin=citizen.pin, legacy_id=old_number
        ),
        metadata=agency.metadata(),
    )
    version = db.fetchval("SELECT version FROM citizens WHERE pin = $1", citizen.pin)
    answer = update(population, agency, citizen.pin, version, sex=FEMALE)
    new = answer.citizen
    # PPP G YY: same province and year, G 0 (male, 1900s) -> 1 (female, 1900s).
    assert new.pin != citizen.pin
    assert (new.pin[:3], new.pin[3], new.pin[4:6]) == (citizen.pin[:3], "1", "85")
    assert (new.sex, new.full_name, new.status) == (FEMALE, citizen.full_name, citizen.status)
    old = identity.GetCitizen(id_pb.GetCitizenRequest(pin=citizen.pin), metadata=agency.metadata())
    assert old.pin_replaced and old.citizen.pin == new.pin
    row = db.fetch("SELECT status, replaced_by_pin FROM citizens WHERE pin = $1", citizen.pin)[0]
    assert (row["status"], row["replaced_by_pin"]) == (4, new.pin)  # PIN_CANCELLED
    listed = cards.ListCards(card_pb.ListCardsRequest(pin=citizen.pin), metadata=agency.metadata())
    assert [(c.serial, c.state) for c in listed.cards] == [
        (card.serial, card_pb2.CARD_STATE_SUPERSEDED)
    ]
    resolved = identity.ResolveLegacyId(
        id_pb.ResolveLegacyIdRequest(legacy_id=old_number), metadata=agency.metadata()
    )
    assert resolved.pin == new.pin
    history = db.fetch(
        "SELECT version, fields, replaced_by_pin FROM citizen_history WHERE pin = $1",
        citizen.pin,
    )
    assert [(list(h["fields"]), h["replaced_by_pin"]) for h in history] == [(["sex"], new.pin)]
    # In the order they were written (without ORDER BY the heap decides: seen once, a row
    # written later came back first from a page VACUUM had freed).
    events = db.fetch(
        "SELECT type, pin, new_pin FROM change_events WHERE pin = ANY($1) AND type IN (1, 4) "
        "ORDER BY id",
        [citizen.pin, new.pin],
    )
    assert [(e["type"], e["pin"], e["new_pin"]) for e in events] == [
        (1, citizen.pin, None),
        (4, citizen.pin, new.pin),
    ], "a re-establishment is PIN_REPLACED, not a new birth"
    # The cancelled PIN can no longer be updated.
    err = call_error(update, population, agency, citizen.pin, version + 1, religion="x")
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PIN_CANCELLED")
    audited = db.fetchval(
        "SELECT pins FROM audit_log WHERE agency_id = $1 AND method LIKE '%UpdateCitizen' "
        "AND outcome = 'OK' ORDER BY seq DESC LIMIT 1",
        agency.id,
    )
    assert set(audited) == {citizen.pin, new.pin}


def test_correcting_the_birth_year_re_establishes_the_pin(population, civil, agency):
    citizen = person(civil, agency, dob=(1985, 3, 4), sex=MALE)
    new = update(population, agency, citizen.pin, 1, date_of_birth=date(1986, 3, 4)).citizen
    assert new.pin[4:6] == "86" and new.pin != citizen.pin


def test_updates_need_the_citizen_update_scope(population, civil, agency, make_agency):
    citizen = person(civil, agency)
    reader = make_agency(scopes=("citizen:read",))
    err = call_error(update, population, reader, citizen.pin, 1, religion="x")
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")


def test_correcting_the_registration_province_re_establishes_the_pin(population, civil, agency, db):
    citizen = person(civil, agency, dob=(1985, 3, 4), sex=MALE)  # registered in 001 (Hà Nội)
    assert citizen.pin[:3] == "001"
    new = update(population, agency, citizen.pin, 1, registration_province_code="079").citizen
    # PPP G YY: the province part follows the corrected registration, the rest is kept.
    assert new.pin != citizen.pin
    assert (new.pin[:3], new.pin[3:6]) == ("079", citizen.pin[3:6])
    assert new.registration_province_code == "079"
    row = db.fetch("SELECT status, replaced_by_pin FROM citizens WHERE pin = $1", citizen.pin)[0]
    assert (row["status"], row["replaced_by_pin"]) == (4, new.pin)  # PIN_CANCELLED
