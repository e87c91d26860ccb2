"""registry/db/citizens.py against PostgreSQL, as the server's runtime role."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import asyncpg
import pytest

from registry.db import citizens
from registry.rules.dates import PartialDate
from registry.rules.errors import Code, RegistryError
from registry.rules.model import (
    CITIZEN_FIELD_TABLE,
    BirthRegistration,
    BloodType,
    CitizenStatus,
    DeathRegistration,
    Kind,
    MaritalStatus,
    Sex,
)
from tests.db.conftest import connected
from tests.db.records import fresh_name, fresh_pin, insert_citizen, request_id


def birth(**overrides: object) -> BirthRegistration:
    fields: dict[str, object] = {
        "full_name": fresh_name("Trần Thị"), "sex": Sex.FEMALE,
        "date_of_birth": PartialDate(2024, 3), "place_of_birth": "Bệnh viện Từ Dũ",
        "registration_province_code": "079", "hometown": "Huế", "ethnicity": "Kinh",
        "nationality": "VN", "father_pin": None, "mother_pin": None,
        "registration_authority": "UBND phường Bến Nghé", "registration_number": "12/2024",
        "registered_on": date(2024, 4, 2),
    }  # fmt: skip
    fields.update(overrides)
    return BirthRegistration(**fields)  # type: ignore[arg-type]


async def insert_birth(conn, pin, registration, *, key=None, at=None):
    await citizens.insert_birth(
        conn,
        pin,
        registration,
        at=at or datetime(2024, 4, 2, 9, 30, tzinfo=UTC),
        agency_id="repo-agency",
        request_id=key or request_id(),
        method="RegisterBirth",
        request_hash=b"\x01" * 32,
        answer=b"answer",
    )


async def test_insert_birth_writes_the_record_and_claims_the_key(rt, su):
    mother = await insert_citizen(su, sex=2)
    pin, key = fresh_pin(Sex.FEMALE, 2024, "079"), request_id()
    at = datetime(2024, 4, 2, 9, 30, tzinfo=UTC)
    await insert_birth(rt, pin, birth(mother_pin=mother), key=key, at=at)

    got = await citizens.get(rt, pin)
    assert got is not None
    assert got.date_of_birth == PartialDate(2024, 3, None)
    assert (got.sex, got.status, got.version) == (Sex.FEMALE, CitizenStatus.ALIVE, 1)
    assert (got.mother_pin, got.father_pin, got.registration_province_code) == (mother, None, "079")
    assert (got.place_of_birth, got.hometown, got.nationality) == ("Bệnh viện Từ Dũ", "Huế", "VN")
    assert got.create_time == got.update_time == at
    row = await su.fetchrow("SELECT * FROM citizens WHERE pin = $1", pin)
    assert (row["birth_year"], row["birth_month"], row["birth_day"]) == (2024, 3, None)
    assert row["birth_registration_authority"] == "UBND phường Bến Nghé"
    assert row["birth_registration_number"] == "12/2024"
    assert row["birth_registered_on"] == date(2024, 4, 2)
    assert row["created_by"] == "repo-agency"
    stored = await su.fetchrow(
        "SELECT * FROM idempotency_keys WHERE agency_id = 'repo-agency' AND request_id = $1", key
    )
    assert (stored["method"], stored["result_key"], stored["answer"]) == (
        "RegisterBirth",
        pin,
        b"answer",
    )


async def test_insert_birth_names_the_constraint_it_violates(rt, su):
    key = request_id()
    first = fresh_pin(Sex.FEMALE, 2024, "079")
    await insert_birth(rt, first, birth(), key=key)
    second = fresh_pin(Sex.FEMALE, 2024, "079")
    with pytest.raises(asyncpg.UniqueViolationError) as taken_key:
        await insert_birth(rt, second, birth(), key=key)
    assert taken_key.value.constraint_name == "idempotency_keys_pkey"
    assert await citizens.get(rt, second) is None  # one statement: nothing of it stayed
    with pytest.raises(asyncpg.UniqueViolationError) as held_pin:
        await insert_birth(rt, first, birth())
    assert held_pin.value.constraint_name == "citizens_pkey"


async def test_get_reads_every_column_and_sorted_legacy_ids(rt, su):
    spouse = await insert_citizen(su)
    pin = await insert_citizen(
        su,
        other_names=["Tí", "Tèo"],
        birth_year=1950,
        birth_month=None,
        birth_day=None,
        religion="Phật giáo",
        blood_type=4,
        spouse_pin=spouse,
        representative_pin=spouse,
        permanent_address="1 Tràng Tiền",
        temporary_address="2 Hàng Bài",
        current_address="3 Lý Thái Tổ",
        marital_status=2,
        pin_mismatch=True,
    )
    high, low = f"9{pin[1:]}", f"1{pin[1:]}"
    for legacy in (high, low):
        await su.execute(
            "INSERT INTO legacy_ids (legacy_id, pin, linked_by) VALUES ($1, $2, 't')", legacy, pin
        )
    got = await citizens.get(rt, pin)
    assert got is not None
    assert (got.other_names, got.date_of_birth, got.religion) == (
        ("Tí", "Tèo"),
        PartialDate(1950),
        "Phật giáo",
    )
    assert (got.blood_type, got.marital_status, got.pin_mismatch) == (
        BloodType.O,
        MaritalStatus.MARRIED,
        True,
    )
    assert (got.spouse_pin, got.representative_pin) == (spouse, spouse)
    addresses = (got.permanent_address, got.temporary_address, got.current_address)
    assert addresses == ("1 Tràng Tiền", "2 Hàng Bài", "3 Lý Thái Tổ")
    assert got.legacy_ids == (low, high)
    assert got.date_of_death is None and got.replaced_by_pin is None
    assert await citizens.get(rt, fresh_pin()) is None


async def test_get_for_update_blocks_other_lockers_but_not_foreign_keys(rt, su, runtime_dsn):
    pin = await insert_citizen(su)
    async with connected(runtime_dsn) as other:
        await other.execute("SET lock_timeout = '300ms'")
        async with rt.transaction():
            assert (await citizens.get(rt, pin, for_update=True)) is not None
            with pytest.raises(asyncpg.LockNotAvailableError):
                await citizens.get(other, pin, for_update=True)
            # A card or a child naming this citizen (a foreign-key check) still goes ahead.
            assert await other.fetchval(
                "SELECT pin FROM citizens WHERE pin = $1 FOR KEY SHARE", pin
            )
        assert (await citizens.get(other, pin, for_update=True)) is not None


async def test_get_many_returns_only_those_that_exist(rt, su):
    a, b = await insert_citizen(su), await insert_citizen(su)
    missing = fresh_pin()
    got = await citizens.get_many(rt, [a, missing, b])
    assert set(got) == {a, b}
    assert got[a].pin == a and got[b].pin == b
    assert await citizens.get_many(rt, []) == {}


async def test_mark_deceased_and_annul_death(rt, su):
    pin = await insert_citizen(su)
    dead = await citizens.mark_deceased(
        rt, DeathRegistration(pin, PartialDate(2020, 7), "UBND xã An Phú", "7/2020")
    )
    assert (dead.status, dead.date_of_death, dead.version) == (
        CitizenStatus.DECEASED,
        PartialDate(2020, 7),
        2,
    )
    row = await su.fetchrow("SELECT * FROM citizens WHERE pin = $1", pin)
    assert (row["death_year"], row["death_month"], row["death_day"]) == (2020, 7, None)
    assert (row["death_registration_authority"], row["death_registration_number"]) == (
        "UBND xã An Phú",
        "7/2020",
    )
    assert row["update_time"] > row["create_time"]

    alive = await citizens.annul_death(rt, pin)
    assert (alive.status, alive.date_of_death, alive.version) == (CitizenStatus.ALIVE, None, 3)
    row = await su.fetchrow("SELECT * FROM citizens WHERE pin = $1", pin)
    assert [row[c] for c in ("death_year", "death_month", "death_day")] == [None, None, None]
    assert row["death_registration_authority"] is None
    assert row["death_registration_number"] is None


async def test_get_existing_and_follow_replacements(rt, su):
    with pytest.raises(RegistryError) as missing:
        await citizens.get_existing(rt, fresh_pin())
    assert (missing.value.code, missing.value.reason) == (Code.INTERNAL, "RECORD_MISSING")

    newest = await insert_citizen(su)
    middle = await insert_citizen(su, replaced_by_pin=newest, status=4)
    oldest = await insert_citizen(su, replaced_by_pin=middle, status=4)
    start = await citizens.get_existing(rt, oldest)
    assert start.replaced_by_pin == middle
    followed, replaced = await citizens.follow_replacements(rt, start)
    assert (followed.pin, replaced) == (newest, True)
    same, replaced = await citizens.follow_replacements(rt, followed)
    assert (same.pin, replaced) == (newest, False)

    loop_a = await insert_citizen(su)
    loop_b = await insert_citizen(su, replaced_by_pin=loop_a)
    await su.execute("UPDATE citizens SET replaced_by_pin = $2 WHERE pin = $1", loop_a, loop_b)
    with pytest.raises(RegistryError) as cycle:
        await citizens.follow_replacements(rt, await citizens.get_existing(rt, loop_a))
    assert cycle.value.reason == "REPLACEMENT_CHAIN_TOO_LONG"


async def test_keep_history_stores_the_record_before_the_change(rt, su):
    pin = await insert_citizen(su, full_name="Lê Văn Cũ")
    key = request_id()
    await citizens.keep_history(
        rt, pin, ["full_name"], agency_id="repo-agency", request_id=key,
        reason="court decision", decision_reference="QĐ 12/2024",
    )  # fmt: skip
    await citizens.update_fields(rt, pin, [("full_name", "Lê Văn Mới")])
    rows = await su.fetch("SELECT * FROM citizen_history WHERE pin = $1", pin)
    assert len(rows) == 1
    row = rows[0]
    assert row["version"] == 1
    assert '"full_name": "Lê Văn Cũ"' in row["record"]
    assert (row["fields"], row["changed_by"], row["request_id"]) == (
        ["full_name"],
        "repo-agency",
        key,
    )
    assert (row["reason"], row["decision_reference"], row["replaced_by_pin"]) == (
        "court decision",
        "QĐ 12/2024",
        None,
    )


async def test_update_fields_sets_columns_and_bumps_the_version(rt, su):
    father = await insert_citizen(su)
    pin = await insert_citizen(su, hometown="Vinh")
    before = await citizens.get_existing(rt, pin)
    await asyncio.sleep(0.01)
    after = await citizens.update_fields(
        rt,
        pin,
        [
            ("date_of_birth", PartialDate(1981, 2)),
            ("other_names", ("Bé",)),
            ("blood_type", BloodType.AB),
            ("father_pin", father),
            ("status", CitizenStatus.MISSING),
        ],
    )
    assert after.date_of_birth == PartialDate(1981, 2)
    assert (after.other_names, after.blood_type, after.father_pin, after.status) == (
        ("Bé",),
        BloodType.AB,
        father,
        CitizenStatus.MISSING,
    )
    assert after.hometown == "Vinh" and after.full_name == before.full_name
    assert after.version == before.version + 1
    assert after.update_time > before.update_time
    row = await su.fetchrow("SELECT * FROM citizens WHERE pin = $1", pin)
    assert (row["birth_year"], row["birth_month"], row["birth_day"]) == (1981, 2, None)
    assert (row["blood_type"], row["status"]) == (3, 3)


async def test_reestablish_copies_the_record_and_cancel_pin_retires_the_old(rt, su):
    old = await insert_citizen(
        su, birth_registration_authority="UBND quận 1", birth_registration_number="5/1980",
        status=2, death_year=2021, death_month=None, death_day=None,
        death_registration_number="9/2021",
    )  # fmt: skip
    cards = {"A": 1, "W": 4, "R": 3}
    for tag, state in cards.items():
        await su.execute(
            "INSERT INTO cards (serial, pin, kind, state, issue_date, issuing_authority, "
            "issued_by) VALUES ($1, $2, 1, $3, '2015-01-01', 'C06', 't')",
            f"{tag}{old}",
            old,
            state,
        )
    new = fresh_pin(Sex.MALE, 1980, old[:3])
    record = await citizens.get_existing(rt, old)
    async with rt.transaction():
        made = await citizens.insert_reestablished(
            rt, new, record, old_pin=old, agency_id="repo-agency"
        )
        assert await rt.fetchval("SELECT current_setting('registry.bulk_import')") == "off"
        await citizens.cancel_pin(rt, old, new)
    assert (made.pin, made.full_name, made.date_of_birth) == (
        new,
        record.full_name,
        record.date_of_birth,
    )
    assert made.date_of_death == PartialDate(2021) and made.version == 1
    row = await su.fetchrow("SELECT * FROM citizens WHERE pin = $1", new)
    assert (row["created_by"], row["birth_registration_authority"]) == (
        "repo-agency",
        "UBND quận 1",
    )
    assert row["birth_registration_number"] == "5/1980"
    assert row["death_registration_number"] == "9/2021"
    assert await su.fetchval("SELECT count(*) FROM change_events WHERE pin = $1", new) == 0

    cancelled = await citizens.get_existing(rt, old)
    assert (cancelled.status, cancelled.replaced_by_pin, cancelled.version) == (
        CitizenStatus.PIN_CANCELLED,
        new,
        record.version + 1,
    )
    states = {
        r["serial"][0]: (r["state"], r["state_reason"])
        for r in await su.fetch("SELECT * FROM cards WHERE pin = $1", old)
    }
    assert states == {
        "A": (2, "PIN re-established"),
        "W": (2, "PIN re-established"),
        "R": (3, ""),
    }


# What the citizens table holds besides the Citizen record: the registrations behind it and who
# created it. A column in neither list is a migration without a field-table decision.
NOT_CITIZEN_FIELDS = {
    "birth_registration_authority", "birth_registration_number", "birth_registered_on",
    "death_registration_authority", "death_registration_number", "created_by",
}  # fmt: skip
COLUMN_TYPES = {
    Kind.TEXT: {"text"},
    Kind.PIN_REF: {"text", "character"},
    Kind.NAMES: {"ARRAY"},
    Kind.DATE: {"smallint"},
    Kind.ENUM: {"smallint"},
    Kind.INT: {"integer", "bigint"},
    Kind.BOOL: {"boolean"},
    Kind.TIME: {"timestamp with time zone"},
}


async def test_the_field_table_names_every_column_of_the_table_with_its_type(su):
    rows = await su.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'citizens'"
    )
    types = {r["column_name"]: r["data_type"] for r in rows}
    table_columns = {c: f.kind for f in CITIZEN_FIELD_TABLE for c in f.columns}
    assert set(types) == set(table_columns) | NOT_CITIZEN_FIELDS
    for column, kind in table_columns.items():
        assert types[column] in COLUMN_TYPES[kind], (column, types[column])
