"""Import runs (ImportCitizens, ImportCitizenBatches, `registry import`): each batch of valid
records written in one transaction — duplicates dropped, references checked, PINs drawn per
bucket, one set-based insert — while the next batch is validated.

The rules of a record are in rules/imports.py, the SQL in db/imports.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from registry.db import imports as imports_db
from registry.db import pins as buckets
from registry.db.pool import Database
from registry.rules import imports, names
from registry.rules import pin as pins
from registry.rules.errors import Code, RegistryError
from registry.rules.imports import BATCH, ImportRecord

_Result = TypeVar("_Result")


class BatchPipeline:
    """Gathers valid records into batches of BATCH and has `write` store each, one batch at a
    time and in order (parents before their children), while the caller goes on reading and
    validating the next: the database's work and ours overlap.

    Call `finish()` after the last record, and `close()` in any case (it stops a write still
    running when the import is abandoned). A failed write raises from the next `add()` or
    from `finish()`.
    """

    def __init__(self, write: Callable[[list[ImportRecord]], Coroutine[Any, Any, None]]):
        self._write = write
        self._batch: list[ImportRecord] = []
        self._writing: asyncio.Task[None] | None = None

    async def add(self, record: ImportRecord) -> None:
        self._batch.append(record)
        if len(self._batch) % 50 == 0:
            # A caller reading a file never waits otherwise; the writer needs the loop to
            # exchange its statements with the database.
            await asyncio.sleep(0)
        if len(self._batch) >= BATCH:
            await self._hand_over()

    async def finish(self) -> None:
        """Write what is left and wait until every batch is stored."""
        if self._batch:
            await self._hand_over()
        if self._writing is not None:
            await self._writing

    async def close(self) -> None:
        if self._writing is not None and not self._writing.done():
            self._writing.cancel()
            with contextlib.suppress(BaseException):
                await self._writing

    async def _hand_over(self) -> None:
        if self._writing is not None:
            await self._writing  # one batch in flight at a time
        self._writing = asyncio.create_task(self._write(self._batch))
        self._batch = []


@dataclass
class BatchResult:
    """What one batch did. Rejects are (position of the record in the batch written, source_id,
    reason)."""

    created: list[str] = field(default_factory=list)
    assigned: int = 0
    duplicates: int = 0
    mismatched: int = 0
    rejects: list[tuple[int, str, str]] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    """PINs of citizens already in the register that records were found to duplicate: the
    import learned that they exist, so their access histories say so."""


@dataclass(frozen=True)
class AckedBatch:
    """A batch of a chunked import as acknowledged (import_batches row)."""

    offset: int
    received: int
    created: int
    assigned: int
    duplicates: int
    mismatched: int
    rejects: list[tuple[int, str, str]]
    """(index in the import run, source_id, reason), in order."""
    replayed: bool
    pins: tuple[str, ...] = ()
    """The PINs created (empty for a replay): what the batch's audit entry names."""
    matched: tuple[str, ...] = ()
    """PINs of existing citizens its records duplicated (empty for a replay): audited too."""


class OffsetMismatch(Exception):
    """The batch's offset is neither the acknowledged count nor an acknowledged batch's start."""

    def __init__(self, expected: int):
        super().__init__(expected)
        self.expected = expected


class ChunkedRun:
    """The batches of a chunked import (ImportCitizenBatches, `registry import`), written one
    at a time and in order by `import_chunk`, while the caller reads and validates the next.

    For each batch: `finish()` (the batch in flight, acknowledged: the caller audits and
    answers it), then `start(...)` this one; `finish()` after the last. `finish_unless(f)`
    acknowledges the batch in flight early if it commits before `f` (the next message) is
    done, so an acknowledgement never waits for the next batch. `finish` raises what
    the write raised (OffsetMismatch). Call `close()` in any case: it stops a write still
    running when the run is abandoned.
    """

    def __init__(self, db: Database, agency_id: str):
        self._db = db
        self._agency_id = agency_id
        self._writing: asyncio.Task[AckedBatch] | None = None

    def start(
        self,
        import_id: str,
        offset: int,
        received: int,
        records: Sequence[ImportRecord],
        positions: Sequence[int],
        invalid: Sequence[tuple[int, str, str]],
    ) -> None:
        """Start writing a batch; `finish()` the one before first (one in flight at a time)."""
        assert self._writing is None, "finish() the batch in flight first"
        self._writing = asyncio.create_task(
            import_chunk(
                self._db, self._agency_id, import_id, offset, received, records, positions,
                invalid,
            )
        )  # fmt: skip

    async def finish(self) -> AckedBatch | None:
        """Wait for the batch being written; return its acknowledgement (None if none)."""
        writing = self._writing
        if writing is None:
            return None
        try:
            return await writing
        finally:
            if writing.done():  # else (we were cancelled) close() stops it
                self._writing = None

    async def finish_unless(self, other: asyncio.Future[Any]) -> AckedBatch | None:
        """The batch in flight's acknowledgement if it is written before `other` is done;
        None if not (it stays in flight: `finish()` it later) or if there is none."""
        writing = self._writing
        if writing is None:
            return None
        await asyncio.wait({writing, other}, return_when=asyncio.FIRST_COMPLETED)
        return await self.finish() if writing.done() else None

    async def close(self) -> None:
        if self._writing is not None and not self._writing.done():
            self._writing.cancel()
            with contextlib.suppress(BaseException):
                await self._writing


async def import_batch(
    db: Database, agency_id: str, records: Sequence[imports.ImportRecord]
) -> BatchResult:
    """Write a batch of valid records in one transaction."""

    async def once(conn: asyncpg.Connection) -> BatchResult:
        async with conn.transaction():
            return await _write(db, conn, agency_id, records)

    return await _in_passes(db, once)


async def import_chunk(
    db: Database,
    agency_id: str,
    import_id: str,
    offset: int,
    received: int,
    records: Sequence[imports.ImportRecord],
    positions: Sequence[int],
    invalid: Sequence[tuple[int, str, str]],
) -> AckedBatch:
    """Write one batch of a chunked import in one transaction, or answer it again (SPEC §10).

    records are the batch's valid records and positions their indexes in the batch; invalid
    are the records rejected before (index in the batch, source_id, reason). Raises
    OffsetMismatch when the offset is neither the acknowledged count nor an acknowledged
    batch's start.
    """

    async def once(conn: asyncpg.Connection) -> AckedBatch:
        async with conn.transaction():
            done = await imports_db.acknowledged(conn, agency_id, import_id)
            if offset != done:
                stored = await imports_db.stored_batch(conn, agency_id, import_id, offset)
                if stored is None:
                    raise OffsetMismatch(done)
                return _replayed(stored)
            # The row is claimed first: a second stream sending the same batch waits here
            # for this transaction and then finds it acknowledged.
            if not await imports_db.claim_batch(
                conn, agency_id, import_id, offset, offset + received
            ):
                raise _ClaimedElsewhere
            result = await _write(db, conn, agency_id, records)
            acked = AckedBatch(
                offset=offset,
                received=received,
                created=len(result.created),
                assigned=result.assigned,
                duplicates=result.duplicates,
                mismatched=result.mismatched,
                rejects=sorted(
                    [(offset + i, s, r) for i, s, r in invalid]
                    + [(offset + positions[p], s, r) for p, s, r in result.rejects]
                ),
                replayed=False,
                pins=tuple(result.created),
                matched=tuple(result.matched),
            )
            counts = (acked.created, acked.assigned, acked.duplicates, acked.mismatched)
            await imports_db.settle_batch(conn, agency_id, import_id, offset, counts, acked.rejects)
            return acked

    return await _in_passes(db, once)


class _ClaimedElsewhere(Exception):
    """A racing stream claimed the batch's row first: its row answers on the next pass."""


_ATTEMPTS = 3
"""Passes over a batch that collided with a concurrent import (see _write) before the caller
is told to retry."""


async def _in_passes(
    db: Database, once: Callable[[asyncpg.Connection], Awaitable[_Result]]
) -> _Result:
    """Run `once` (a batch's transaction) again when it collided with a concurrent import:
    a racing stream claimed the batch (its row answers now) or committed one of its source ids
    (a duplicate now). ABORTED after _ATTEMPTS passes."""
    async with db.pool.acquire() as conn:
        for _ in range(_ATTEMPTS):
            try:
                return await once(conn)
            except (_ClaimedElsewhere, imports_db.SourceTaken):
                continue
    raise RegistryError(
        Code.ABORTED,
        "CONCURRENT_UPDATE",
        "the batch collided with a concurrent import of the same source ids; send it again",
        retry_after_s=0.1,
    )


def _replayed(stored: imports_db.StoredBatch) -> AckedBatch:
    return AckedBatch(
        offset=stored.first_offset,
        received=stored.next_offset - stored.first_offset,
        created=stored.created,
        assigned=stored.assigned,
        duplicates=stored.duplicates,
        mismatched=stored.mismatched,
        rejects=stored.rejects,
        replayed=True,
    )


async def _write(
    db: Database,
    conn: asyncpg.Connection,
    agency_id: str,
    records: Sequence[imports.ImportRecord],
) -> BatchResult:
    result = BatchResult()
    await imports_db.begin_bulk(conn)
    # Concurrent imports of the same provinces decide duplicates one after the other (0021);
    # the same source id with records of other provinces is caught at import_sources' key
    # (SourceTaken: the caller decides the batch again and finds it there).
    await imports_db.lock_provinces(
        conn,
        [r.registration_province_code for r in records]
        + [r.pin[:3] for r in records if r.pin is not None],
    )
    todo = await _drop_duplicates(conn, agency_id, records, result)
    todo = await _drop_unknown_references(conn, records, todo, result)
    assigned = await _assign_pins(db, conn, [records[p] for p in todo])
    rows: list[tuple[imports.ImportRecord, str]] = []
    for i, position in enumerate(todo):
        record = records[position]
        number = assigned.get(i, record.pin)
        if number is None:
            bucket = pins.bucket_for(
                record.registration_province_code, record.sex, record.date_of_birth.year
            )
            result.rejects.append(
                (position, record.source_id, f"every PIN of bucket {bucket} has been issued")
            )
        else:
            rows.append((record, number))
    inserted = await imports_db.insert_citizens(conn, agency_id, rows)
    for record, number in rows:
        if number in inserted:
            result.created.append(number)
            result.assigned += record.pin is None
            result.mismatched += record.pin_mismatch
        else:
            # Only a given PIN can collide here (assigned ones were checked free under
            # the bucket counter): held by a record that committed meanwhile.
            result.duplicates += 1
            result.matched.append(number)
    created = set(result.created)
    await imports_db.record_sources(
        conn, agency_id, [(r.source_id, n) for r, n in rows if n in created]
    )
    return result


async def _drop_duplicates(
    conn: asyncpg.Connection,
    agency_id: str,
    records: Sequence[imports.ImportRecord],
    result: BatchResult,
) -> list[int]:
    """Return the positions of the records that are not duplicates."""
    seen_sources = await imports_db.sources_seen(conn, agency_id, [r.source_id for r in records])
    held = await imports_db.held(conn, [r.pin for r in records if r.pin is not None])
    # (father, mother, pin): pin None for a person first seen earlier in this batch.
    candidates: dict[tuple[object, ...], list[tuple[str | None, str | None, str | None]]] = {}
    for row in await imports_db.candidates(conn, records):
        key = (
            names.match_key(row.full_name),
            row.birth_year,
            row.birth_month,
            row.birth_day,
            row.sex,
            row.registration_province_code,
        )
        candidates.setdefault(key, []).append((row.father_pin, row.mother_pin, row.pin))
    kept: list[int] = []
    batch_sources: set[str] = set()
    batch_pins: set[str] = set()
    for position, record in enumerate(records):
        key = imports.person_key(record)
        same_person = [
            pin for f, m, pin in candidates.get(key, ()) if imports.same_parents(record, f, m)
        ]
        if record.source_id in seen_sources:
            matched: str | None = seen_sources[record.source_id]
        elif record.pin is not None and record.pin in held:
            matched = record.pin
        else:
            matched = next((pin for pin in same_person if pin is not None), None)
        duplicate = (
            matched is not None
            or record.source_id in batch_sources
            or (record.pin is not None and record.pin in batch_pins)
            or bool(same_person)
        )
        if duplicate:
            result.duplicates += 1
            if matched is not None and matched not in result.matched:
                result.matched.append(matched)
            continue
        kept.append(position)
        batch_sources.add(record.source_id)
        if record.pin is not None:
            batch_pins.add(record.pin)
        father, mother = record.reference("father_pin"), record.reference("mother_pin")
        candidates.setdefault(key, []).append((father, mother, None))
    return kept


async def _drop_unknown_references(
    conn: asyncpg.Connection,
    records: Sequence[imports.ImportRecord],
    todo: list[int],
    result: BatchResult,
) -> list[int]:
    wanted = {p for i in todo for _, p in records[i].references if p is not None}
    if not wanted:
        return todo
    known = await imports_db.held(conn, list(wanted))
    known |= {p for i in todo if (p := records[i].pin) is not None}
    kept = []
    for position in todo:
        record = records[position]
        missing = [f"{n} {p}" for n, p in record.references if p is not None and p not in known]
        if missing:
            result.rejects.append(
                (
                    position,
                    record.source_id,
                    f"not in the register: {', '.join(missing)} (import them first)",
                )
            )
        else:
            kept.append(position)
    return kept


async def _assign_pins(
    db: Database, conn: asyncpg.Connection, records: Sequence[imports.ImportRecord]
) -> dict[int, str]:
    """Draw PINs for the records without one: one counter reservation for all their buckets.

    Records of a full bucket get none (the caller rejects them).
    """
    assigned: dict[int, str] = {}
    waiting = imports.buckets_needed(records)
    while waiting:
        async with db.counters.acquire() as counter_conn:
            reserved = await buckets.reserve_many(
                counter_conn,
                {b: len(indexes) for b, indexes in waiting.items()},
                secret=db.pin_secret,
            )
        drawn: dict[int, str] = {}
        for bucket, indexes in waiting.items():
            if bucket in reserved:
                first, key = reserved[bucket]
                numbers = pins.allocate_many(bucket, key, first, len(indexes))
                drawn.update(zip(indexes, numbers, strict=True))
        # A drawn number may already be held by an imported record that kept its own PIN.
        held = await imports_db.held(conn, list(drawn.values()))
        retry: dict[pins.Bucket, list[int]] = {}
        for bucket, indexes in waiting.items():
            for index in indexes:
                number = drawn.get(index)
                if number is None:
                    continue  # full bucket
                if number in held:
                    retry.setdefault(bucket, []).append(index)
                else:
                    assigned[index] = number
        waiting = retry
    return assigned
