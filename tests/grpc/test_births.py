"""RegisterBirth through a real channel: PIN issuance, validation, idempotency.

Tests share one database. Tests that count or fill a bucket use a (province, sex, year) bucket
no other test uses; rows written by a test are found by a registration_number unique to it.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from datetime import timedelta
from typing import Any

import grpc
import pytest

from registry.runtime import clock
from registry.v1 import citizen_pb2
from tests.grpc.births import (
    FEMALE,
    MALE,
    assert_pin_for,
    register,
    rows_with_number,
    snapshot,
    unique_number,
)
from tests.helpers import birth_request, call_error, date, death_request

# -- success ------------------------------------------------------------------------------------


def test_birth_issues_a_structured_pin_and_stores_the_citizen(civil, agency, db):
    today = clock.today()
    number = unique_number()
    name = unicodedata.normalize("NFD", "  nguyễn   VĂN  an ")
    assert not unicodedata.is_normalized("NFC", name)
    response = civil.RegisterBirth(
        birth_request(
            full_name=name,
            sex=FEMALE,
            date_of_birth=date(today.year, today.month, 1),
            registration_province_code="001",
            nationality="vn",
            registration_number=number,
        ),
        metadata=agency.metadata(),
    )
    citizen = response.citizen
    assert response.replayed is False
    assert_pin_for(citizen.pin, "001", FEMALE, today.year)
    if 2000 <= today.year <= 2099:
        assert citizen.pin[3] == "3"
    assert citizen.registration_province_code == "001"
    assert citizen.status == citizen_pb2.CITIZEN_STATUS_ALIVE
    assert citizen.version == 1
    assert citizen.HasField("create_time")
    assert abs(citizen.create_time.ToSeconds() - time.time()) < 300
    expected_name = unicodedata.normalize("NFC", "nguyễn VĂN an")
    assert citizen.full_name == expected_name
    assert citizen.sex == FEMALE
    assert citizen.nationality == "VN"
    assert (
        citizen.date_of_birth.year,
        citizen.date_of_birth.month,
        citizen.date_of_birth.day,
    ) == (today.year, today.month, 1)
    assert not citizen.HasField("date_of_death")
    assert citizen.father_pin == "" and citizen.mother_pin == ""

    rows = db.fetch("SELECT * FROM citizens WHERE pin = $1", citizen.pin)
    assert len(rows) == 1
    row = rows[0]
    assert row["full_name"] == expected_name
    assert unicodedata.is_normalized("NFC", row["full_name"])
    assert (row["birth_year"], row["birth_month"], row["birth_day"]) == (
        today.year,
        today.month,
        1,
    )
    assert row["sex"] == FEMALE
    assert row["status"] == 1
    assert row["version"] == 1
    assert row["registration_province_code"] == "001"
    assert row["nationality"] == "VN"
    assert row["birth_registration_number"] == number
    assert row["birth_registered_on"] == today  # registered_on not given: today
    assert row["created_by"] == agency.id


def test_male_born_in_1950_gets_g_0(civil, agency):
    citizen = register(civil, agency, sex=MALE, date_of_birth=date(1950, 3, 7))
    assert_pin_for(citizen.pin, "001", MALE, 1950)
    assert citizen.pin[3:6] == "050"


def test_registered_on_is_stored(civil, agency, db):
    today = clock.today()
    day = today - timedelta(days=3)
    citizen = register(
        civil,
        agency,
        date_of_birth=date(day.year, day.month, day.day),
        registered_on=date(day.year, day.month, day.day),
    )
    assert db.fetchval("SELECT birth_registered_on FROM citizens WHERE pin = $1", citizen.pin) == (
        day
    )


# -- validation: INVALID_ARGUMENT naming the fields, nothing written ------------------------


def _future(days: int = 1) -> Any:
    d = clock.today() + timedelta(days=days)
    return date(d.year, d.month, d.day)


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        pytest.param({"full_name": "   "}, {"full_name"}, id="name-blank"),
        pytest.param({"full_name": "Nguyễn Văn 2"}, {"full_name"}, id="name-digit"),
        pytest.param({"full_name": "Nguyễn\x01Văn"}, {"full_name"}, id="name-control"),
        pytest.param({"sex": citizen_pb2.SEX_UNSPECIFIED}, {"sex"}, id="sex-unspecified"),
        pytest.param({"sex": 7}, {"sex"}, id="sex-7"),
        pytest.param({"date_of_birth": None}, {"date_of_birth"}, id="dob-missing"),
        pytest.param({"date_of_birth": date(2020, 13, 1)}, {"date_of_birth.month"}, id="dob-m13"),
        pytest.param({"date_of_birth": date(2021, 2, 30)}, {"date_of_birth.day"}, id="dob-30feb"),
        pytest.param({"date_of_birth": "future"}, {"date_of_birth"}, id="dob-future"),
        pytest.param({"date_of_birth": date(1899, 7, 1)}, {"date_of_birth.year"}, id="dob-1899"),
        pytest.param({"place_of_birth": ""}, {"place_of_birth"}, id="place-empty"),
        pytest.param(
            {"registration_province_code": "1"}, {"registration_province_code"}, id="prov-1"
        ),
        pytest.param(
            {"registration_province_code": "abc"}, {"registration_province_code"}, id="prov-abc"
        ),
        pytest.param(
            {"registration_province_code": "999"}, {"registration_province_code"}, id="prov-999"
        ),
        pytest.param({"hometown": ""}, {"hometown"}, id="hometown"),
        pytest.param({"ethnicity": " "}, {"ethnicity"}, id="ethnicity"),
        pytest.param({"nationality": "Vietnam"}, {"nationality"}, id="nationality"),
        pytest.param({"father_pin": "00109000012"}, {"father_pin"}, id="father-11"),
        pytest.param({"mother_pin": "٠٠١١٩٠٠٠٠٤٥٦"}, {"mother_pin"}, id="mother-arabic"),
        pytest.param({"registration_authority": ""}, {"registration_authority"}, id="authority"),
        pytest.param({"registration_number": ""}, {"registration_number"}, id="number"),
        pytest.param({"registered_on": "future"}, {"registered_on"}, id="registered-future"),
        pytest.param(
            {"date_of_birth": date(2020, 5, 5), "registered_on": date(2020, 5, 4)},
            {"registered_on"},
            id="registered-before-birth",
        ),
        pytest.param({"registered_on": date(2020, 5, 0)}, {"registered_on"}, id="registered-part"),
        pytest.param({"request_id": ""}, {"request_id"}, id="request-id-missing"),
        pytest.param({"request_id": "a b"}, {"request_id"}, id="request-id-space"),
        pytest.param({"request_id": "r" * 129}, {"request_id"}, id="request-id-129"),
    ],
)
def test_invalid_birth_is_refused_naming_the_field_and_writes_nothing(
    civil, agency, db, overrides, fields
):
    overrides = dict(overrides)
    for key, value in list(overrides.items()):
        if value == "future":
            overrides[key] = _future()
    request = birth_request(**{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("date_of_birth", "") is None:
        request.ClearField("date_of_birth")
    before = snapshot(db)
    err = call_error(civil.RegisterBirth, request, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(err.bad_fields) == fields
    assert snapshot(db) == before


def test_many_bad_fields_are_named_in_one_error_and_nothing_is_written(civil, agency, db):
    request = birth_request(
        full_name="",
        sex=0,
        date_of_birth=date(2021, 2, 30),
        place_of_birth=" ",
        registration_province_code="abc",
        hometown="",
        ethnicity="",
        nationality="Vietnam",
        father_pin="123",
        mother_pin="12345678901x",
        registration_authority="",
        registration_number="",
        registered_on=_future(),
    )
    before = snapshot(db)
    err = call_error(civil.RegisterBirth, request, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(err.bad_fields) == {
        "full_name",
        "sex",
        "date_of_birth.day",
        "place_of_birth",
        "registration_province_code",
        "hometown",
        "ethnicity",
        "nationality",
        "father_pin",
        "mother_pin",
        "registration_authority",
        "registration_number",
        "registered_on",
    }
    assert snapshot(db) == before


def test_refused_request_id_stays_free_for_the_corrected_request(civil, agency, db):
    request = birth_request(registration_number="", full_name="Lê Thị Sửa")
    err = call_error(civil.RegisterBirth, request, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    request.registration_number = unique_number()
    response = civil.RegisterBirth(request, metadata=agency.metadata())
    assert response.replayed is False
    assert rows_with_number(db, request.registration_number) == 1


# -- idempotency ----------------------------------------------------------------------------


def test_same_request_again_replays_the_original(civil, agency, db):
    number = unique_number()
    request = birth_request(full_name="Phạm Minh Lặp", registration_number=number)
    first = civil.RegisterBirth(request, metadata=agency.metadata())
    assert first.replayed is False
    before = snapshot(db)
    again = civil.RegisterBirth(request, metadata=agency.metadata())
    assert again.replayed is True
    assert again.citizen.pin == first.citizen.pin
    assert again.citizen.version == first.citizen.version == 1
    assert again.citizen.create_time == first.citizen.create_time
    assert snapshot(db) == before
    assert rows_with_number(db, number) == 1


def test_same_request_with_nfd_name_is_a_replay(civil, agency, db):
    number = unique_number()
    nfc = unicodedata.normalize("NFC", "Trần Thị Ánh Tuyết")
    request = birth_request(full_name=nfc, sex=FEMALE, registration_number=number)
    first = civil.RegisterBirth(request, metadata=agency.metadata())
    retry = birth_request(
        request_id=request.request_id,
        full_name=unicodedata.normalize("NFD", " Trần  Thị Ánh Tuyết "),
        sex=FEMALE,
        registration_number=number,
        date_of_birth=request.date_of_birth,
    )
    assert retry.full_name != request.full_name
    again = civil.RegisterBirth(retry, metadata=agency.metadata())
    assert again.replayed is True
    assert again.citizen.pin == first.citizen.pin
    assert rows_with_number(db, number) == 1


def test_same_request_id_with_other_content_is_already_exists(civil, agency, db):
    number = unique_number()
    request = birth_request(full_name="Hoàng Văn Một", registration_number=number)
    first = civil.RegisterBirth(request, metadata=agency.metadata())
    other = birth_request(
        request_id=request.request_id, full_name="Hoàng Văn Hai", registration_number=number
    )
    before = snapshot(db)
    err = call_error(civil.RegisterBirth, other, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.ALREADY_EXISTS
    assert err.reason == "REQUEST_ID_REUSED"
    assert snapshot(db) == before
    stored = db.fetchval("SELECT full_name FROM citizens WHERE pin = $1", first.citizen.pin)
    assert stored == "Hoàng Văn Một"


def test_request_ids_are_per_agency(civil, agency, make_agency, db, server):
    number = unique_number()
    request = birth_request(full_name="Đỗ Văn Khóa", registration_number=number)
    first = civil.RegisterBirth(request, metadata=agency.metadata())
    other_agency = make_agency()
    # Make sure the server knows the new agency before its first call (a key registered less
    # than a second after the last directory refresh can otherwise be refused as unknown).
    server.call(server.app.directory.reload())
    second = civil.RegisterBirth(request, metadata=other_agency.metadata())
    assert second.replayed is False
    assert second.citizen.pin != first.citizen.pin
    assert rows_with_number(db, number) == 2
    creators = {
        r["created_by"]
        for r in db.fetch(
            "SELECT created_by FROM citizens WHERE birth_registration_number = $1", number
        )
    }
    assert creators == {agency.id, other_agency.id}
    # Each agency replays its own registration.
    assert civil.RegisterBirth(request, metadata=other_agency.metadata()).citizen.pin == (
        second.citizen.pin
    )
    assert civil.RegisterBirth(request, metadata=agency.metadata()).citizen.pin == (
        first.citizen.pin
    )


def test_birth_request_id_reused_for_a_death_is_already_exists(civil, agency, db):
    request = birth_request(full_name="Vũ Văn Trùng")
    citizen = civil.RegisterBirth(request, metadata=agency.metadata()).citizen
    before = snapshot(db)
    err = call_error(
        civil.RegisterDeath,
        death_request(citizen.pin, request_id=request.request_id),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.ALREADY_EXISTS
    assert err.reason == "REQUEST_ID_REUSED"
    assert snapshot(db) == before
    row = db.fetch("SELECT status, version FROM citizens WHERE pin = $1", citizen.pin)[0]
    assert (row["status"], row["version"]) == (1, 1)


def test_identical_retry_after_midnight_is_a_replay(civil, agency, db, monkeypatch):
    # registered_on is not given (it defaults to the day of registration). The retry is
    # byte-identical, so it must get the original result, not ALREADY_EXISTS, even when it
    # arrives after midnight (e.g. retrying with backoff through a database outage).
    number = unique_number()
    request = birth_request(full_name="Kiều Văn Nửa Đêm", registration_number=number)
    first = civil.RegisterBirth(request, metadata=agency.metadata())
    tomorrow = clock.today() + timedelta(days=1)
    monkeypatch.setattr(clock, "today", lambda: tomorrow)
    again = civil.RegisterBirth(request, metadata=agency.metadata())
    assert again.replayed is True
    assert again.citizen.pin == first.citizen.pin
    assert rows_with_number(db, number) == 1


def test_retry_after_the_province_code_closed_is_a_replay(civil, agency, db, server):
    # The first call succeeded (the caller lost the answer); the operator then closed the code.
    # The retry must still return the PIN that was issued, not INVALID_ARGUMENT.
    code = "916"
    db.execute(
        "INSERT INTO pin_prefixes (code, name, kind, valid_from, valid_to) "
        "VALUES ($1, 'Closing test code', 'test', DATE '2016-01-01', NULL)",
        code,
    )
    server.call(server.app.prefixes.reload())
    request = birth_request(registration_province_code=code, registration_number=unique_number())
    first = civil.RegisterBirth(request, metadata=agency.metadata())
    assert first.citizen.pin.startswith(code)
    db.execute(
        "UPDATE pin_prefixes SET valid_to = $2 WHERE code = $1",
        code,
        clock.today() - timedelta(days=1),
    )
    server.call(server.app.prefixes.reload())
    # New registrations under the closed code are refused ...
    err = call_error(
        civil.RegisterBirth,
        birth_request(registration_province_code=code),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    # ... but the identical retry of the one that succeeded is answered from the record.
    again = civil.RegisterBirth(request, metadata=agency.metadata())
    assert again.replayed is True
    assert again.citizen.pin == first.citizen.pin


def test_concurrent_identical_requests_create_one_citizen(civil, agency, db):
    number = unique_number()
    request = birth_request(full_name="Bùi Thị Đồng Thời", sex=FEMALE, registration_number=number)
    threads = 8
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []
    metadata = [agency.metadata() for _ in range(threads)]

    def send(i: int) -> None:
        try:
            barrier.wait(10)
            results[i] = civil.RegisterBirth(request, metadata=metadata[i], timeout=30)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=send, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert errors == []
    assert all(r is not None for r in results)
    assert len({r.citizen.pin for r in results}) == 1
    assert sum(r.replayed for r in results) == threads - 1
    assert rows_with_number(db, number) == 1
    assert (
        db.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE agency_id = $1 AND request_id = $2",
            agency.id,
            request.request_id,
        )
        == 1
    )
