"""registry/db/imports.py against PostgreSQL, as the server's runtime role: the lookups, the
insert laid out from the field table and the acknowledged batches (the run itself is tested in
tests/usecases/test_imports.py)."""

from __future__ import annotations

import uuid

from registry.db import citizens
from registry.db import imports as imports_db
from registry.rules.dates import PartialDate
from registry.rules.imports import ImportRecord
from registry.rules.model import BloodType, CitizenStatus, MaritalStatus, Sex
from tests.db.records import fresh_name, fresh_pin, insert_citizen


def agency() -> str:
    return f"importer-{uuid.uuid4().hex[:10]}"


def full_record(number: str, mother: str) -> ImportRecord:
    """A record with every imported field set to something other than its default."""
    return ImportRecord(
        source_id=f"src-{number}",
        pin=number,
        pin_mismatch=True,
        full_name=fresh_name("Lê Thị"),
        date_of_birth=PartialDate(1961, 2),
        sex=Sex.FEMALE,
        registration_province_code=number[:3],
        other_names=("Bé Hai", "Hai"),
        texts=(
            ("place_of_birth", "Hà Nội"), ("hometown", "Huế"), ("ethnicity", "Tày"),
            ("religion", "Phật giáo"), ("permanent_address", "1 Tràng Tiền"),
            ("temporary_address", "2 Lê Lợi"), ("current_address", "3 Hàng Bài"),
        ),
        nationality="VN",
        blood_type=int(BloodType.AB),
        marital_status=int(MaritalStatus.WIDOWED),
        status=int(CitizenStatus.DECEASED),
        date_of_death=PartialDate(2020, 7, 9),
        references=(
            ("father_pin", None), ("mother_pin", mother), ("spouse_pin", None),
            ("representative_pin", mother),
        ),
    )  # fmt: skip


async def test_insert_citizens_stores_every_imported_field_as_read_back(rt):
    mother = await insert_citizen(rt, sex=int(Sex.FEMALE))
    number = fresh_pin(Sex.FEMALE, 1961)
    record = full_record(number, mother)
    async with rt.transaction():
        assert await imports_db.insert_citizens(rt, "importer-x", [(record, number)]) == {number}
    stored = await citizens.get(rt, number)
    assert stored is not None
    assert (stored.pin, stored.full_name, stored.other_names, stored.date_of_birth) == (
        number, record.full_name, ("Bé Hai", "Hai"), PartialDate(1961, 2),
    )  # fmt: skip
    assert (stored.sex, stored.registration_province_code, stored.nationality) == (
        Sex.FEMALE, number[:3], "VN",
    )  # fmt: skip
    assert {name: getattr(stored, name) for name, _ in record.texts} == dict(record.texts)
    assert (stored.blood_type, stored.marital_status, stored.status) == (
        BloodType.AB, MaritalStatus.WIDOWED, CitizenStatus.DECEASED,
    )  # fmt: skip
    assert stored.date_of_death == PartialDate(2020, 7, 9)
    assert (stored.father_pin, stored.mother_pin, stored.spouse_pin) == (None, mother, None)
    assert stored.representative_pin == mother and stored.pin_mismatch is True


async def test_insert_citizens_skips_a_pin_held_and_keeps_the_order(rt):
    taken = await insert_citizen(rt)
    first, last = fresh_pin(), fresh_pin()
    rows = [(full_record(p, taken), p) for p in (first, taken, last)]
    async with rt.transaction():
        assert await imports_db.insert_citizens(rt, "importer-x", rows) == {first, last}
    assert await imports_db.insert_citizens(rt, "importer-x", []) == set()
    a, b = await citizens.get(rt, first), await citizens.get(rt, last)
    assert a is not None and b is not None and a.create_time is not None
    assert await rt.fetchval("SELECT created_by FROM citizens WHERE pin = $1", last) == "importer-x"


async def test_lookups_of_held_pins_sources_and_same_person_candidates(rt):
    who = agency()
    mother = await insert_citizen(rt, sex=int(Sex.FEMALE))
    held = await insert_citizen(rt, birth_year=1944, birth_month=None, birth_day=None)
    assert await imports_db.held(rt, [held, mother, fresh_pin()]) == {held, mother}
    assert await imports_db.held(rt, []) == set()
    await imports_db.record_sources(rt, who, [("a-1", held), ("a-2", mother)])
    assert await imports_db.sources_seen(rt, who, ["a-1", "a-2", "a-3"]) == {
        "a-1": held, "a-2": mother,
    }  # fmt: skip
    assert await imports_db.sources_seen(rt, agency(), ["a-1"]) == {}
    # The candidate query compares the date at the register's precision (unknown = 0).
    probe = full_record(fresh_pin(Sex.MALE, 1944, held[:3]), mother)
    same_day = ImportRecord(**{**probe.__dict__, "sex": Sex.MALE,
                                "date_of_birth": PartialDate(1944)})  # fmt: skip
    other_month = ImportRecord(**{**same_day.__dict__, "date_of_birth": PartialDate(1944, 1)})
    found = await imports_db.candidates(rt, [same_day])
    assert held in {c.pin for c in found}
    match = next(c for c in found if c.pin == held)
    assert (match.birth_year, match.birth_month, match.birth_day, match.sex) == (
        1944,
        None,
        None,
        1,
    )
    assert held not in {c.pin for c in await imports_db.candidates(rt, [other_month])}


async def test_batches_are_claimed_once_settled_and_read_back(rt):
    who, run = agency(), f"run-{uuid.uuid4().hex[:8]}"
    assert await imports_db.acknowledged(rt, who, run) == 0
    assert await imports_db.stored_batch(rt, who, run, 0) is None
    async with rt.transaction():
        assert await imports_db.claim_batch(rt, who, run, 0, 3)
        await imports_db.settle_batch(rt, who, run, 0, (2, 1, 0, 1), [(2, "s-2", "bad date")])
    assert not await imports_db.claim_batch(rt, who, run, 0, 3)
    assert await imports_db.acknowledged(rt, who, run) == 3
    assert await imports_db.stored_batch(rt, who, run, 0) == imports_db.StoredBatch(
        0, 3, 2, 1, 0, 1, [(2, "s-2", "bad date")]
    )
    assert await imports_db.latest_run(rt, who, "run-") == (run, 3)
