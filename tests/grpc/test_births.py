"""RegisterBirth through a real channel: PIN issuance, validation, idempotency, parents, buckets.

Tests share one database. Tests that count or fill a bucket use a (province, sex, year) bucket
no other test uses; rows written by a test are found by a registration_number unique to it.
"""

from __future__ import annotations

import itertools
import threading
import time
import unicodedata
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from registry.db.pins import RANGE
from registry.rules import pin as pins
from registry.runtime import clock
from registry.v1 import citizen_pb2
from tests.conftest import SESSION_PIN_SECRET
from tests.helpers import birth_request, call_error, date, death_request

TABLE = pins.PrefixTable.load_default()
MALE = citizen_pb2.SEX_MALE
FEMALE = citizen_pb2.SEX_FEMALE
# No bucket can exist under an unknown province code (pin_buckets references pin_prefixes), so
# a PIN with this prefix is well formed and certainly held by nobody.
NOBODY = "998085000001"
NOBODY_2 = "998188000002"


def expected_g(sex: int, year: int) -> int:
    """The century/sex digit by SPEC §2: 1900s 0/1, 2000s 2/3, 2100s 4/5, ..."""
    century_index = (year - 1900) // 100
    return 2 * century_index + (1 if sex == FEMALE else 0)


def assert_pin_for(pin: str, province: str, sex: int, year: int) -> None:
    assert len(pin) == 12, pin
    assert pin.isascii() and pin.isdigit(), pin
    assert pin[:3] == province
    assert pin[3] == str(expected_g(sex, year))
    assert pin[4:6] == f"{year % 100:02d}"
    model_sex = pins.Sex.FEMALE if sex == FEMALE else pins.Sex.MALE
    assert pins.check_structure(pin, TABLE, sex=model_sex, birth_year=year) == []


def unique_number() -> str:
    return f"T-{uuid.uuid4().hex[:16]}"


def rows_with_number(db: Any, number: str) -> int:
    return int(
        db.fetchval("SELECT count(*) FROM citizens WHERE birth_registration_number = $1", number)
    )


def bucket_row(db: Any, province: str, g: int, yy: int) -> Any:
    """The bucket's counter and its permutation key (derived as the test servers derive it)."""
    rows = db.fetch(
        "SELECT key, key_version, issued FROM pin_buckets "
        "WHERE province_code = $1 AND g = $2 AND yy = $3",
        province,
        g,
        yy,
    )
    if not rows:
        return None
    row = dict(rows[0])
    row["key"] = pins.bucket_key(bytes(row["key"]), row["key_version"], SESSION_PIN_SECRET)
    return row


def snapshot(db: Any) -> tuple[dict[str, int], int]:
    return db.counts(), db.issued()


def register(civil: Any, agency: Any, **overrides: Any) -> Any:
    return civil.RegisterBirth(birth_request(**overrides), metadata=agency.metadata()).citizen


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


# -- uniqueness and unpredictability --------------------------------------------------------


def test_many_births_in_one_bucket_get_distinct_non_sequential_pins(civil, agency, db):
    province, year = "038", 1937
    g, yy = expected_g(MALE, year), year % 100
    assert bucket_row(db, province, g, yy) is None, "bucket used by another test"
    count = 300
    metadata = agency.metadata()
    issued: list[str] = []
    for i in range(count):
        response = civil.RegisterBirth(
            birth_request(
                full_name="Lê Văn Thử",
                sex=MALE,
                date_of_birth=date(year, 1 + i % 12, 1 + i % 28),
                registration_province_code=province,
                registration_number=f"bulk-1937-{i}",
            ),
            metadata=metadata,
        )
        issued.append(response.citizen.pin)
    assert len(set(issued)) == count
    for p in issued:
        assert p[:6] == f"{province}{g}{yy:02d}"
        assert pins.check_structure(p, TABLE, sex=pins.Sex.MALE, birth_year=year) == []
    randoms = [int(p[6:]) for p in issued]
    consecutive = sum(1 for a, b in itertools.pairwise(randoms) if abs(b - a) == 1)
    assert consecutive < 5, f"{consecutive} consecutive issues differ by one"
    increasing = sum(1 for a, b in itertools.pairwise(randoms) if b > a)
    assert 0.3 * count < increasing < 0.7 * count, "issue order looks sorted"
    # The server reserves counter values ahead in ranges: at most one range is left over.
    assert count <= bucket_row(db, province, g, yy)["issued"] < count + RANGE
    assert (
        int(
            db.fetchval(
                "SELECT count(*) FROM citizens WHERE pin LIKE $1", f"{province}{g}{yy:02d}%"
            )
        )
        == count
    )


# -- parents --------------------------------------------------------------------------------


def test_child_is_linked_to_parents_registered_late(civil, agency, db):
    father = register(
        civil, agency, full_name="Ngô Văn Cha", sex=MALE, date_of_birth=date(1985, 4, 2)
    )
    mother = register(
        civil, agency, full_name="Đặng Thị Mẹ", sex=FEMALE, date_of_birth=date(1988, 9, 0)
    )
    assert_pin_for(father.pin, "001", MALE, 1985)
    assert_pin_for(mother.pin, "001", FEMALE, 1988)
    child = register(
        civil,
        agency,
        full_name="Ngô Thị Con",
        sex=FEMALE,
        father_pin=father.pin,
        mother_pin=mother.pin,
    )
    assert child.father_pin == father.pin
    assert child.mother_pin == mother.pin
    row = db.fetch("SELECT father_pin, mother_pin FROM citizens WHERE pin = $1", child.pin)[0]
    assert (row["father_pin"], row["mother_pin"]) == (father.pin, mother.pin)


def test_only_one_parent_may_be_given(civil, agency):
    mother = register(civil, agency, sex=FEMALE, date_of_birth=date(1990, 1, 1))
    child = register(civil, agency, mother_pin=mother.pin)
    assert child.mother_pin == mother.pin
    assert child.father_pin == ""


def test_unknown_father_is_failed_precondition_and_writes_nothing(civil, agency, db):
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth, birth_request(father_pin=NOBODY), metadata=agency.metadata()
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.preconditions == [("PARENT_NOT_FOUND", "father_pin")]
    assert snapshot(db) == before


def test_both_unknown_parents_are_named(civil, agency, db):
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth,
        birth_request(father_pin=NOBODY, mother_pin=NOBODY_2),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert sorted(err.preconditions) == [
        ("PARENT_NOT_FOUND", "father_pin"),
        ("PARENT_NOT_FOUND", "mother_pin"),
    ]
    assert snapshot(db) == before


def test_parent_born_after_the_child_is_refused(civil, agency, db):
    parent = register(civil, agency, sex=MALE, date_of_birth=date(2001, 5, 5))
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth,
        birth_request(date_of_birth=date(2000, 1, 1), father_pin=parent.pin),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.preconditions == [("PARENT_BORN_AFTER_CHILD", "father_pin")]
    assert snapshot(db) == before


def test_parent_born_the_same_day_as_the_child_is_refused(civil, agency, db):
    parent = register(civil, agency, sex=FEMALE, date_of_birth=date(2003, 3, 3))
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth,
        birth_request(date_of_birth=date(2003, 3, 3), mother_pin=parent.pin),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.preconditions == [("PARENT_BORN_AFTER_CHILD", "mother_pin")]
    assert snapshot(db) == before


def test_parent_with_a_cancelled_pin_is_refused(civil, agency, db):
    old = register(
        civil, agency, full_name="Trịnh Văn Cũ", sex=MALE, date_of_birth=date(1970, 1, 1)
    )
    new = register(
        civil, agency, full_name="Trịnh Văn Cũ", sex=MALE, date_of_birth=date(1971, 1, 1)
    )
    db.execute(
        "UPDATE citizens SET status = 4, replaced_by_pin = $2 WHERE pin = $1", old.pin, new.pin
    )
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth, birth_request(father_pin=old.pin), metadata=agency.metadata()
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.preconditions == [("PARENT_PIN_CANCELLED", "father_pin")]
    assert new.pin in err.message
    assert snapshot(db) == before
    # The replacement PIN works.
    assert register(civil, agency, father_pin=new.pin).father_pin == new.pin


# -- late registration ----------------------------------------------------------------------


@pytest.mark.parametrize(("sex", "g"), [(MALE, "0"), (FEMALE, "1")])
def test_late_registration_with_year_only(civil, agency, db, sex, g):
    citizen = register(civil, agency, sex=sex, date_of_birth=date(1950))
    assert citizen.pin[3] == g
    assert citizen.pin[4:6] == "50"
    assert pins.check_structure(citizen.pin, TABLE, birth_year=1950) == []
    assert (
        citizen.date_of_birth.year,
        citizen.date_of_birth.month,
        citizen.date_of_birth.day,
    ) == (1950, 0, 0)
    row = db.fetch(
        "SELECT birth_year, birth_month, birth_day FROM citizens WHERE pin = $1", citizen.pin
    )[0]
    assert (row["birth_year"], row["birth_month"], row["birth_day"]) == (1950, None, None)


# -- the province-code table ----------------------------------------------------------------


def test_closed_future_and_extended_province_codes(civil, agency, db, server):
    today = clock.today()
    closed, future, extended = "913", "914", "915"
    db.execute(
        "INSERT INTO pin_prefixes (code, name, kind, valid_from, valid_to) VALUES "
        "($1, 'Closed test code', 'test', DATE '2016-01-01', $4), "
        "($2, 'Future test code', 'test', $5, NULL), "
        "($3, 'Extended test code', 'abroad', DATE '2020-01-01', NULL)",
        closed,
        future,
        extended,
        today - timedelta(days=1),
        today + timedelta(days=1),
    )
    server.call(server.app.prefixes.reload())

    for code in (closed, future):
        before = snapshot(db)
        err = call_error(
            civil.RegisterBirth,
            birth_request(registration_province_code=code),
            metadata=agency.metadata(),
        )
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, code
        assert err.bad_fields == ["registration_province_code"], code
        assert snapshot(db) == before

    citizen = register(civil, agency, registration_province_code=extended, sex=FEMALE)
    assert citizen.pin.startswith(extended)
    assert citizen.registration_province_code == extended
    assert citizen.pin[3] == str(expected_g(FEMALE, today.year))
    assert citizen.pin[4:6] == f"{today.year % 100:02d}"


# -- full buckets and numbers already held --------------------------------------------------


def test_exhausted_bucket_is_resource_exhausted_at_once(civil, agency, db):
    province, year = "096", 1953
    g, yy = expected_g(FEMALE, year), year % 100
    assert (g, yy) == (1, 53)
    assert bucket_row(db, province, g, yy) is None, "bucket used by another test"
    fields = {
        "sex": FEMALE,
        "date_of_birth": date(year, 6, 6),
        "registration_province_code": province,
    }
    first = register(civil, agency, **fields)
    assert first.pin[:6] == "096153"
    for _ in range(RANGE - 1):  # the rest of the range the server reserved ahead
        register(civil, agency, **fields)
    db.execute(
        "UPDATE pin_buckets SET issued = 999999 WHERE province_code = $1 AND g = $2 AND yy = $3",
        province,
        g,
        yy,
    )
    key = bytes(bucket_row(db, province, g, yy)["key"])
    # Fewer values left than a range: the last one is still issued.
    last_request = birth_request(**fields)
    last = civil.RegisterBirth(last_request, metadata=agency.metadata()).citizen
    assert last.pin == pins.allocate(pins.Bucket(province, g, yy), key, 999_999)
    assert bucket_row(db, province, g, yy)["issued"] == 1_000_000
    # A retry of that birth, once the bucket is full, still gets its answer.
    retried = civil.RegisterBirth(last_request, metadata=agency.metadata())
    assert (retried.citizen.pin, retried.replayed) == (last.pin, True)

    request = birth_request(**fields)
    before = snapshot(db)
    started = time.monotonic()
    err = call_error(civil.RegisterBirth, request, metadata=agency.metadata(), timeout=10)
    elapsed = time.monotonic() - started
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == "PIN_BUCKET_EXHAUSTED"
    assert err.quota_subjects, "no QuotaFailure violation"
    assert any("096153" in s for s in err.quota_subjects), err.quota_subjects
    assert elapsed < 2.0
    assert snapshot(db) == before
    # Retrying the same request says the same, not ALREADY_EXISTS: nothing was recorded.
    again = call_error(civil.RegisterBirth, request, metadata=agency.metadata(), timeout=10)
    assert again.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert snapshot(db) == before


def test_number_already_held_by_an_imported_record_is_skipped(civil, agency, db):
    province, year = "092", 1961
    g, yy = expected_g(FEMALE, year), year % 100
    assert bucket_row(db, province, g, yy) is None, "bucket used by another test"
    fields = {
        "sex": FEMALE,
        "date_of_birth": date(year, 2, 2),
        "registration_province_code": province,
    }
    register(civil, agency, **fields)
    row = bucket_row(db, province, g, yy)
    key, issued = bytes(row["key"]), row["issued"]
    assert issued == RANGE  # counter 0 issued, 1..RANGE-1 reserved ahead by the server
    bucket = pins.Bucket(province, g, yy)
    # Records imported with the numbers the server holds in reserve and the next one.
    held = [pins.allocate(bucket, key, counter) for counter in range(1, RANGE + 1)]
    for number in held:
        db.execute(
            "INSERT INTO citizens (pin, full_name, birth_year, sex, registration_province_code, "
            "created_by) VALUES ($1, 'Lý Thị Nhập', $2, 2, $3, 'import-test')",
            number,
            year,
            province,
        )
    citizen = register(civil, agency, full_name="Lý Thị Mới", **fields)
    assert citizen.pin not in held
    assert citizen.pin == pins.allocate(bucket, key, RANGE + 1)
    assert pins.check_structure(citizen.pin, TABLE, sex=pins.Sex.FEMALE, birth_year=year) == []
    assert bucket_row(db, province, g, yy)["issued"] == 2 * RANGE
    for number in held:
        assert db.fetchval("SELECT full_name FROM citizens WHERE pin = $1", number) == "Lý Thị Nhập"
    assert db.fetchval("SELECT full_name FROM citizens WHERE pin = $1", citizen.pin) == "Lý Thị Mới"


def test_two_servers_births_into_one_bucket_never_share_a_number(server, dsn, db, agency):
    # Each server reserves counter values ahead in ranges from the same bucket row: the ranges
    # must never overlap, whatever the interleaving.
    from concurrent.futures import ThreadPoolExecutor

    from registry.v1 import civil_registration_service_pb2_grpc as civil_grpc
    from tests.conftest import ServerThread, server_settings, wait_serving

    province, year = "094", 1947
    g, yy = expected_g(MALE, year), year % 100
    assert bucket_row(db, province, g, yy) is None, "bucket used by another test"
    other = ServerThread(server_settings(), server.dsn).start()
    try:
        wait_serving(other.target)
        channels = [grpc.insecure_channel(t) for t in (server.target, other.target)]
        stubs = [civil_grpc.CivilRegistrationServiceStub(c) for c in channels]

        def born(i: int) -> str:
            request = birth_request(
                sex=MALE,
                date_of_birth=date(year, 3, 1 + i % 28),
                registration_province_code=province,
                registration_number=f"two-servers-{i}",
            )
            return stubs[i % 2].RegisterBirth(request, metadata=agency.metadata()).citizen.pin

        with ThreadPoolExecutor(16) as pool:
            issued = list(pool.map(born, range(120)))
        for c in channels:
            c.close()
    finally:
        other.stop()
    assert len(set(issued)) == 120
    row = bucket_row(db, province, g, yy)
    bucket, key = pins.Bucket(province, g, yy), bytes(row["key"])
    counters = {pins.allocate(bucket, key, c): c for c in range(row["issued"])}
    assert set(issued) <= counters.keys()  # each PIN is a counter value reserved in the row
    assert row["issued"] < 120 + 2 * RANGE  # at most one unused range per server
