"""SQL of bulk imports (the run itself is usecases/imports.py): the same-person candidates,
the set-based citizen insert laid out from the field table, import sources and the
acknowledged batches of chunked imports (SPEC §10)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import NamedTuple

import asyncpg

from registry.rules import imports
from registry.rules.model import CITIZEN_FIELD_TABLE, Kind

_SEP = "\x1f"  # joins other_names (validated names never contain control characters)

# SQL array types of the import insert's parameters, by kind (NAMES travel joined by _SEP).
_ARRAY_TYPES = {
    Kind.TEXT: ("text",),
    Kind.PIN_REF: ("text",),
    Kind.NAMES: ("text",),
    Kind.DATE: ("smallint", "smallint", "smallint"),
    Kind.ENUM: ("smallint",),
    Kind.BOOL: ("boolean",),
}
_IMPORTED = tuple(f for f in CITIZEN_FIELD_TABLE if f.imported)


def _insert_statement() -> str:
    """INSERT … SELECT FROM unnest(one array per column) of the imported fields, in order."""
    columns = [c for f in _IMPORTED for c in f.columns]
    types = [t for f in _IMPORTED for t in _ARRAY_TYPES[f.kind]]
    values = [
        f"string_to_array(u.{c}, E'\\x1f')" if f.kind is Kind.NAMES else f"u.{c}"
        for f in _IMPORTED
        for c in f.columns
    ]
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate([*types, "int"], start=1))
    return (
        f"INSERT INTO citizens ({', '.join(columns)}, created_by) "
        f"SELECT {', '.join(values)}, ${len(types) + 2} "
        f"FROM unnest({arrays}) AS u({', '.join(columns)}, ord) "
        "ORDER BY u.ord ON CONFLICT (pin) DO NOTHING RETURNING pin"
    )


_INSERT = _insert_statement()


def _row_function() -> Callable[[imports.ImportRecord, str, int], tuple[object, ...]]:
    """Compile the function that lays one record out as the insert's columns (+ its order).

    Written out from the field table once, like dataclasses write their __init__: a loop over
    the table per record cost 11 µs a record against 3 µs for the unrolled tuple.
    """
    parts: list[str] = []
    for f in _IMPORTED:
        if f.name == "pin":
            parts.append("number")
        elif f.kind is Kind.DATE:
            d = f"r.{f.name}"
            if f.name == "date_of_birth":  # required
                parts += [f"{d}.year", f"{d}.month", f"{d}.day"]
            else:
                parts += [f"None if {d} is None else {d}.{p}" for p in ("year", "month", "day")]
        elif f.kind is Kind.NAMES:
            parts.append(f"SEP.join(r.{f.name})")
        elif f.kind is Kind.PIN_REF:
            parts.append(f"refs.get({f.name!r})")
        elif f.max_length is not None:  # free text: kept in record.texts
            parts.append(f"texts.get({f.name!r}, '')")
        elif f.kind is Kind.ENUM:
            parts.append(f"int(r.{f.name})")
        else:
            parts.append(f"r.{f.name}")
    source = (
        "def row(r, number, order):\n"
        "    texts, refs = dict(r.texts), dict(r.references)\n"
        f"    return ({', '.join(parts)}, order)\n"
    )
    namespace: dict[str, object] = {"SEP": _SEP}
    exec(compile(source, "<import row>", "exec"), namespace)  # our own table, not input
    return namespace["row"]  # type: ignore[return-value]


_ROW = _row_function()


_CANDIDATES = """
SELECT c.pin, c.full_name, c.birth_year, c.birth_month, c.birth_day, c.sex,
       c.registration_province_code, c.father_pin, c.mother_pin
FROM citizens c
JOIN unnest($1::text[], $2::smallint[], $3::smallint[], $4::smallint[], $5::smallint[])
     AS u(province, sex, y, m, d)
  ON c.registration_province_code = u.province AND c.sex = u.sex AND c.birth_year = u.y
 AND coalesce(c.birth_month, 0) = u.m AND coalesce(c.birth_day, 0) = u.d
"""


class Candidate(NamedTuple):
    """A registered citizen born on a day, of a sex and province some incoming record has."""

    pin: str
    full_name: str
    birth_year: int
    birth_month: int | None
    birth_day: int | None
    sex: int
    registration_province_code: str
    father_pin: str | None
    mother_pin: str | None


class StoredBatch(NamedTuple):
    """An acknowledged batch of a chunked import (import_batches row)."""

    first_offset: int
    next_offset: int
    created: int
    assigned: int
    duplicates: int
    mismatched: int
    rejects: list[tuple[int, str, str]]
    """(index in the import run, source_id, reason), in order."""


async def begin_bulk(conn: asyncpg.Connection) -> None:
    """Mark the transaction as a bulk import (the change feed's trigger reads it)."""
    await conn.execute("SELECT set_config('registry.bulk_import', 'on', true)")


async def lock_provinces(conn: asyncpg.Connection, codes: Sequence[str]) -> None:
    """Hold these provinces' import locks until the transaction ends (migration 0021).

    Taken in code order by one statement, before the duplicate lookup: imports of the same
    provinces decide their duplicates one after the other, and cannot deadlock on these rows.
    """
    await conn.execute(
        "SELECT FROM import_locks WHERE province_code = ANY($1::text[]) "
        "ORDER BY province_code FOR UPDATE",
        sorted(set(codes)),
    )


async def sources_seen(
    conn: asyncpg.Connection, agency_id: str, source_ids: Sequence[str]
) -> dict[str, str]:
    """Return the PIN each of these source ids of the agency was imported as, if any."""
    rows = await conn.fetch(
        "SELECT source_id, pin FROM import_sources WHERE agency_id = $1 AND source_id = ANY($2)",
        agency_id,
        list(source_ids),
    )
    return {r["source_id"]: r["pin"] for r in rows}


async def held(conn: asyncpg.Connection, pins: Sequence[str]) -> set[str]:
    """Return those of these PINs that the register holds."""
    rows = await conn.fetch("SELECT pin FROM citizens WHERE pin = ANY($1)", list(pins))
    return {r["pin"] for r in rows}


async def candidates(
    conn: asyncpg.Connection, records: Sequence[imports.ImportRecord]
) -> list[Candidate]:
    """Return the registered citizens with a record's province, sex and date of birth.

    Each (province, sex, date) is asked once: a batch of k people born the same day in the
    same province (a province's file sorted by date has many) would otherwise fetch every
    such citizen k times (7,500 alike records onto 600 registered: 4.5 M rows, 30 s).
    """
    keys = list(
        {
            (
                r.registration_province_code,
                int(r.sex),
                r.date_of_birth.year,
                r.date_of_birth.month or 0,
                r.date_of_birth.day or 0,
            )
            for r in records
        }
    )
    if not keys:
        return []
    rows = await conn.fetch(_CANDIDATES, *(list(column) for column in zip(*keys, strict=True)))
    return [Candidate(*row) for row in rows]


async def insert_citizens(
    conn: asyncpg.Connection,
    agency_id: str,
    rows: Sequence[tuple[imports.ImportRecord, str]],
) -> set[str]:
    """Insert (record, PIN) pairs in order, skipping PINs held meanwhile; return those written."""
    if not rows:
        return set()
    laid_out = (_ROW(record, number, order) for order, (record, number) in enumerate(rows))
    columns = [list(column) for column in zip(*laid_out, strict=True)]
    inserted = await conn.fetch(_INSERT, *columns, agency_id)
    return {r["pin"] for r in inserted}


async def record_sources(
    conn: asyncpg.Connection, agency_id: str, pairs: Sequence[tuple[str, str]]
) -> None:
    """Remember the (source_id, PIN) of each citizen an agency's import created.

    Raises SourceTaken when another import of the agency committed one of these source ids
    meanwhile (with a record of other provinces, so not held off by the province locks).
    """
    try:
        await conn.execute(
            "INSERT INTO import_sources (agency_id, source_id, pin) "
            "SELECT $1, s, p FROM unnest($2::text[], $3::text[]) AS u(s, p)",
            agency_id,
            [s for s, _ in pairs],
            [p for _, p in pairs],
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "import_sources_pkey":
            raise SourceTaken from None
        raise


class SourceTaken(Exception):
    """A concurrent import of the same agency committed a source id this batch also has."""


_LAST_BATCH = """
SELECT next_offset FROM import_batches
 WHERE agency_id = $1 AND import_id = $2
 ORDER BY first_offset DESC LIMIT 1
"""
_ACKED = """
SELECT first_offset, next_offset, created, assigned_pins, duplicates, mismatched_pins, rejects
  FROM import_batches WHERE agency_id = $1 AND import_id = $2 AND first_offset = $3
"""
_CLAIM = """
INSERT INTO import_batches (agency_id, import_id, first_offset, next_offset)
VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true
"""
_SETTLE = """
UPDATE import_batches
   SET created = $4, assigned_pins = $5, duplicates = $6, mismatched_pins = $7, rejected = $8,
       rejects = $9::jsonb
 WHERE agency_id = $1 AND import_id = $2 AND first_offset = $3
"""


async def acknowledged(conn: asyncpg.Connection, agency_id: str, import_id: str) -> int:
    """Return how many records of the import run are acknowledged."""
    value = await conn.fetchval(_LAST_BATCH, agency_id, import_id)
    return 0 if value is None else int(value)


async def latest_run(
    conn: asyncpg.Connection, agency_id: str, prefix: str
) -> tuple[str, int] | None:
    """Return (import_id, records acknowledged) of the agency's newest run whose import_id
    starts with prefix, or None."""
    row = await conn.fetchrow(
        "SELECT import_id, next_offset FROM import_batches "
        "WHERE agency_id = $1 AND starts_with(import_id, $2) "
        "ORDER BY acknowledged_at DESC, first_offset DESC LIMIT 1",
        agency_id,
        prefix,
    )
    return None if row is None else (row["import_id"], int(row["next_offset"]))


async def stored_batch(
    conn: asyncpg.Connection, agency_id: str, import_id: str, offset: int
) -> StoredBatch | None:
    """Return the acknowledged batch of the import run starting at offset, if any."""
    row = await conn.fetchrow(_ACKED, agency_id, import_id, offset)
    if row is None:
        return None
    return StoredBatch(
        first_offset=row["first_offset"],
        next_offset=row["next_offset"],
        created=row["created"],
        assigned=row["assigned_pins"],
        duplicates=row["duplicates"],
        mismatched=row["mismatched_pins"],
        rejects=[(int(i), str(s), str(r)) for i, s, r in json.loads(row["rejects"])],
    )


async def claim_batch(
    conn: asyncpg.Connection, agency_id: str, import_id: str, offset: int, next_offset: int
) -> bool:
    """Claim the batch's row; False when a racing stream holds it (its transaction decides)."""
    return bool(await conn.fetchval(_CLAIM, agency_id, import_id, offset, next_offset))


async def settle_batch(
    conn: asyncpg.Connection,
    agency_id: str,
    import_id: str,
    offset: int,
    counts: tuple[int, int, int, int],
    rejects: Sequence[tuple[int, str, str]],
) -> None:
    """Record what a claimed batch did: (created, assigned, duplicates, mismatched), rejects."""
    created, assigned, duplicates, mismatched = counts
    await conn.execute(
        _SETTLE, agency_id, import_id, offset, created, assigned, duplicates, mismatched,
        len(rejects), json.dumps(list(rejects)),
    )  # fmt: skip
