"""RegisterDeath through a real channel: status, version, idempotency, refusals, concurrency."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest

from registry.runtime import clock
from registry.v1 import citizen_pb2
from tests.helpers import birth_request, call_error, date, death_request

DECEASED = citizen_pb2.CITIZEN_STATUS_DECEASED
# No citizen can hold a PIN under an unknown province code (FK to pin_prefixes).
NOBODY = "998060000001"


def born(civil: Any, agency: Any, dob: Any = None, **overrides: Any) -> Any:
    request = birth_request(
        date_of_birth=dob if dob is not None else date(1960, 5, 5),
        registration_number=f"T-{uuid.uuid4().hex[:16]}",
        **overrides,
    )
    return civil.RegisterBirth(request, metadata=agency.metadata()).citizen


def row_of(db: Any, pin: str) -> Any:
    return db.fetch(
        "SELECT status, version, death_year, death_month, death_day, "
        "death_registration_authority, death_registration_number, replaced_by_pin "
        "FROM citizens WHERE pin = $1",
        pin,
    )[0]


def state(db: Any, pin: str) -> tuple[Any, ...]:
    """What a refused call must leave as it was: the row, and the idempotency keys."""
    r = row_of(db, pin)
    keys = int(db.fetchval("SELECT count(*) FROM idempotency_keys"))
    return (r["status"], r["version"], r["death_year"], r["death_month"], r["death_day"], keys)


def dmy(d: Any) -> tuple[int, int, int]:
    return (d.year, d.month, d.day)


def test_death_marks_the_citizen_deceased(civil, agency, db):
    citizen = born(civil, agency)
    assert citizen.version == 1
    request = death_request(
        citizen.pin,
        date_of_death=date(2020, 8, 15),
        registration_authority="UBND xã Tân Phú",
        registration_number="0007/2020",
    )
    response = civil.RegisterDeath(request, metadata=agency.metadata())
    assert response.replayed is False
    dead = response.citizen
    assert dead.pin == citizen.pin
    assert dead.status == DECEASED
    assert dmy(dead.date_of_death) == (2020, 8, 15)
    assert dead.version == 2
    assert dead.full_name == citizen.full_name
    assert dead.update_time.ToNanoseconds() >= citizen.update_time.ToNanoseconds()
    row = row_of(db, citizen.pin)
    assert row["status"] == DECEASED
    assert row["version"] == 2
    assert (row["death_year"], row["death_month"], row["death_day"]) == (2020, 8, 15)
    assert row["death_registration_authority"] == "UBND xã Tân Phú"
    assert row["death_registration_number"] == "0007/2020"


def test_death_replay_and_reuse(civil, agency, db):
    citizen = born(civil, agency)
    request = death_request(citizen.pin, date_of_death=date(2021, 1, 2))
    first = civil.RegisterDeath(request, metadata=agency.metadata())
    assert (first.replayed, first.citizen.version) == (False, 2)

    before = state(db, citizen.pin)
    again = civil.RegisterDeath(request, metadata=agency.metadata())
    assert again.replayed is True
    assert again.citizen.version == 2
    assert again.citizen.status == DECEASED
    assert dmy(again.citizen.date_of_death) == (2021, 1, 2)
    assert state(db, citizen.pin) == before

    other_date = death_request(
        citizen.pin, request_id=request.request_id, date_of_death=date(2021, 1, 3)
    )
    err = call_error(civil.RegisterDeath, other_date, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.ALREADY_EXISTS
    assert err.reason == "REQUEST_ID_REUSED"
    assert state(db, citizen.pin) == before

    second = call_error(
        civil.RegisterDeath,
        death_request(citizen.pin, date_of_death=date(2021, 1, 3)),
        metadata=agency.metadata(),
    )
    assert second.code == grpc.StatusCode.FAILED_PRECONDITION
    assert second.reason == "CITIZEN_DECEASED"
    assert [t for t, _ in second.preconditions] == ["CITIZEN_DECEASED"]
    assert state(db, citizen.pin) == before
    assert (row_of(db, citizen.pin)["death_day"]) == 2


def test_unknown_pin_is_not_found(civil, agency, db):
    before = db.counts()
    err = call_error(civil.RegisterDeath, death_request(NOBODY), metadata=agency.metadata())
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.reason == "CITIZEN_NOT_FOUND"
    assert db.counts() == before


@pytest.mark.parametrize(
    "bad_pin",
    [
        pytest.param("00106000001", id="11-digits"),
        pytest.param("0010600000012", id="13-digits"),
        pytest.param("00106000000x", id="letter"),
        pytest.param("٠٠١٠٦٠٠٠٠٠٠١", id="arabic-indic"),
        pytest.param("", id="empty"),
    ],
)
def test_malformed_pin_is_invalid_argument(civil, agency, db, bad_pin):
    before = db.counts()
    err = call_error(civil.RegisterDeath, death_request(bad_pin), metadata=agency.metadata())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.bad_fields == ["pin"]
    assert db.counts() == before


def test_invalid_death_fields_are_all_named(civil, agency, db):
    citizen = born(civil, agency)
    before = state(db, citizen.pin)
    request = death_request(
        citizen.pin,
        request_id="has space",
        date_of_death=date(2020, 2, 30),
        registration_authority=" ",
        registration_number="",
    )
    err = call_error(civil.RegisterDeath, request, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(err.bad_fields) == {
        "request_id",
        "date_of_death.day",
        "registration_authority",
        "registration_number",
    }
    missing = death_request(citizen.pin)
    missing.ClearField("date_of_death")
    err = call_error(civil.RegisterDeath, missing, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.bad_fields == ["date_of_death"]
    assert state(db, citizen.pin) == before


def test_future_date_of_death_is_invalid_argument(civil, agency, db):
    citizen = born(civil, agency)
    before = state(db, citizen.pin)
    tomorrow = clock.today() + timedelta(days=1)
    err = call_error(
        civil.RegisterDeath,
        death_request(citizen.pin, date_of_death=date(tomorrow.year, tomorrow.month, tomorrow.day)),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.bad_fields == ["date_of_death"]
    assert state(db, citizen.pin) == before


def test_death_before_birth_is_refused_and_the_key_stays_free(civil, agency, db):
    citizen = born(civil, agency, date(1960, 5, 5))
    before = state(db, citizen.pin)
    request = death_request(citizen.pin, date_of_death=date(1959))
    err = call_error(civil.RegisterDeath, request, metadata=agency.metadata())
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "DEATH_BEFORE_BIRTH"
    assert ("DEATH_BEFORE_BIRTH", "date_of_death") in err.preconditions
    assert state(db, citizen.pin) == before
    # Refused calls record nothing: the same request_id can carry the corrected request.
    fixed = death_request(
        citizen.pin, request_id=request.request_id, date_of_death=date(1960, 5, 5)
    )
    response = civil.RegisterDeath(fixed, metadata=agency.metadata())
    assert (response.replayed, response.citizen.version) == (False, 2)


def test_death_month_before_birth_day_in_that_month_is_refused(civil, agency, db):
    citizen = born(civil, agency, date(1960, 5, 5))
    before = state(db, citizen.pin)
    err = call_error(
        civil.RegisterDeath,
        death_request(citizen.pin, date_of_death=date(1960, 4)),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "DEATH_BEFORE_BIRTH"
    assert state(db, citizen.pin) == before


@pytest.mark.parametrize(
    ("dod", "stored"),
    [
        pytest.param((1960, 0, 0), (1960, None, None), id="year-of-birth"),
        pytest.param((1999, 0, 0), (1999, None, None), id="year"),
        pytest.param((2004, 7, 0), (2004, 7, None), id="year-month"),
    ],
)
def test_partial_date_of_death_is_accepted(civil, agency, db, dod, stored):
    citizen = born(civil, agency, date(1960, 5, 5))
    response = civil.RegisterDeath(
        death_request(citizen.pin, date_of_death=date(*dod)), metadata=agency.metadata()
    )
    assert response.citizen.status == DECEASED
    assert dmy(response.citizen.date_of_death) == dod
    row = row_of(db, citizen.pin)
    assert (row["death_year"], row["death_month"], row["death_day"]) == stored
    assert row["version"] == 2


def test_year_only_birth_allows_death_in_the_same_year(civil, agency):
    citizen = born(civil, agency, date(1955))
    response = civil.RegisterDeath(
        death_request(citizen.pin, date_of_death=date(1955, 1, 1)), metadata=agency.metadata()
    )
    assert response.citizen.status == DECEASED


def test_cancelled_pin_is_refused_naming_its_replacement(civil, agency, db):
    old = born(civil, agency, date(1962, 1, 1), full_name="Mai Văn Cũ")
    new = born(civil, agency, date(1962, 1, 1), full_name="Mai Văn Cũ")
    db.execute(
        "UPDATE citizens SET status = 4, replaced_by_pin = $2 WHERE pin = $1", old.pin, new.pin
    )
    before = state(db, old.pin)
    err = call_error(civil.RegisterDeath, death_request(old.pin), metadata=agency.metadata())
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "PIN_CANCELLED"
    assert [t for t, _ in err.preconditions] == ["PIN_CANCELLED"]
    assert err.metadata.get("replaced_by_pin") == new.pin
    assert state(db, old.pin) == before
    assert row_of(db, old.pin)["status"] == citizen_pb2.CITIZEN_STATUS_PIN_CANCELLED
    # The replacement PIN takes the death.
    response = civil.RegisterDeath(death_request(new.pin), metadata=agency.metadata())
    assert response.citizen.status == DECEASED


def test_concurrent_identical_deaths_apply_once(civil, agency, db):
    citizen = born(civil, agency, date(1963, 3, 3))
    request = death_request(citizen.pin, date_of_death=date(2022, 2, 2))
    threads = 6
    barrier = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []
    metadata = [agency.metadata() for _ in range(threads)]

    def send(i: int) -> None:
        try:
            barrier.wait(10)
            results[i] = civil.RegisterDeath(request, metadata=metadata[i], timeout=30)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=send, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert errors == []
    assert all(r is not None for r in results)
    assert sum(not r.replayed for r in results) == 1
    assert {r.citizen.version for r in results} == {2}
    assert {r.citizen.status for r in results} == {DECEASED}
    row = row_of(db, citizen.pin)
    assert (row["status"], row["version"]) == (DECEASED, 2)
    assert (row["death_year"], row["death_month"], row["death_day"]) == (2022, 2, 2)
