"""RegisterBirth through a real channel: PIN buckets. Distinct, non-sequential PINs in one
bucket, late registrations, the province-code table, full buckets, numbers already held, and
two servers sharing a bucket.

Tests that count or fill a bucket use a (province, sex, year) bucket no other test uses.
"""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

import grpc
import pytest

from registry.db.pins import RANGE
from registry.rules import pin as pins
from registry.runtime import clock
from tests.grpc.births import (
    FEMALE,
    MALE,
    TABLE,
    bucket_row,
    expected_g,
    register,
    snapshot,
)
from tests.helpers import birth_request, call_error, date

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
