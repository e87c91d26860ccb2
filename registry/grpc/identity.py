"""IdentityService: verification and lookups for portals, banks and agencies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import date

import grpc

from registry.db.pool import Database
from registry.grpc import convert
from registry.grpc.calls import CallContext, audited_pins, current_call, current_caller, touch
from registry.grpc.errors import to_status_proto
from registry.rules import cards
from registry.rules.audit import Entry, clean_text
from registry.rules.civil_registration import Violations, require_pin
from registry.rules.errors import RegistryError
from registry.rules.identity import (
    Claim,
    Outcome,
    attestation_claims,
    validate_claim,
)
from registry.rules.imports import check_batch_size
from registry.rules.model import Caller
from registry.runtime import clock
from registry.runtime.attestation import SigningKeys
from registry.usecases import cards as card_issuance
from registry.usecases import lookup
from registry.usecases.budgets import Answer, Budgets
from registry.v1 import identity_service_pb2 as pb
from registry.v1 import identity_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Claims verified per query in BatchVerify: large enough to amortise the round trip, small
# enough to keep answers flowing back while the caller is still sending.
BATCH_SIZE = 512
BATCH_WAIT_S = 0.02
_END = None
# VerifyIdentityBatches: batches checked ahead of the one whose audit entries are committing.
PIPELINE_DEPTH = 2


_Arrival = pb.VerifyIdentityRequest | RegistryError | None
_Checked = tuple[list[pb.VerifyIdentityResponse], "asyncio.Future[None] | None"] | Exception | None


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a batch's audit outcome as seen: the answering loop may have stopped before it
    (its own failure is raised there), and asyncio would log it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def _next_batch(
    arrived: asyncio.Queue[_Arrival],
) -> tuple[list[pb.VerifyIdentityRequest], RegistryError | bool]:
    """Take the next batch: up to BATCH_SIZE requests or BATCH_WAIT_S after the first one.

    Returns (requests, stop): stop is False to go on, True when the caller finished sending,
    or the error that ends the stream once these requests are answered (a corrupt message).
    Waiting a few milliseconds for company costs a bulk caller nothing and saves a query per
    request when requests trickle in.
    """
    batch: list[pb.VerifyIdentityRequest] = []
    loop = asyncio.get_running_loop()
    deadline = 0.0
    while len(batch) < BATCH_SIZE:
        if not batch:
            item = await arrived.get()
            deadline = loop.time() + BATCH_WAIT_S
        elif arrived.empty():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    item = await arrived.get()
            except TimeoutError:
                break
        else:
            item = arrived.get_nowait()
        if item is _END:
            return batch, True
        if isinstance(item, RegistryError):
            return batch, item
        batch.append(item)
    return batch, False


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    """Answer whether identity data matches the register, and what an agency may read."""

    def __init__(self, db: Database, keys: SigningKeys, budgets: Budgets):
        self._db = db
        self._keys = keys
        self._budgets = budgets

    def _response(
        self, caller: Caller, claim: Claim, outcome: Outcome, want_attestation: bool
    ) -> pb.VerifyIdentityResponse:
        response = pb.VerifyIdentityResponse(
            result=convert.enum_number(outcome.result),
            field_matches=outcome.field_matches,
            citizen_status=convert.enum_number(outcome.citizen_status or 0),
            card_state=convert.enum_number(outcome.card_state or 0),
            correlation_id=claim.correlation_id,
        )
        if want_attestation:
            response.attestation = self._keys.sign(
                attestation_claims(claim, outcome, caller.agency_id)
            )
        return response

    async def VerifyIdentity(
        self, request: pb.VerifyIdentityRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyIdentityResponse:
        caller = current_caller()
        claim = validate_claim(convert.raw_claim(request))
        [answer] = await self._budgets.verify(caller, [claim], clock.today())
        if answer.error is not None:
            raise answer.error
        assert answer.outcome is not None
        return self._response(caller, claim, answer.outcome, request.want_attestation)

    async def BatchVerify(
        self,
        request_iterator: AsyncIterator[pb.VerifyIdentityRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.VerifyIdentityResponse]:
        call = current_call()
        arrived: asyncio.Queue[_Arrival] = asyncio.Queue(BATCH_SIZE * 4)

        async def read() -> None:
            # Ends the batches when the caller stops sending (or its stream breaks). When we
            # cancel this task ourselves nobody is waiting for the marker, and putting it into
            # a full queue would hang: so no `finally` here.
            try:
                async for request in request_iterator:
                    await arrived.put(request)
            except RegistryError as error:
                await arrived.put(error)  # a corrupt message: answered after those before it
                return
            except Exception as exc:
                log.info("BatchVerify request stream ended: %s", type(exc).__name__)
            await arrived.put(_END)

        reader = asyncio.create_task(read())
        try:
            stop: RegistryError | bool = False
            while stop is False:
                requests, stop = await _next_batch(arrived)
                if requests:
                    responses, refusal = await self._verify_items(
                        call, requests, clock.today(), stop_at_refusal=True
                    )
                    for response in responses:
                        yield response
                    if refusal is not None:
                        stop = refusal
            if isinstance(stop, RegistryError):
                raise stop
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _verify_items(
        self,
        call: CallContext,
        requests: Sequence[pb.VerifyIdentityRequest],
        today: date,
        *,
        stop_at_refusal: bool,
    ) -> tuple[list[pb.VerifyIdentityResponse], RegistryError | None]:
        """Verify a batch (`_check_items`) and return its answers once their entries are
        durable."""
        answers, entries, refusal = await self._check_items(
            call, requests, today, stop_at_refusal=stop_at_refusal
        )
        if entries:
            await call.audit(entries)
        return answers, refusal

    async def _check_items(
        self,
        call: CallContext,
        requests: Sequence[pb.VerifyIdentityRequest],
        today: date,
        *,
        stop_at_refusal: bool,
    ) -> tuple[list[pb.VerifyIdentityResponse], list[Entry], RegistryError | None]:
        """Verify a batch with one query, in order; each item validated, budgeted, attested and
        given its audit entry on its own (a malformed item's error is its answer, the others
        go on). Returns (answers, entries, refusal): no answer may leave before the entries
        are durable.

        Each verification gets its own audit entry (the citizen's history shows it like a unary
        one). With `stop_at_refusal` (BatchVerify), an item the agency's miss budget ran out at
        ends the stream: the items before it are answered, it is recorded, nothing after it
        is either, and its error is returned. Without (VerifyIdentityBatches), that refusal is
        the item's answer and the batch goes on, as VerifyIdentity's would (usecases.budgets).
        """
        caller = call.caller
        answers: list[pb.VerifyIdentityResponse | None] = [None] * len(requests)
        entries: list[Entry | None] = [None] * len(requests)
        valid: list[tuple[int, Claim]] = []
        for index, request in enumerate(requests):
            try:
                valid.append((index, validate_claim(convert.raw_claim(request))))
            except RegistryError as error:
                answers[index] = pb.VerifyIdentityResponse(
                    correlation_id=request.correlation_id, error=to_status_proto(error)
                )
                pins = audited_pins(request.pin)
                if pins:
                    entries[index] = call.entry(error.code.value, pins, _request_id(request))
        refusal: RegistryError | None = None
        stop_at = len(requests)
        if valid:
            results = await self._budgets.verify(caller, [c for _, c in valid], today)
            for (index, claim), result in zip(valid, results, strict=True):
                request = requests[index]
                outcome = "OK" if result.error is None else result.error.code.value
                entries[index] = call.entry(outcome, (claim.pin,), _request_id(request))
                if stop_at_refusal and result.stops:
                    refusal, stop_at = result.error, index
                    break
                answers[index] = self._answer(caller, claim, result, request)
        written = [e for e in entries[: stop_at + 1] if e is not None]
        return [a for a in answers[:stop_at] if a is not None], written, refusal

    def _answer(
        self, caller: Caller, claim: Claim, result: Answer, request: pb.VerifyIdentityRequest
    ) -> pb.VerifyIdentityResponse:
        if result.error is not None:
            return pb.VerifyIdentityResponse(
                correlation_id=claim.correlation_id, error=to_status_proto(result.error)
            )
        assert result.outcome is not None
        return self._response(caller, claim, result.outcome, request.want_attestation)

    async def VerifyIdentityBatches(
        self,
        request_iterator: AsyncIterator[pb.VerifyIdentityBatchesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.VerifyIdentityBatchesResponse]:
        """Answer each batch in order, one answer per request, once its audit is durable.

        Pipelined: while a batch's entries are being committed (the audit writer gathers and
        writes them), the next batch is already validated and checked against the register, up
        to PIPELINE_DEPTH batches ahead of the answers. Entries are submitted in batch order,
        and a batch is answered only after its own entries are durable.
        """
        call = current_call()
        checked: asyncio.Queue[_Checked] = asyncio.Queue(PIPELINE_DEPTH)

        async def check() -> None:
            try:
                async for batch in request_iterator:
                    v = Violations()
                    check_batch_size(v, "requests", len(batch.requests))
                    v.raise_if_any()
                    answers, entries, _ = await self._check_items(
                        call, batch.requests, clock.today(), stop_at_refusal=False
                    )
                    durable = asyncio.ensure_future(call.audit(entries)) if entries else None
                    if durable is not None:
                        durable.add_done_callback(_retrieved)
                    await checked.put((answers, durable))
            except Exception as error:  # answered after the batches before it
                await checked.put(error)
                return
            await checked.put(None)

        worker = asyncio.create_task(check())
        try:
            while (item := await checked.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                answers, durable = item
                if durable is not None:
                    await durable
                yield pb.VerifyIdentityBatchesResponse(responses=answers)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def GetCitizen(
        self, request: pb.GetCitizenRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCitizenResponse:
        caller = current_caller()
        pin = require_pin(request.pin)
        fields = lookup.resolve_read_mask(request.read_mask.paths, caller.fields)
        async with self._budgets.lookup(caller):
            citizen, replaced = await lookup.current_record(self._db, pin)
        touch(citizen.pin)
        visible = convert.disclosed(convert.citizen(citizen), fields)
        return pb.GetCitizenResponse(citizen=visible, pin_replaced=replaced)

    async def ResolveLegacyId(
        self, request: pb.ResolveLegacyIdRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveLegacyIdResponse:
        v = Violations()
        legacy_id = cards.validate_legacy_id(v, "legacy_id", request.legacy_id)
        v.raise_if_any()
        async with self._budgets.lookup(current_caller()):
            pin = await card_issuance.resolve_legacy_id(self._db, legacy_id)
        touch(pin)
        return pb.ResolveLegacyIdResponse(pin=pin)

    async def GetSigningKeys(
        self, request: pb.GetSigningKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSigningKeysResponse:
        return pb.GetSigningKeysResponse(jwks_json=self._keys.jwks_json())


def _request_id(request: pb.VerifyIdentityRequest) -> str:
    return clean_text(request.correlation_id, 128)
