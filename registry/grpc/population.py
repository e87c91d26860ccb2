"""PopulationService: bulk import, corrections and the change feed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import grpc

from registry.db import changes
from registry.db.pool import Database
from registry.grpc import convert
from registry.grpc.bounds import oversized_fields
from registry.grpc.calls import CallContext, current_call, current_caller, touch
from registry.grpc.disclosure import CitizenAnswer
from registry.rules import imports, updates
from registry.rules.audit import Entry, clean_text
from registry.rules.civil_registration import Violations
from registry.rules.errors import Code, RegistryError, feed_pruned, permission_denied
from registry.rules.pin import PrefixTable
from registry.runtime import clock
from registry.runtime.caches import PrefixCache
from registry.runtime.feed import ChangeFeed
from registry.usecases import corrections, lookup
from registry.usecases import imports as import_runs
from registry.usecases.imports import BatchPipeline
from registry.v1 import change_pb2, citizen_pb2
from registry.v1 import population_service_pb2 as pb
from registry.v1 import population_service_pb2_grpc as pb_grpc

# Events read per query; a watcher far behind catches up in pages of this size.
FEED_PAGE = 500
_KNOWN_TYPES = frozenset(v.number for v in change_pb2.ChangeType.DESCRIPTOR.values) - {0}
# A plain dict: the upb descriptor map matches keys as C strings, so "full_name\x00" would
# find full_name there (a fuzzer found it); caller-supplied paths are looked up here only.
_CITIZEN_FIELDS = dict(citizen_pb2.Citizen.DESCRIPTOR.fields_by_name)
_KNOWN_FIELDS = frozenset(_CITIZEN_FIELDS)


def _raw_values(citizen: citizen_pb2.Citizen, paths: list[str]) -> dict[str, Any]:
    """The raw new value of each masked Citizen field, in plain Python types."""
    values: dict[str, Any] = {}
    for path in paths:
        field = _CITIZEN_FIELDS.get(path)
        if field is not None and (field.message_type is None or _is_date(field)):
            values[path] = _plain(field, getattr(citizen, path))
    return values


def _set_values(citizen: citizen_pb2.Citizen) -> dict[str, Any]:
    """The fields a record sets (non-default), in plain Python types: what an import reads."""
    return {
        field.name: _plain(field, value)
        for field, value in citizen.ListFields()
        if field.message_type is None or _is_date(field)
    }


def _is_date(field: Any) -> bool:
    return field.message_type is not None and field.message_type.full_name == "google.type.Date"


def _plain(field: Any, value: Any) -> Any:
    if _is_date(field):
        return (value.year, value.month, value.day)
    if field.is_repeated:
        return list(value)
    return value


def _prepare_chunk(
    request: pb.ImportCitizenBatchesRequest, table: PrefixTable, today: date
) -> tuple[str, int, int, list[imports.ImportRecord], list[int], list[tuple[int, str, str]]]:
    """Validate a batch: (import_id, offset, received, valid records, their indexes, rejects)."""
    imports.check_chunk(request.import_id, request.offset, len(request.records))
    records: list[imports.ImportRecord] = []
    positions: list[int] = []
    invalid: list[tuple[int, str, str]] = []
    for index, item in enumerate(request.records):
        # A record's own lists within their counts before they are looked at; a record beyond
        # them is rejected on its own, as in ImportCitizens.
        too_many = oversized_fields(item)
        if too_many:
            reason = "; ".join(f"{v.field}: {v.description}" for v in too_many)
            invalid.append((index, imports.reported_source_id(item.source_id), reason))
            continue
        record = imports.validate_record(item.source_id, _set_values(item.citizen), table, today)
        if isinstance(record, str):
            invalid.append((index, imports.reported_source_id(item.source_id), record))
        else:
            records.append(record)
            positions.append(index)
    return request.import_id, request.offset, len(request.records), records, positions, invalid


def validate_watch(
    request: pb.WatchChangesRequest, allowed: frozenset[int]
) -> tuple[int, tuple[int, ...]]:
    """Return (after_sequence, types) of a valid WatchChanges request by an agency registered
    for the `allowed` change types.

    Empty types means every type the agency is registered for. Asking for a type it is not
    registered for is PERMISSION_DENIED naming it, not a silently filtered feed: a caller that
    believes it receives every death must learn that it does not.
    """
    v = Violations()
    if request.after_sequence < 0:
        v.add("after_sequence", "must not be negative (0 = from the beginning of the feed)")
    for index, kind in enumerate(request.types):
        if kind not in _KNOWN_TYPES:
            v.add(
                f"types[{index}]",
                "CHANGE_TYPE_UNSPECIFIED is not a change type (leave types empty for all)"
                if kind == 0
                else f"{kind} is not a known ChangeType",
            )
    v.raise_if_any()
    asked = set(request.types) or set(allowed)
    if not asked:
        raise permission_denied(
            "WATCH_TYPES_NOT_PERMITTED",
            "this agency is registered to receive no change types "
            "(registry agency add --watch-types)",
            types="",
        )
    refused = sorted(asked - allowed)
    if refused:
        names = ",".join(change_pb2.ChangeType.Name(t) for t in refused)
        raise permission_denied(
            "WATCH_TYPES_NOT_PERMITTED",
            f"this agency is not registered to receive: {names}",
            types=names,
        )
    return request.after_sequence, tuple(sorted(asked))


def import_audit_entries(call: CallContext, done: import_runs.BatchResult) -> list[Entry]:
    """Return the audit entries of an imported batch (every import path writes these): the
    citizens it created, and those its records matched as duplicates (outcome
    ALREADY_EXISTS), since the answer's duplicate count told the caller that they exist."""
    entries = []
    if done.created:
        entries.append(call.entry("OK", tuple(done.created), request_id=""))
    if done.matched:
        entries.append(call.entry("ALREADY_EXISTS", tuple(done.matched), request_id=""))
    return entries


class PopulationServicer(pb_grpc.PopulationServiceServicer):
    """The change feed (imports and corrections: later)."""

    def __init__(self, db: Database, feed: ChangeFeed, prefixes: PrefixCache):
        self._db = db
        self._feed = feed
        self._prefixes = prefixes

    async def ImportCitizens(
        self,
        request_iterator: AsyncIterator[pb.ImportCitizensRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.ImportCitizensResponse:
        call = current_call()
        summary = imports.Summary()

        async def write(batch: list[imports.ImportRecord]) -> None:
            done = await import_runs.import_batch(self._db, call.caller.agency_id, batch)
            summary.add_batch(
                len(done.created), done.assigned, done.duplicates, done.mismatched, done.rejects
            )
            entries = import_audit_entries(call, done)
            if entries:
                await call.audit(entries)

        pipeline = BatchPipeline(write)
        try:
            today = clock.today()
            table = self._prefixes.table
            async for request in request_iterator:
                summary.received += 1
                # One record's lists within their counts before any item is looked at; a
                # record beyond them is rejected on its own, like any bad record.
                too_many = oversized_fields(request)
                if too_many:
                    reason = "; ".join(f"{v.field}: {v.description}" for v in too_many)
                    summary.reject(imports.reported_source_id(request.source_id), reason)
                    continue
                record = imports.validate_record(
                    request.source_id,
                    _set_values(request.citizen),
                    table,
                    today,
                )
                if isinstance(record, str):
                    summary.reject(imports.reported_source_id(request.source_id), record)
                    continue
                await pipeline.add(record)
            await pipeline.finish()
        finally:
            await pipeline.close()
        return pb.ImportCitizensResponse(
            received=summary.received,
            created=summary.created,
            assigned_pins=summary.assigned_pins,
            duplicates=summary.duplicates,
            mismatched_pins=summary.mismatched_pins,
            rejected=summary.rejected,
            rejects=[
                pb.ImportReject(source_id=source_id, reason=reason)
                for source_id, reason in summary.rejects
            ],
        )

    async def ImportCitizenBatches(
        self,
        request_iterator: AsyncIterator[pb.ImportCitizenBatchesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ImportCitizenBatchesResponse]:
        """Write each batch in one transaction, in order, acknowledging it once durable.

        The next batch is read and validated while the previous one is being written (one in
        flight: the database's work and ours overlap); it is decided (written, replayed or
        out of range) only after the previous one committed. A batch is acknowledged as soon
        as it commits, whether or not the next has arrived: a client that waits for each
        acknowledgement before sending more is answered.
        """
        call = current_call()
        table, today = self._prefixes.table, clock.today()
        run = import_runs.ChunkedRun(self._db, call.caller.agency_id)
        import_id = ""  # of the batch being written
        requests = request_iterator.__aiter__()
        reading: asyncio.Future[pb.ImportCitizenBatchesRequest] | None = None
        try:
            while True:
                reading = asyncio.ensure_future(requests.__anext__())
                if (done := await self._finish(run, unless=reading)) is not None:
                    yield await self._acknowledge(call, import_id, done)
                try:
                    request = await reading
                    chunk = _prepare_chunk(request, table, today)
                except StopAsyncIteration:
                    break
                except RegistryError:
                    # An invalid batch, or a message that is not one (the gate's stream raises
                    # at it): the batch in flight is written and acknowledged first, so what
                    # the caller was told matches what is stored.
                    if (done := await self._finish(run)) is not None:
                        yield await self._acknowledge(call, import_id, done)
                    raise
                if (done := await self._finish(run)) is not None:
                    yield await self._acknowledge(call, import_id, done)
                import_id = request.import_id
                run.start(*chunk)
            if (done := await self._finish(run)) is not None:
                yield await self._acknowledge(call, import_id, done)
        finally:
            if reading is not None:
                reading.cancel()  # the call ended while waiting for the client
                with contextlib.suppress(BaseException):
                    await reading
            await run.close()

    @staticmethod
    async def _finish(
        run: import_runs.ChunkedRun, unless: asyncio.Future[Any] | None = None
    ) -> import_runs.AckedBatch | None:
        """The batch in flight, acknowledged (None if none; with `unless`, None too while it
        is still being written when `unless` is done first)."""
        try:
            return await (run.finish() if unless is None else run.finish_unless(unless))
        except import_runs.OffsetMismatch as mismatch:
            raise RegistryError(
                Code.OUT_OF_RANGE,
                "IMPORT_OFFSET_MISMATCH",
                f"this import has {mismatch.expected:,} records acknowledged: send the batch "
                f"starting at offset {mismatch.expected} (or resend an acknowledged batch from "
                "its own offset)",
                metadata={"expected_offset": str(mismatch.expected)},
            ) from None

    async def _acknowledge(
        self, call: CallContext, import_id: str, done: import_runs.AckedBatch
    ) -> pb.ImportCitizenBatchesResponse:
        # As ImportCitizens writes them (import_audit_entries): the citizens created and those
        # the records matched, durable before the ack.
        request_id = clean_text(import_id, 128)
        entries = [
            call.entry(outcome, pins, request_id)
            for outcome, pins in (("OK", done.pins), ("ALREADY_EXISTS", done.matched))
            if pins
        ]
        if entries:
            await call.audit(entries)
        return pb.ImportCitizenBatchesResponse(
            offset=done.offset,
            received=done.received,
            created=done.created,
            assigned_pins=done.assigned,
            duplicates=done.duplicates,
            mismatched_pins=done.mismatched,
            rejected=len(done.rejects),
            rejects=[
                pb.ImportReject(index=index, source_id=source_id, reason=reason)
                for index, source_id, reason in done.rejects
            ],
            replayed=done.replayed,
        )

    async def UpdateCitizen(
        self, request: pb.UpdateCitizenRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateCitizenResponse:
        touch(request.citizen.pin)
        paths = list(request.update_mask.paths)
        update = updates.validate_update(
            request.request_id,
            request.citizen.pin,
            paths,
            _raw_values(request.citizen, paths),
            request.expected_version,
            self._prefixes.table,
            clock.today(),
            _KNOWN_FIELDS,
        )
        caller = current_caller()
        answer = CitizenAnswer(caller, update.fields)
        kept, replayed = await corrections.update_citizen(
            self._db, caller, request.request_id, update, answer.render
        )
        citizen = answer.message(kept)
        touch(citizen.pin)
        return pb.UpdateCitizenResponse(citizen=citizen, replayed=replayed)

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        call = current_call()
        cursor, types = validate_watch(request, call.caller.watch_types)
        while True:
            marker = self._feed.marker()
            try:
                events = await lookup.feed_page(self._db, cursor, types, FEED_PAGE)
            except changes.FeedPruned as gap:
                raise feed_pruned(cursor, gap.pruned_through) from None
            if events:
                # A delivery is a disclosure (SPEC §7): each page is in the access history of
                # every citizen it names before it leaves.
                pins = dict.fromkeys(p for e in events for p in (e.pin, e.new_pin) if p)
                await call.audit([call.entry("OK", tuple(pins), request_id="")])
            for e in events:
                event = change_pb2.ChangeEvent(
                    sequence=e.sequence,
                    type=convert.enum_number(e.type),
                    pin=e.pin,
                    new_pin=e.new_pin,
                )
                event.time.FromDatetime(e.time)
                yield pb.WatchChangesResponse(event=event)
                cursor = e.sequence
            if len(events) < FEED_PAGE:
                await self._feed.wait_for_news(marker)
