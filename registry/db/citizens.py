"""The citizens table: one row per person the register knows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from registry.rules.dates import PartialDate
from registry.rules.errors import Code, RegistryError
from registry.rules.model import (
    CITIZEN_FIELD_TABLE,
    BirthRegistration,
    Citizen,
    CitizenField,
    CitizenStatus,
    DeathRegistration,
    Kind,
)

# A chain of PIN re-establishments longer than this is a data error, not a history.
_MAX_REPLACEMENTS = 16


def _select_list() -> str:
    selected = [c for f in CITIZEN_FIELD_TABLE for c in f.columns]
    # legacy_ids live in their own table (one row per linked number).
    selected.append(
        "ARRAY(SELECT l.legacy_id FROM legacy_ids l WHERE l.pin = citizens.pin "
        "ORDER BY l.legacy_id) AS legacy_ids"
    )
    return ", ".join(selected)


COLUMNS = _select_list()
"""The select list of a whole Citizen (from_row reads it), from the field table."""


def _partial(year: int | None, month: int | None, day: int | None) -> PartialDate | None:
    if year is None:
        return None
    return PartialDate(year, month, day)


def _reader(f: CitizenField) -> Callable[[asyncpg.Record], Any]:
    if f.kind is Kind.DATE:
        year, month, day = f.columns
        return lambda row: _partial(row[year], row[month], row[day])
    name = f.columns[0] if f.columns else f.name
    if f.kind is Kind.ENUM:
        assert f.enum is not None
        make = f.enum
        return lambda row: make(row[name])
    if f.kind is Kind.NAMES:
        return lambda row: tuple(row[name])
    return lambda row: row[name]


_READERS = tuple((f.name, _reader(f)) for f in CITIZEN_FIELD_TABLE)


def from_row(row: asyncpg.Record) -> Citizen:
    """Build a Citizen from a row selected with COLUMNS."""
    return Citizen(**{name: read(row) for name, read in _READERS})


async def get(conn: asyncpg.Connection, pin: str, *, for_update: bool = False) -> Citizen | None:
    """Return the citizen with this PIN, optionally locking the row."""
    # NO KEY UPDATE: serialises changes to this citizen (deaths, card issuance) while letting
    # foreign-key checks of rows that reference it (a child's birth, a card) proceed.
    lock = " FOR NO KEY UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM citizens WHERE pin = $1{lock}", pin)
    return None if row is None else from_row(row)


async def get_many(conn: asyncpg.Connection, pins: Sequence[str]) -> dict[str, Citizen]:
    """Return the citizens among these PINs that exist, by PIN."""
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM citizens WHERE pin = ANY($1::text[])", pins)
    return {row["pin"]: from_row(row) for row in rows}


_INSERT_BIRTH = """
WITH claimed AS (
    INSERT INTO idempotency_keys (agency_id, request_id, method, request_hash, result_key, answer)
    VALUES ($14, $15, $16, $17, $1, $22)
)
INSERT INTO citizens (
    pin, full_name, birth_year, birth_month, birth_day, sex, place_of_birth,
    registration_province_code, hometown, ethnicity, nationality, father_pin, mother_pin,
    birth_registration_authority, birth_registration_number, birth_registered_on, created_by,
    create_time, update_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $18, $19, $20, $14, $21, $21)
"""


async def insert_birth(
    conn: asyncpg.Connection,
    pin: str,
    birth: BirthRegistration,
    *,
    at: datetime,
    agency_id: str,
    request_id: str,
    method: str,
    request_hash: bytes,
    answer: bytes,
) -> None:
    """Create the citizen (created at `at`) and claim the idempotency key, keeping the call's
    answer with it, in one durable statement.

    Raises asyncpg.UniqueViolationError naming `idempotency_keys_pkey` (the key is taken) or
    `citizens_pkey` (the number is already held, e.g. by an imported record).
    """
    dob = birth.date_of_birth
    await conn.execute(
        _INSERT_BIRTH,
        pin,
        birth.full_name,
        dob.year,
        dob.month,
        dob.day,
        int(birth.sex),
        birth.place_of_birth,
        birth.registration_province_code,
        birth.hometown,
        birth.ethnicity,
        birth.nationality,
        birth.father_pin,
        birth.mother_pin,
        agency_id,
        request_id,
        method,
        request_hash,
        birth.registration_authority,
        birth.registration_number,
        birth.registered_on,
        at,
        answer,
    )


async def mark_deceased(conn: asyncpg.Connection, death: DeathRegistration) -> Citizen:
    """Record the death on a locked, living citizen row; bump the version."""
    dod = death.date_of_death
    row = await conn.fetchrow(
        f"""
        UPDATE citizens
           SET status = $2, death_year = $3, death_month = $4, death_day = $5,
               death_registration_authority = $6, death_registration_number = $7,
               version = version + 1, update_time = now()
         WHERE pin = $1
        RETURNING {COLUMNS}
        """,
        death.pin,
        int(CitizenStatus.DECEASED),
        dod.year,
        dod.month,
        dod.day,
        death.registration_authority,
        death.registration_number,
    )
    return from_row(row)


async def annul_death(conn: asyncpg.Connection, pin: str) -> Citizen:
    """Reverse the death recorded on a locked, deceased citizen row; bump the version.

    The change feed's trigger records it as UPDATED (the status leaves DECEASED).
    """
    row = await conn.fetchrow(
        f"""
        UPDATE citizens
           SET status = $2, death_year = NULL, death_month = NULL, death_day = NULL,
               death_registration_authority = NULL, death_registration_number = NULL,
               version = version + 1, update_time = now()
         WHERE pin = $1
        RETURNING {COLUMNS}
        """,
        pin,
        int(CitizenStatus.ALIVE),
    )
    return from_row(row)


async def get_existing(conn: asyncpg.Connection, pin: str) -> Citizen:
    """Return a citizen known to exist (a replay's result, a row just written)."""
    citizen = await get(conn, pin)
    if citizen is None:  # citizens are never deleted
        raise RegistryError(Code.INTERNAL, "RECORD_MISSING", "a record known to exist is gone")
    return citizen


async def follow_replacements(conn: asyncpg.Connection, citizen: Citizen) -> tuple[Citizen, bool]:
    """Follow PIN re-establishments to the record in use today; (citizen, replaced)."""
    replaced = False
    for _ in range(_MAX_REPLACEMENTS):
        if citizen.replaced_by_pin is None:
            return citizen, replaced
        citizen, replaced = await get_existing(conn, citizen.replaced_by_pin), True
    raise RegistryError(Code.INTERNAL, "REPLACEMENT_CHAIN_TOO_LONG", "PIN history is inconsistent")


# Citizen fields an update may set, and the columns that hold them.
_COLUMNS_OF = {f.name: f.columns for f in CITIZEN_FIELD_TABLE if f.updatable}
_KIND_OF = {f.name: f.kind for f in CITIZEN_FIELD_TABLE}


def _column_values(field: str, value: object) -> tuple[object, ...]:
    kind = _KIND_OF[field]
    if kind is Kind.DATE:
        assert isinstance(value, PartialDate)
        return value.year, value.month, value.day
    if kind is Kind.NAMES:
        return (list(value),)  # type: ignore[call-overload]
    if kind is Kind.ENUM:
        return (int(value),)  # type: ignore[call-overload]
    return (value,)


async def keep_history(
    conn: asyncpg.Connection,
    pin: str,
    fields: Sequence[str],
    *,
    agency_id: str,
    request_id: str,
    replaced_by_pin: str | None = None,
    reason: str | None = None,
    decision_reference: str | None = None,
) -> None:
    """Store the record as it is now (before the change about to be made) in the history,
    with the decision behind the change when it is a civil-status one."""
    await conn.execute(
        "INSERT INTO citizen_history (pin, version, record, fields, changed_by, request_id, "
        "replaced_by_pin, reason, decision_reference) "
        "SELECT pin, version, to_jsonb(c), $2, $3, $4, $5, $6, $7 FROM citizens c WHERE pin = $1",
        pin,
        list(fields),
        agency_id,
        request_id,
        replaced_by_pin,
        reason,
        decision_reference,
    )


async def update_fields(
    conn: asyncpg.Connection, pin: str, changes: Sequence[tuple[str, object]]
) -> Citizen:
    """Set fields of a locked record and bump its version; return the new record."""
    assignments: list[str] = []
    args: list[object] = [pin]
    for field, value in changes:
        for column, column_value in zip(
            _COLUMNS_OF[field], _column_values(field, value), strict=True
        ):
            args.append(column_value)
            assignments.append(f"{column} = ${len(args)}")
    row = await conn.fetchrow(
        f"UPDATE citizens SET {', '.join(assignments)}, version = version + 1, "
        f"update_time = now() WHERE pin = $1 RETURNING {COLUMNS}",
        *args,
    )
    return from_row(row)


async def insert_reestablished(
    conn: asyncpg.Connection, new_pin: str, record: Citizen, *, old_pin: str, agency_id: str
) -> Citizen:
    """Create the record under its re-established PIN: the old row's data with the changes.

    Copies the columns an update cannot change (registration details, death) from the old
    row; records no BORN event (it is the same person).
    """
    await conn.execute("SELECT set_config('registry.bulk_import', 'on', true)")
    columns = [c for cols in _COLUMNS_OF.values() for c in cols]
    values: list[object] = [new_pin, old_pin, agency_id]
    for field, cols in _COLUMNS_OF.items():
        values.extend(_column_values(field, getattr(record, field)))
        assert len(cols) == len(_column_values(field, getattr(record, field)))
    placeholders = ", ".join(f"${i}" for i in range(4, 4 + len(columns)))
    copied = (
        "birth_registration_authority, birth_registration_number, birth_registered_on, "
        "death_year, death_month, death_day, death_registration_authority, "
        "death_registration_number"
    )
    await conn.execute(
        f"INSERT INTO citizens (pin, created_by, {', '.join(columns)}, {copied}) "
        f"SELECT $1, $3, {placeholders}, {copied} FROM citizens WHERE pin = $2",
        *values,
    )
    await conn.execute("SELECT set_config('registry.bulk_import', 'off', true)")
    return await get_existing(conn, new_pin)


async def cancel_pin(conn: asyncpg.Connection, old_pin: str, new_pin: str) -> None:
    """Cancel a re-established PIN: it points at the new one from now on."""
    await conn.execute(
        "UPDATE citizens SET status = $3, replaced_by_pin = $2, version = version + 1, "
        "update_time = now() WHERE pin = $1",
        old_pin,
        new_pin,
        int(CitizenStatus.PIN_CANCELLED),
    )
    # Cards on the old PIN no longer identify anyone: the holder gets a card for the new one.
    await conn.execute(
        "UPDATE cards SET state = 2, state_reason = 'PIN re-established', update_time = now() "
        "WHERE pin = $1 AND state IN (1, 4)",
        old_pin,
    )
