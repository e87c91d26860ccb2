"""PopulationService.ImportCitizens through the real channel: the existing population."""

from __future__ import annotations

import unicodedata

import grpc
import pytest

from registry.rules import pin as pins
from registry.rules.pin import PrefixTable
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import population_service_pb2_grpc as pb_grpc
from tests.grpc.imports import name, record, unused_pin
from tests.helpers import birth_request, call_error, date


@pytest.fixture(scope="module")
def population(channel):
    return pb_grpc.PopulationServiceStub(channel)


def run_import(population, agency, requests):
    return population.ImportCitizens(iter(requests), metadata=agency.metadata())


def test_a_mixed_file_is_imported_counted_and_rejected_per_record(
    population, identity, civil, agency, db, make_agency
):
    full_reader = make_agency(scopes=("citizen:read",), fields=("pin_mismatch", "date_of_birth"))
    kept = unused_pin()
    mismatched = unused_pin(g=0)  # G=0 says male; she is female
    existing = civil.RegisterBirth(
        birth_request(full_name="Lê Văn Tám", date_of_birth=date(2001, 2, 3)),
        metadata=agency.metadata(),
    ).citizen
    requests = [
        record("with-pin", pin=kept, full_name=name("Hoa")),
        record("mismatch", pin=mismatched, full_name=name("Lan")),
        record("no-pin", full_name=name("Mai"), date_of_birth=date(1931)),
        record("bad-sex", sex=7),
        record("bad-province", registration_province_code="003"),
        record("bad-date", date_of_birth=date(1962, 2, 30)),
        # The same person as a registered birth, spelled in NFD and upper case.
        record(
            "same-person",
            full_name=unicodedata.normalize("NFD", "LÊ VĂN TÁM"),
            date_of_birth=date(2001, 2, 3),
            sex=existing.sex,
            registration_province_code=existing.registration_province_code,
        ),
        record("with-pin", full_name="Repeated source id"),
    ]
    answer = run_import(population, agency, requests)
    assert (answer.received, answer.created, answer.assigned_pins) == (8, 3, 1)
    assert (answer.duplicates, answer.mismatched_pins, answer.rejected) == (2, 1, 3)
    rejected = {r.source_id: r.reason for r in answer.rejects}
    assert set(rejected) == {"bad-sex", "bad-province", "bad-date"}
    assert "sex" in rejected["bad-sex"] and "003" in rejected["bad-province"]
    assert "date_of_birth.day" in rejected["bad-date"]

    def stored(pin):
        return db.fetch(
            "SELECT pin, pin_mismatch, birth_year, birth_month, birth_day FROM citizens "
            "WHERE pin = $1",
            pin,
        )[0]

    assert (stored(kept)["pin"], stored(kept)["pin_mismatch"]) == (kept, False)
    assert (stored(mismatched)["pin"], stored(mismatched)["pin_mismatch"]) == (mismatched, True)
    assigned = db.fetchval(
        "SELECT pin FROM import_sources WHERE agency_id = $1 AND source_id = 'no-pin'", agency.id
    )
    mai = stored(assigned)
    # Year-only precision kept; the assigned PIN fits her: Nam Định, female 1900s, 31.
    assert (mai["birth_year"], mai["birth_month"], mai["birth_day"]) == (1931, None, None)
    assert assigned[:6] == "036131" and not mai["pin_mismatch"]
    assert (
        pins.check_structure(
            assigned, PrefixTable.load_default(), sex=pins.Sex.FEMALE, birth_year=1931
        )
        == []
    )
    # Through the API too, for an agency entitled to the fields.
    reader = identity.GetCitizen(
        id_pb.GetCitizenRequest(pin=mismatched), metadata=full_reader.metadata()
    ).citizen
    assert reader.pin_mismatch and reader.date_of_birth.year == 1962
    # Imports are records, not births: no BORN events; the batch is in the audit log.
    assert (
        db.fetchval(
            "SELECT count(*) FROM change_events WHERE pin = ANY($1)", [kept, mismatched, assigned]
        )
        == 0
    )
    audited = db.fetchval(
        "SELECT pins FROM audit_log WHERE agency_id = $1 AND method LIKE '%ImportCitizens' "
        "AND outcome = 'OK' ORDER BY seq DESC LIMIT 1",
        agency.id,
    )
    assert set(audited) == {kept, mismatched, assigned}


def test_re_running_the_same_import_creates_nothing(population, make_agency, db):
    importer = make_agency(scopes=("population:import",))
    requests = [record(f"row-{i}", full_name=name("Người")) for i in range(50)]
    first = run_import(population, importer, requests)
    assert (first.created, first.duplicates) == (50, 0)
    before = db.fetchval("SELECT count(*) FROM citizens")
    again = run_import(population, importer, requests)
    assert (again.received, again.created, again.duplicates, again.rejected) == (50, 0, 50, 0)
    assert db.fetchval("SELECT count(*) FROM citizens") == before


def test_a_record_already_holding_its_pin_is_a_duplicate(population, civil, agency):
    born = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    answer = run_import(population, agency, [record(pin=born.pin, full_name="Someone Else")])
    assert (answer.created, answer.duplicates) == (0, 1)


def test_parents_must_be_in_the_register_or_earlier_in_the_file(population, agency):
    mother = unused_pin()
    child = record(
        full_name=name("Con"),
        date_of_birth=date(1990, 1, 1),
        mother_pin=mother,
    )
    orphan = record("orphan", full_name=name("Con"), father_pin=unused_pin(g=0))
    answer = run_import(
        population,
        agency,
        [record(pin=mother, full_name=name("Mẹ")), child, orphan],
    )
    assert (answer.created, answer.rejected) == (2, 1), answer.rejects
    assert answer.rejects[0].source_id == "orphan"
    assert "father_pin" in answer.rejects[0].reason


def test_a_source_id_holding_nul_is_rejected_and_reported_as_every_import_reports_it(
    population, make_agency
):
    importer = make_agency(scopes=("population:import",))
    answer = run_import(population, importer, [record("a\x00b", full_name=name("Nul"))])
    assert (answer.received, answer.rejected) == (1, 1)
    assert answer.rejects[0].source_id == "a\ufffdb"  # as ImportCitizenBatches stores it
    assert answer.rejects[0].reason.startswith("source_id: "), answer.rejects[0].reason


def test_importing_needs_the_population_import_scope(population, make_agency):
    reader = make_agency(scopes=("citizen:read",))
    err = call_error(run_import, population, reader, [record()])
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
