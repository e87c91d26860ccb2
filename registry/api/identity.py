"""IdentityService: verification and lookups for portals, banks and agencies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import date

import grpc
from google.protobuf import field_mask_pb2

from registry import card_issuance, cards, clock, lookup
from registry.api import convert
from registry.api.audit_writer import AuditWriter
from registry.api.errors import to_status_proto
from registry.api.gate import CallContext, audited_pins, current_call, current_caller, touch
from registry.attestation import SigningKeys
from registry.audit import Entry, clean_text
from registry.db.pool import Database
from registry.errors import RegistryError
from registry.imports import check_batch_size
from registry.limits import MissBudget
from registry.model import Caller
from registry.registration import Violations, require_pin
from registry.v1 import citizen_pb2
from registry.v1 import identity_service_pb2 as pb
from registry.v1 import identity_service_pb2_grpc as pb_grpc
from registry.verification import (
    Claim,
    Outcome,
    VerifyResult,
    attestation_claims,
    validate_claim,
)

log = logging.getLogger(__name__)

# Claims verified per query in BatchVerify: large enough to amortise the round trip, small
# enough to keep answers flowing back while the caller is still sending.
BATCH_SIZE = 512
BATCH_WAIT_S = 0.02
_END = None


_Arrival = pb.VerifyIdentityRequest | RegistryError | None


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

    def __init__(self, db: Database, keys: SigningKeys, audit: AuditWriter, misses: MissBudget):
        self._db = db
        self._keys = keys
        self._audit = audit
        self._misses = misses

    def _spend(self, caller: Caller, outcomes: Sequence[Outcome]) -> None:
        misses = sum(1 for o in outcomes if o.result is not VerifyResult.MATCH)
        self._misses.spend(caller.agency_id, misses, caller.miss_budget)

    def _admit(self, caller: Caller, outcome: Outcome) -> RegistryError | None:
        """Apply the agency's miss budget to one answered item of a batch: the refusal, or
        None when the answer may go out (and its miss, if any, is spent).

        The one place where chunked verification meets the budget, item by item, exactly as
        a VerifyIdentity call would (check before answering, spend a miss after).
        """
        try:
            self._misses.check(caller.agency_id, caller.miss_budget)
        except RegistryError as refusal:
            return refusal
        if outcome.result is not VerifyResult.MATCH:
            self._misses.spend(caller.agency_id, 1, caller.miss_budget)
        return None

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
        self._misses.check(caller.agency_id, caller.miss_budget)
        [outcome] = await lookup.verify_claims(self._db, caller, [claim], clock.today())
        self._spend(caller, [outcome])
        return self._response(caller, claim, outcome, request.want_attestation)

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
                    for response in await self._verify_batch(call, requests, clock.today()):
                        yield response
            if isinstance(stop, RegistryError):
                raise stop
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _verify_batch(
        self, call: CallContext, requests: Sequence[pb.VerifyIdentityRequest], today: date
    ) -> list[pb.VerifyIdentityResponse]:
        """Answer a batch in order; a malformed item gets its own error, the stream goes on.

        Each verification gets its own audit entry (the citizen's history shows it like a
        unary one), written in one group before any answer of the batch leaves.
        """
        caller = call.caller
        self._misses.check(caller.agency_id, caller.miss_budget)
        answers: list[pb.VerifyIdentityResponse | None] = [None] * len(requests)
        valid: list[tuple[int, Claim]] = []
        entries = []
        for index, request in enumerate(requests):
            try:
                valid.append((index, validate_claim(convert.raw_claim(request))))
            except RegistryError as error:
                answers[index] = pb.VerifyIdentityResponse(
                    correlation_id=request.correlation_id, error=to_status_proto(error)
                )
                pins = audited_pins(request.pin)
                if pins:
                    entries.append(call.entry(error.code.value, pins, _request_id(request)))
        if valid:
            outcomes = await lookup.verify_claims(self._db, caller, [c for _, c in valid], today)
            self._spend(caller, outcomes)
            for (index, claim), outcome in zip(valid, outcomes, strict=True):
                answers[index] = self._response(
                    caller, claim, outcome, requests[index].want_attestation
                )
                entries.append(call.entry("OK", (claim.pin,), _request_id(requests[index])))
        if entries:
            await self._audit.record(entries)
        return [a for a in answers if a is not None]

    async def VerifyIdentityBatches(
        self,
        request_iterator: AsyncIterator[pb.VerifyIdentityBatchesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.VerifyIdentityBatchesResponse]:
        """Answer each batch in order, one answer per request, once its audit is durable."""
        call = current_call()
        async for batch in request_iterator:
            v = Violations()
            check_batch_size(v, "requests", len(batch.requests))
            v.raise_if_any()
            answers = await self._verify_items(call, batch.requests, clock.today())
            yield pb.VerifyIdentityBatchesResponse(responses=answers)

    async def _verify_items(
        self, call: CallContext, requests: Sequence[pb.VerifyIdentityRequest], today: date
    ) -> list[pb.VerifyIdentityResponse]:
        """Verify a batch with one query; each item validated, budgeted, attested and audited
        on its own (an item's error is its answer, the others go on)."""
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
        if valid:
            outcomes = await lookup.verify_claims(self._db, caller, [c for _, c in valid], today)
            for (index, claim), outcome in zip(valid, outcomes, strict=True):
                request = requests[index]
                refusal = self._admit(caller, outcome)
                if refusal is None:
                    answers[index] = self._response(
                        caller, claim, outcome, request.want_attestation
                    )
                    entries[index] = call.entry("OK", (claim.pin,), _request_id(request))
                else:
                    answers[index] = pb.VerifyIdentityResponse(
                        correlation_id=claim.correlation_id, error=to_status_proto(refusal)
                    )
                    entries[index] = call.entry(
                        refusal.code.value, (claim.pin,), _request_id(request)
                    )
        written = [e for e in entries if e is not None]
        if written:
            await self._audit.record(written)
        return [a for a in answers if a is not None]

    async def GetCitizen(
        self, request: pb.GetCitizenRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCitizenResponse:
        caller = current_caller()
        pin = require_pin(request.pin)
        fields = lookup.resolve_read_mask(request.read_mask.paths, caller.fields)
        citizen, replaced = await lookup.current_record(self._db, pin)
        touch(citizen.pin)
        visible = citizen_pb2.Citizen()
        field_mask_pb2.FieldMask(paths=fields).MergeMessage(convert.citizen(citizen), visible)
        return pb.GetCitizenResponse(citizen=visible, pin_replaced=replaced)

    async def ResolveLegacyId(
        self, request: pb.ResolveLegacyIdRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveLegacyIdResponse:
        v = Violations()
        legacy_id = cards.validate_legacy_id(v, "legacy_id", request.legacy_id)
        v.raise_if_any()
        pin = await card_issuance.resolve_legacy_id(self._db, legacy_id)
        touch(pin)
        return pb.ResolveLegacyIdResponse(pin=pin)

    async def GetSigningKeys(
        self, request: pb.GetSigningKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSigningKeysResponse:
        return pb.GetSigningKeysResponse(jwks_json=self._keys.jwks_json())


def _request_id(request: pb.VerifyIdentityRequest) -> str:
    return clean_text(request.correlation_id, 128)
