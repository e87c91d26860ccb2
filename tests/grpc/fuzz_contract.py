"""The fuzzing's contract, data snapshots and raw calls: the codes each RPC documents
(proto/registry/v1/*_service.proto), which RPCs only read, snapshots of every table that show
a refused call changed nothing, and any RPC called with raw bytes.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from registry.v1 import (
    audit_service_pb2,
    card_service_pb2,
    civil_registration_service_pb2,
    identity_service_pb2,
    population_service_pb2,
)

C = grpc.StatusCode
DOMAIN = "citizen-registry"
CALL_TIMEOUT_S = 10.0
WATCH_TIMEOUT_S = 0.25  # WatchChanges never ends by itself: our own deadline ends it
WATCH_MAX_EVENTS = 3
DETAILS_KEY = "grpc-status-details-bin"
# REGISTRY_FUZZ_SCALE=20 multiplies the examples for a long hunt (default: ~1 minute).
SCALE = max(1, int(os.environ.get("REGISTRY_FUZZ_SCALE", "1")))
CODES = {c.value[0]: c for c in C}
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

# -- the contract: documented codes per RPC (proto/registry/v1/*_service.proto) -----------------

# "Besides the codes listed on each RPC, every RPC can return" (each service's comment). The
# services also list DEADLINE_EXCEEDED, "the caller's deadline passed": allowed only when our
# own deadline did pass (Outcome.own_deadline).
SERVICE_WIDE = frozenset(
    {C.UNAUTHENTICATED, C.PERMISSION_DENIED, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE, C.ABORTED}
)
_MUTATION = frozenset({C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION})

DOCUMENTED: dict[str, frozenset[grpc.StatusCode]] = {
    "CivilRegistrationService/RegisterBirth": SERVICE_WIDE
    | {C.INVALID_ARGUMENT, C.ALREADY_EXISTS, C.FAILED_PRECONDITION},
    "CivilRegistrationService/RegisterDeath": SERVICE_WIDE | _MUTATION,
    "CivilRegistrationService/AnnulDeathRegistration": SERVICE_WIDE | _MUTATION,
    "CardService/IssueCard": SERVICE_WIDE | _MUTATION,
    "CardService/RevokeCard": SERVICE_WIDE | _MUTATION,
    "CardService/WithholdCard": SERVICE_WIDE | _MUTATION,
    "CardService/ReleaseCard": SERVICE_WIDE | _MUTATION,
    "CardService/ListCards": SERVICE_WIDE | {C.INVALID_ARGUMENT, C.NOT_FOUND},
    "CardService/LinkLegacyId": SERVICE_WIDE | _MUTATION,
    "IdentityService/VerifyIdentity": SERVICE_WIDE | {C.INVALID_ARGUMENT},
    # Stream-ending errors only: a bad item gets its own `error` and the stream goes on.
    "IdentityService/BatchVerify": SERVICE_WIDE,
    "IdentityService/GetCitizen": SERVICE_WIDE | {C.INVALID_ARGUMENT, C.NOT_FOUND},
    "IdentityService/ResolveLegacyId": SERVICE_WIDE | {C.INVALID_ARGUMENT, C.NOT_FOUND},
    # No scope needed: the RPC's comment lists no PERMISSION_DENIED.
    "IdentityService/GetSigningKeys": frozenset(
        {C.UNAUTHENTICATED, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE}
    ),
    # Per-record problems are reported in rejects; only service-wide codes end the stream.
    "PopulationService/ImportCitizens": SERVICE_WIDE,
    # Chunked (SPEC §10): a bad batch (limits, import_id, offset) ends the stream.
    "IdentityService/VerifyIdentityBatches": SERVICE_WIDE | {C.INVALID_ARGUMENT},
    "PopulationService/ImportCitizenBatches": SERVICE_WIDE | {C.INVALID_ARGUMENT, C.OUT_OF_RANGE},
    "PopulationService/UpdateCitizen": SERVICE_WIDE | _MUTATION | {C.ABORTED},
    "PopulationService/WatchChanges": SERVICE_WIDE | {C.INVALID_ARGUMENT},
    "AuditService/ListAccessLog": SERVICE_WIDE | {C.INVALID_ARGUMENT},
    # No scope needed; NOT_FOUND before the first checkpoint is signed.
    "AuditService/GetAuditCheckpoint": frozenset(
        {C.UNAUTHENTICATED, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE, C.NOT_FOUND}
    ),
}
# Declared but not implemented yet (README "What works today"): UNIMPLEMENTED is allowed for
# these until they are, and only for these.
NOT_YET_IMPLEMENTED: frozenset[str] = frozenset()
# RPCs that only read: whatever they answer, they change no data (audit tables aside).
READ_ONLY = frozenset(
    {
        "CardService/ListCards",
        "IdentityService/VerifyIdentity",
        "IdentityService/BatchVerify",
        "IdentityService/VerifyIdentityBatches",
        "IdentityService/GetCitizen",
        "IdentityService/ResolveLegacyId",
        "IdentityService/GetSigningKeys",
        "PopulationService/WatchChanges",
        "AuditService/ListAccessLog",
        "AuditService/GetAuditCheckpoint",
    }
)
# The detail each code must carry (proto comments, docs/errors.md); ErrorInfo on every error.
REQUIRED_DETAIL: dict[grpc.StatusCode, type[Message]] = {
    C.INVALID_ARGUMENT: error_details_pb2.BadRequest,
    C.FAILED_PRECONDITION: error_details_pb2.PreconditionFailure,
    C.RESOURCE_EXHAUSTED: error_details_pb2.QuotaFailure,
    C.UNAVAILABLE: error_details_pb2.RetryInfo,
}
SERVICE_FILES = (
    civil_registration_service_pb2,
    card_service_pb2,
    identity_service_pb2,
    population_service_pb2,
    audit_service_pb2,
)


@dataclass(frozen=True)
class Rpc:
    name: str  # "Service/Method"
    request: Any  # message descriptor
    response: Any
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/registry.v1.{self.name}"


def all_rpcs() -> dict[str, Rpc]:
    rpcs = {}
    for module in SERVICE_FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                name = f"{service.name}/{method.name}"
                rpcs[name] = Rpc(
                    name,
                    method.input_type,
                    method.output_type,
                    method.client_streaming,
                    method.server_streaming,
                )
    return rpcs


RPCS = all_rpcs()
UNARY = sorted(n for n, r in RPCS.items() if not (r.client_streaming or r.server_streaming))


def allowed_codes(rpc: str, *, raw: bool = False) -> frozenset[grpc.StatusCode]:
    codes = DOCUMENTED[rpc] | {C.OK}
    if rpc in NOT_YET_IMPLEMENTED:
        codes |= {C.UNIMPLEMENTED}
    if raw:
        # A body that is not a valid request message is an invalid argument on any RPC (the
        # streaming RPCs' comments do not list it, having no per-item answer for it).
        codes |= {C.INVALID_ARGUMENT}
    return codes


# -- data snapshots --------------------------------------------------------------------------


# Bookkeeping that reads spend, like the audit log they write: lookups charge misses to the
# oracle budgets (migration 0019).
BUDGET_TABLES = ("agency_miss_budgets", "verification_failures")


class Tables:
    """Fingerprints of every table but the audit log and the budgets, over one connection of
    our own."""

    BUSINESS = (
        "citizens",
        "cards",
        "legacy_ids",
        "idempotency_keys",
        "pin_buckets",
        "change_events",
    )

    def __init__(self, dsn: str):
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(dsn))
        names = [
            r["tablename"]
            for r in self.loop.run_until_complete(
                self.conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename NOT LIKE 'audit%' AND tablename <> ALL($1) ORDER BY tablename",
                    list(BUDGET_TABLES),
                )
            )
        ]
        missing = (set(self.BUSINESS) | migration_tables()) - set(names)
        assert not missing, f"tables not covered by the snapshot: {missing}"
        self.names = names
        # The change feed's sequencer numbers committed events in the background: what an
        # event says is compared, not whether it has been numbered yet.
        row = {"change_events": "(x.id, x.type, x.pin, x.new_pin, x.time)"}
        self.sql = " UNION ALL ".join(
            f"SELECT '{n}' AS t, count(*) AS n, "
            f"coalesce(md5(string_agg({row.get(n, 'x')}::text, E'\\n' "
            f"ORDER BY {row.get(n, 'x')}::text)), '') AS h "
            f'FROM "{n}" x'
            for n in names
        )

    def snapshot(self) -> dict[str, tuple[int, str]]:
        rows = self.loop.run_until_complete(self.conn.fetch(self.sql))
        return {r["t"]: (r["n"], r["h"]) for r in rows}

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def migration_tables() -> set[str]:
    """The tables migrations/*.sql create, the audit log's aside."""
    pattern = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)
    names = {m.lower() for f in MIGRATIONS.glob("*.sql") for m in pattern.findall(f.read_text())}
    assert names, f"no CREATE TABLE found in {MIGRATIONS}"
    return {n for n in names if not n.startswith("audit") and n not in BUDGET_TABLES}


def changed(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> list[str]:
    return [f"{t}: {before[t][0]} -> {after[t][0]} rows" for t in before if before[t] != after[t]]


# -- calling -----------------------------------------------------------------------------------


def _identity(b: bytes) -> bytes:
    return b


def unary(channel: grpc.Channel, rpc: str) -> Any:
    return channel.unary_unary(
        RPCS[rpc].path, request_serializer=_identity, response_deserializer=_identity
    )
