"""registry/usecases/imports.py (the batch write of every import path) against PostgreSQL, as
the server's runtime role."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid

import pytest

from registry.db import imports as imports_db
from registry.rules.dates import PartialDate
from registry.rules.imports import ImportRecord
from registry.rules.model import CitizenStatus, Sex
from registry.rules.pin import BUCKET_SIZE, bucket_for, parse
from registry.usecases import imports
from tests.db.records import PROVINCES, fresh_name, fresh_pin, insert_citizen


def agency() -> str:
    return f"importer-{uuid.uuid4().hex[:10]}"


def record(source: str, **fields: object) -> ImportRecord:
    values: dict[str, object] = {
        "source_id": source,
        "pin": None,
        "pin_mismatch": False,
        "full_name": fresh_name(),
        "date_of_birth": PartialDate(1970 + secrets.randbelow(20), 6, 1),
        "sex": Sex.MALE,
        "registration_province_code": secrets.choice(PROVINCES),
    }
    values.update(fields)
    return ImportRecord(**values)  # type: ignore[arg-type]


async def test_a_batch_creates_records_with_given_and_assigned_pins(database, su):
    who = agency()
    given = fresh_pin(Sex.FEMALE, 1950)
    mother = record(
        "m",
        pin=given,
        pin_mismatch=True,
        sex=Sex.FEMALE,
        date_of_birth=PartialDate(1950),
        registration_province_code=given[:3],
    )
    child = record(
        "c",
        other_names=("Bé Na", "Na"),
        date_of_birth=PartialDate(1975, 6),
        texts=(("hometown", "Nam Định"), ("current_address", "5 Hàng Gai")),
        nationality="VN",
        blood_type=2,
        marital_status=3,
        status=int(CitizenStatus.DECEASED),
        date_of_death=PartialDate(2001, 9),
        references=(("mother_pin", given),),
    )
    plain = record("p")
    result = await imports.import_batch(database, who, [mother, child, plain])
    assert (result.assigned, result.mismatched, result.duplicates) == (2, 1, 0)
    assert result.rejects == [] and result.matched == []
    assert result.created[0] == given and len(set(result.created)) == 3
    for rec, pin in zip((child, plain), result.created[1:], strict=True):
        dob = rec.date_of_birth
        assert parse(pin).bucket == bucket_for(rec.registration_province_code, rec.sex, dob.year)

    rows = {
        r["pin"]: r
        for r in await su.fetch("SELECT * FROM citizens WHERE pin = ANY($1)", result.created)
    }
    assert rows[given]["pin_mismatch"] is True and rows[given]["birth_month"] is None
    kid = rows[result.created[1]]
    assert (kid["birth_year"], kid["birth_month"], kid["birth_day"]) == (1975, 6, None)
    assert (kid["death_year"], kid["death_month"], kid["death_day"]) == (2001, 9, None)
    assert kid["other_names"] == ["Bé Na", "Na"] and kid["mother_pin"] == given
    assert (kid["hometown"], kid["current_address"], kid["place_of_birth"]) == (
        "Nam Định",
        "5 Hàng Gai",
        "",
    )
    assert (kid["blood_type"], kid["marital_status"], kid["status"]) == (2, 3, 2)
    assert {r["created_by"] for r in rows.values()} == {who}
    sources = await su.fetch(
        "SELECT source_id, pin FROM import_sources WHERE agency_id = $1 ORDER BY source_id", who
    )
    assert [tuple(r) for r in sources] == [
        ("c", result.created[1]),
        ("m", given),
        ("p", result.created[2]),
    ]
    # Records of the existing population, not births: no BORN events.
    born = "SELECT count(*) FROM change_events WHERE pin = ANY($1)"
    assert await su.fetchval(born, result.created) == 0


async def test_duplicates_are_counted_and_the_matched_citizens_named(database, su):
    who = agency()
    first = await imports.import_batch(database, who, [record("s1")])
    existing = await insert_citizen(su, full_name="Đỗ Văn Trùng", birth_month=3, birth_day=None)
    same_person = record(
        "s4",
        full_name="Đỗ Văn Trùng",
        date_of_birth=PartialDate(1980, 3),
        registration_province_code=existing[:3],
    )
    other_parents = record(
        "s5",
        full_name="Đỗ Văn Trùng",
        date_of_birth=PartialDate(1980, 3),
        registration_province_code=existing[:3],
        references=(("father_pin", existing),),
    )
    held = await insert_citizen(su)
    batch = [
        record("s1"),  # a source already imported
        record("s2", pin=held),  # a PIN already held
        record("s3"),
        record("s3"),  # the same source twice in one batch
        same_person,
        other_parents,  # same name and birth, another father: someone else
    ]
    result = await imports.import_batch(database, who, batch)
    assert result.duplicates == 4
    assert result.matched == [first.created[0], held, existing]
    assert len(result.created) == 2 and result.rejects == []
    assert (
        await su.fetchval("SELECT father_pin FROM citizens WHERE pin = $1", result.created[1])
        == existing
    )


async def test_unknown_references_and_full_buckets_are_rejected(database, su):
    who, unknown = agency(), fresh_pin()
    province, year = secrets.choice(PROVINCES), 1900 + secrets.randbelow(30)
    bucket = bucket_for(province, Sex.FEMALE, year)
    await su.execute(
        "INSERT INTO pin_buckets (province_code, g, yy, key, issued, key_version) "
        "VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (province_code, g, yy) "
        "DO UPDATE SET issued = EXCLUDED.issued",
        bucket.province_code,
        bucket.g,
        bucket.yy,
        bytes(32),
        BUCKET_SIZE,
    )
    batch = [
        record("ok"),
        record("orphan", references=(("father_pin", unknown), ("spouse_pin", None))),
        record(
            "full",
            sex=Sex.FEMALE,
            date_of_birth=PartialDate(year),
            registration_province_code=province,
        ),
    ]
    result = await imports.import_batch(database, who, batch)
    assert len(result.created) == 1
    assert sorted(result.rejects) == [
        (1, "orphan", f"not in the register: father_pin {unknown} (import them first)"),
        (2, "full", f"every PIN of bucket {bucket} has been issued"),
    ]
    assert await su.fetchval("SELECT count(*) FROM import_sources WHERE agency_id = $1", who) == 1


async def test_chunks_are_acknowledged_replayed_and_checked_for_their_offset(database, su):
    who, run = agency(), f"run-{uuid.uuid4().hex[:8]}"
    async with database.pool.acquire() as conn:
        assert await imports_db.acknowledged(conn, who, run) == 0
    first = await imports.import_chunk(
        database, who, run, 0, 3, [record("a"), record("c")], [0, 2], [(1, "b", "bad date")]
    )
    assert (first.offset, first.received, first.created, first.assigned) == (0, 3, 2, 2)
    assert (first.rejects, first.replayed, len(first.pins)) == ([(1, "b", "bad date")], False, 2)
    unknown = fresh_pin()
    orphan = record("e", references=(("mother_pin", unknown),))
    second = await imports.import_chunk(
        database, who, run, 3, 2, [orphan], [1], [(0, "d", "no name")]
    )
    assert second.rejects == [
        (3, "d", "no name"),
        (4, "e", f"not in the register: mother_pin {unknown} (import them first)"),
    ]
    assert second.created == 0 and second.pins == ()
    async with database.pool.acquire() as conn:
        assert await imports_db.acknowledged(conn, who, run) == 5
    stored = await su.fetchrow(
        "SELECT * FROM import_batches WHERE agency_id = $1 AND import_id = $2 AND first_offset = 3",
        who,
        run,
    )
    assert (stored["next_offset"], stored["rejected"]) == (5, 2)
    assert json.loads(stored["rejects"])[0] == [3, "d", "no name"]

    again = await imports.import_chunk(database, who, run, 0, 3, [record("x")], [0], [])
    assert again == imports.AckedBatch(0, 3, 2, 2, 0, 0, [(1, "b", "bad date")], True)
    count = "SELECT count(*) FROM import_sources WHERE agency_id = $1"
    assert await su.fetchval(count, who) == 2  # the replay wrote nothing
    for offset in (2, 7):
        with pytest.raises(imports.OffsetMismatch) as mismatch:
            await imports.import_chunk(database, who, run, offset, 1, [record("y")], [0], [])
        assert mismatch.value.expected == 5


async def test_racing_streams_write_a_chunk_once(database, su):
    who, run = agency(), f"race-{uuid.uuid4().hex[:8]}"
    batch = [record("r1"), record("r2")]
    results = await asyncio.gather(
        *(imports.import_chunk(database, who, run, 0, 2, batch, [0, 1], []) for _ in range(2))
    )
    assert sorted(r.replayed for r in results) == [False, True]
    assert {r.created for r in results} == {2}
    assert await su.fetchval("SELECT count(*) FROM import_sources WHERE agency_id = $1", who) == 2


async def test_latest_run_is_the_newest_with_the_prefix(database):
    who, stem = agency(), f"nightly-{uuid.uuid4().hex[:6]}"
    await imports.import_chunk(database, who, f"{stem}-1", 0, 1, [record("n1")], [0], [])
    await imports.import_chunk(database, who, f"{stem}-2", 0, 1, [record("n2")], [0], [])
    await imports.import_chunk(database, who, f"{stem}-2", 1, 2, [record("n3")], [0], [])
    await imports.import_chunk(database, agency(), f"{stem}-3", 0, 1, [record("n4")], [0], [])
    async with database.pool.acquire() as conn:
        assert await imports_db.latest_run(conn, who, stem) == (f"{stem}-2", 3)
        assert await imports_db.latest_run(conn, who, f"{stem}-1") == (f"{stem}-1", 1)
        assert await imports_db.latest_run(conn, who, "other") is None


async def test_the_same_person_in_imports_running_at_once_is_created_once(database, su):
    # Under READ COMMITTED neither transaction sees the other's new row: without the province
    # locks (migration 0021) both created the person, with two PINs, in every round.
    for _ in range(4):
        name, born = fresh_name(), PartialDate(1961, 2, 3)
        person = {"full_name": name, "date_of_birth": born, "registration_province_code": "031"}
        batches = [
            [record(f"{side}-{k}") for k in range(150)] + [record(f"{side}-same", **person)]
            for side in ("a", "b")
        ]
        results = await asyncio.gather(
            *(imports.import_batch(database, agency(), batch) for batch in batches)
        )
        pins = await su.fetch("SELECT pin FROM citizens WHERE full_name = $1", name)
        assert len(pins) == 1
        assert sorted(r.duplicates for r in results) == [0, 1]
        assert [r.matched for r in results if r.duplicates] == [[pins[0]["pin"]]]
        assert sum(len(r.created) for r in results) == 301


async def test_a_pin_given_to_imports_running_at_once_is_created_once(database, su):
    given = fresh_pin(Sex.FEMALE, 1972, "048")
    people = [
        record("g", pin=given, sex=Sex.FEMALE, date_of_birth=PartialDate(1972),
               registration_province_code=province)
        for province in ("048", "079")  # the second one's PIN mismatches its province
    ]  # fmt: skip
    results = await asyncio.gather(
        *(imports.import_batch(database, agency(), [person]) for person in people)
    )
    assert sorted(len(r.created) for r in results) == [0, 1]
    assert [r.matched for r in results if r.duplicates] == [[given]]
    assert await su.fetchval("SELECT count(*) FROM citizens WHERE pin = $1", given) == 1


async def test_a_source_id_in_two_runs_at_once_is_created_once(database, su):
    # Records of other provinces do not wait for each other: the source id's key catches the
    # second, whose batch is decided again and finds the source imported.
    who = agency()
    runs = [
        imports.import_chunk(
            database, who, f"run-{province}", 0, 1,
            [record("same-source", registration_province_code=province)], [0], [],
        )
        for province in ("001", "092")
    ]  # fmt: skip
    acks = await asyncio.gather(*runs)
    assert sorted(a.created for a in acks) == [0, 1]
    assert sorted(a.duplicates for a in acks) == [0, 1]
    kept = await su.fetch("SELECT pin FROM import_sources WHERE agency_id = $1", who)
    assert [a.matched for a in acks if a.duplicates] == [(kept[0]["pin"],)]


async def test_imports_of_other_provinces_do_not_wait_for_each_other(database, su):
    async with database.pool.acquire() as holder, holder.transaction():
        await imports_db.lock_provinces(holder, ["004"])  # an import of province 004 under way
        elsewhere = await asyncio.wait_for(
            imports.import_batch(
                database, agency(), [record("x", registration_province_code="022")]
            ),
            timeout=10,
        )
        assert len(elsewhere.created) == 1
        same = asyncio.create_task(
            imports.import_batch(
                database, agency(), [record("y", registration_province_code="004")]
            )
        )
        await asyncio.sleep(0.5)
        assert not same.done()  # waits for the holder's transaction
    assert len((await asyncio.wait_for(same, timeout=10)).created) == 1


async def test_a_province_code_added_by_the_operator_gets_its_import_lock(su):
    adding = su.transaction()
    await adding.start()
    try:
        await su.execute(
            "INSERT INTO pin_prefixes (code, name, kind, valid_from) "
            "VALUES ('097', 'Tỉnh mới', 'province', '2027-01-01')"
        )
        missing = (
            "SELECT array_agg(p.code) FROM pin_prefixes p "
            "LEFT JOIN import_locks l ON l.province_code = p.code WHERE l.province_code IS NULL"
        )
        assert await su.fetchval(missing) is None
        assert await su.fetchval("SELECT count(*) FROM import_locks WHERE province_code = '097'")
    finally:
        await adding.rollback()


async def test_candidates_are_fetched_once_however_many_records_share_their_day(database, su):
    born = PartialDate(1944, 7, 7)
    registered = {
        await insert_citizen(
            su, birth_year=1944, birth_month=7, birth_day=7, registration_province_code="079"
        )
        for _ in range(3)
    }
    alike = [
        record(f"d{k}", date_of_birth=born, registration_province_code="079") for k in range(50)
    ]
    async with database.pool.acquire() as conn:
        found = [c.pin for c in await imports_db.candidates(conn, alike)]
        assert await imports_db.candidates(conn, []) == []
    assert registered <= set(found) and len(found) == len(set(found))
