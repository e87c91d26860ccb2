"""AuditService: a citizen's access history, for citizens' portals and oversight bodies, and the
audit log's signed checkpoints, for anyone who wants to pin its history."""

from __future__ import annotations

import base64
import binascii

import grpc

from registry.db.pool import Database
from registry.grpc.calls import current_caller
from registry.grpc.gate import READ_CONFIDENTIAL_SCOPE
from registry.rules.civil_registration import Violations
from registry.rules.errors import not_found
from registry.runtime.checkpointer import Checkpointer
from registry.usecases import lookup
from registry.v1 import audit_service_pb2 as pb
from registry.v1 import audit_service_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 50
# What a confidential agency's entry shows instead of its name without audit:read-confidential.
CONFIDENTIAL_AGENCY_NAME = "Law-enforcement access (confidential)"
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = "v1:"


def page_token(pin: str, before_seq: int) -> str:
    """Return the opaque token of the page after entry `before_seq` of a PIN's history."""
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{pin}:{before_seq}".encode()).decode()


def _read_page_token(v: Violations, token: str, pin: str) -> int | None:
    """Return the position the page starts below, or None for the first page."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        version, token_pin, seq = text.split(":")
        before = int(seq)
    except (UnicodeError, ValueError, binascii.Error):
        v.add("page_token", "is not a page token returned by ListAccessLog")
        return None
    if f"{version}:" != _TOKEN_PREFIX or not 0 < before < 2**63:
        v.add("page_token", "is not a page token returned by ListAccessLog")
    elif token_pin != pin:
        v.add("page_token", "was returned for another pin; page tokens belong to their query")
    return before


class AuditServicer(pb_grpc.AuditServiceServicer):
    """Read the audit log."""

    def __init__(self, db: Database, checkpointer: Checkpointer):
        self._db = db
        self._checkpointer = checkpointer

    async def ListAccessLog(
        self, request: pb.ListAccessLogRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAccessLogResponse:
        v = Violations()
        pin = v.pin("pin", request.pin)
        if request.page_size < 0:
            v.add("page_size", "must not be negative (0 means the default of 50)")
        before = _read_page_token(v, request.page_token, pin) if pin else None
        v.raise_if_any()
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)

        # One more than asked: tells whether a next page exists without a second query.
        found = await lookup.access_history(self._db, pin, before, size + 1)
        in_full = READ_CONFIDENTIAL_SCOPE in current_caller().scopes
        response = pb.ListAccessLogResponse()
        for item in found[:size]:
            if item.confidential and not in_full:
                # A law-enforcement access: the citizen learns that one happened and when,
                # not who or why (SPEC §6); oversight bodies see it in full.
                entry = response.entries.add(
                    agency_name=CONFIDENTIAL_AGENCY_NAME,
                    method=item.method,
                    outcome=item.outcome,
                    confidential=True,
                )
            else:
                entry = response.entries.add(
                    agency_id=item.agency_id,
                    agency_name=item.agency_name,
                    method=item.method,
                    purpose=item.purpose,
                    outcome=item.outcome,
                    confidential=item.confidential,
                )
            entry.time.FromDatetime(item.time)
        if len(found) > size:
            response.next_page_token = page_token(pin, found[size - 1].seq)
        return response

    async def GetAuditCheckpoint(
        self, request: pb.GetAuditCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAuditCheckpointResponse:
        checkpoint = await self._checkpointer.latest()
        if checkpoint is None:
            raise not_found(
                "NO_AUDIT_CHECKPOINT",
                "no audit checkpoint has been signed yet; one is signed within 10 seconds of "
                "the first recorded access",
            )
        response = pb.GetAuditCheckpointResponse(
            checkpoint=checkpoint.jws, sequence=checkpoint.seq, head_hash=checkpoint.head_hash
        )
        response.time.FromDatetime(checkpoint.time)
        return response
