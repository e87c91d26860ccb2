"""Fuzzing every RPC of the API through a real channel: random, malformed and hostile input.

Requests are generated from the protobuf descriptors (tests/fuzz_strategies.py): random
messages, valid requests with a few fields broken, raw bodies that are not protobuf or carry
invalid UTF-8, and odd metadata. Every call must end with a code the contract documents for
that RPC (never INTERNAL or UNKNOWN), every error must carry its google.rpc.Status and repeat
nothing the register holds about the seeded citizens (SPEC §6) unless the request itself sent
it, a refused call must change no data, and the server must still serve afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import time
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from registry.rules.model import CITIZEN_FIELDS
from registry.v1 import (
    audit_service_pb2,
    card_pb2,
    card_service_pb2,
    change_pb2,
    citizen_pb2,
    civil_registration_service_pb2,
    civil_registration_service_pb2_grpc,
    identity_service_pb2,
    population_service_pb2,
)
from tests import fuzz_strategies as fs
from tests.conftest import DB, AgencyFactory, ServerThread, new_private_key
from tests.conftest import TestAgency as Agency
from tests.helpers import birth_request, date, death_request, signed_jwt

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


def test_the_table_covers_every_rpc_of_the_five_services() -> None:
    assert set(RPCS) == set(DOCUMENTED)
    assert set(RPCS) >= NOT_YET_IMPLEMENTED
    assert set(RPCS) >= READ_ONLY
    assert len(RPCS) == 21
    streaming = {n for n, r in RPCS.items() if r.client_streaming or r.server_streaming}
    assert streaming == {
        "IdentityService/BatchVerify",
        "IdentityService/VerifyIdentityBatches",
        "PopulationService/ImportCitizens",
        "PopulationService/ImportCitizenBatches",
        "PopulationService/WatchChanges",
    }


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


# -- fixtures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentinel:
    """A stored value, in the textual forms an error could show it in."""

    forms: frozenset[str]
    text: str = ""  # a stored string (name, address)
    date: tuple[int, int, int] | None = None  # a stored date

    @staticmethod
    def of_text(text: str) -> Sentinel:
        forms = {unicodedata.normalize(f, text) for f in ("NFC", "NFD")}
        return Sentinel(frozenset(forms | {f.casefold() for f in forms}), text=text)

    @staticmethod
    def of_date(y: int, m: int, d: int) -> Sentinel:
        forms = {f"{y:04d}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y:04d}", f"{d}/{m}/{y}"}
        return Sentinel(frozenset(forms), date=(y, m, d))


def _sent_values(what: Any) -> tuple[str, set[tuple[int, int, int]] | None]:
    """The strings (as raw text) and dates a call's input carried; dates None if unknown."""
    messages: list[Message] = []
    raw: list[bytes] = []

    def collect(value: Any) -> None:
        if isinstance(value, Message):
            messages.append(value)
        elif isinstance(value, bytes | bytearray):
            raw.append(bytes(value))
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)
        elif isinstance(value, str):
            raw.append(value.encode("utf-8", "ignore"))

    collect(what)
    dates: set[tuple[int, int, int]] | None = set()

    def walk(message: Message) -> None:
        assert dates is not None
        if message.DESCRIPTOR.full_name == "google.type.Date":
            dates.add((message.year, message.month, message.day))  # type: ignore[attr-defined]
        for fd, value in message.ListFields():
            if fd.message_type is None:
                continue
            for item in value if fd.is_repeated else [value]:
                if isinstance(item, Message):
                    walk(item)

    for message in messages:
        raw.append(message.SerializeToString())
        walk(message)
    if raw and not messages:
        dates = None  # raw bodies: which dates they carry is not known
    text = b"\n".join(raw).decode("utf-8", "ignore")
    return unicodedata.normalize("NFC", text), dates


def check_no_stored_data(
    sentinels: Sequence[Sentinel], error_text: str, what: Any, context: str
) -> None:
    """An error repeats no stored value the request did not itself send (SPEC §6)."""
    sent_text, sent_dates = _sent_values(what)
    for sentinel in sentinels:
        shown = [f for f in sentinel.forms if f in error_text]
        if not shown:
            continue
        if sentinel.text and unicodedata.normalize("NFC", sentinel.text) in sent_text:
            continue
        if sentinel.date is not None and (sent_dates is None or sentinel.date in sent_dates):
            continue
        raise AssertionError(f"the error repeats stored data {shown[0]!r}{context}")


@dataclass
class World:
    """Real records for seeds, so that mutated requests reach the database."""

    agency: Agency
    limited: Agency  # registered to read no field (GetCitizen → PERMISSION_DENIED)
    adult_pin: str
    other_pin: str
    death_pin: str
    serial: str
    legacy_id: str
    sentinels: tuple[Sentinel, ...] = ()
    """What the register holds about the seeded citizens: no error may repeat it."""
    _tokens: fs.Tokens | None = None
    _minted: float = 0.0

    def tokens(self) -> fs.Tokens:
        """The agency's test tokens, minted again every minute (long runs outlive them)."""
        if self._tokens is None or time.monotonic() - self._minted > 60:
            self._tokens = mint_tokens(self.agency)
            self._minted = time.monotonic()
        return self._tokens

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self.agency.metadata(self.tokens().valid)

    def call_metadata(self) -> st.SearchStrategy[fs.Metadata]:
        return fs.call_metadata(self.tokens)

    @property
    def hints(self) -> tuple[str, ...]:
        """Real identifiers for random strings to hit now and then."""
        return (self.adult_pin, self.other_pin, self.death_pin, self.serial, self.legacy_id)


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def mint_tokens(agency: Agency) -> fs.Tokens:
    stranger = new_private_key()
    bad = (
        agency.token(iat_offset=-1000),  # expired
        agency.token(iat_offset=1000),  # not yet valid
        agency.token(lifetime=3600),  # lifetime too long
        agency.token(audience="someone-else"),
        agency.token(kid="no-such-key"),
        agency.token(key=stranger),  # signature does not verify
        agency.token(iss="no-such-agency"),
        agency.token(scope=123),  # scope claim not a string
        _alg_none_token(agency),
        jwt.encode({"iss": agency.id}, stranger, algorithm="ES256", headers={"kid": "k1"}),
    )
    narrowed = tuple(
        agency.token(scope=s)
        for s in ("", "birth:register", "nonsense", "card:read identity:verify", "a " * 500)
    )
    return fs.Tokens(agency.token(), bad, narrowed)


def _alg_none_token(agency: Agency) -> str:
    now = int(time.time())
    header = _b64({"alg": "none", "typ": "JWT", "kid": agency.kid})
    body = _b64({"iss": agency.id, "aud": "citizen-registry", "iat": now, "exp": now + 300})
    return f"{header}.{body}."


@pytest.fixture(scope="module")
def world(server: ServerThread, channel: grpc.Channel, make_agency: AgencyFactory) -> World:
    agency = make_agency(fields=CITIZEN_FIELDS)
    limited = make_agency(fields=())
    md = agency.metadata()
    civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
    people = (
        (1990, citizen_pb2.SEX_FEMALE, "Trần Thị Bích Ngọc"),
        (1985, citizen_pb2.SEX_MALE, "Lê Văn Hùng"),
        (1950, citizen_pb2.SEX_MALE, "Phạm Văn Đồng"),
    )
    pins = [
        civil.RegisterBirth(
            birth_request(date_of_birth=date(year, 5, 17), sex=sex, full_name=name),
            metadata=md,
            timeout=CALL_TIMEOUT_S,
        ).citizen.pin
        for year, sex, name in people
    ]
    serial = f"FZ{uuid.uuid4().hex[:10].upper()}"
    issue = card_service_pb2.IssueCardRequest(
        request_id=str(uuid.uuid4()),
        pin=pins[0],
        kind=card_pb2.CARD_KIND_FIRST_ISSUE,
        serial=serial,
        issue_date=date(2020, 1, 2),
        issuing_authority="Cục Cảnh sát QLHC về TTXH",
    )
    unary(channel, "CardService/IssueCard").with_call(
        issue.SerializeToString(), metadata=md, timeout=CALL_TIMEOUT_S
    )
    legacy_id = f"{uuid.uuid4().int % 10**9:09d}"
    link = card_service_pb2.LinkLegacyIdRequest(
        request_id=str(uuid.uuid4()), pin=pins[0], legacy_id=legacy_id
    )
    unary(channel, "CardService/LinkLegacyId").with_call(
        link.SerializeToString(), metadata=md, timeout=CALL_TIMEOUT_S
    )
    # Stored data no error may repeat: names, dates of birth, an address, a card's date.
    address = "Số 41 ngõ Thầm Kín, phường Yên Lặng"
    update = population_service_pb2.UpdateCitizenRequest(
        request_id=str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=pins[0], permanent_address=address),
        update_mask=field_mask_pb2.FieldMask(paths=["permanent_address"]),
        expected_version=1,
    )
    unary(channel, "PopulationService/UpdateCitizen").with_call(
        update.SerializeToString(), metadata=md, timeout=CALL_TIMEOUT_S
    )
    sentinels = (
        Sentinel.of_text(address),
        Sentinel.of_date(2020, 1, 2),
        *(Sentinel.of_text(name) for _, _, name in people),
        *(Sentinel.of_date(year, 5, 17) for year, _, _ in people),
    )
    w = World(agency, limited, pins[0], pins[1], pins[2], serial, legacy_id, sentinels)
    w.tokens()
    return w


@pytest.fixture(scope="module")
def tables(db: DB) -> Iterator[Tables]:
    t = Tables(db.dsn)
    try:
        yield t
    finally:
        t.close()


def seeds(w: World) -> dict[str, list[Message]]:
    """Valid-looking requests per RPC; the fuzzer breaks a few fields of each."""
    today = fs._today()
    rid = str(uuid.uuid4())
    citizen = citizen_pb2.Citizen(
        full_name="Nguyễn Thị Mai",
        sex=citizen_pb2.SEX_FEMALE,
        date_of_birth=date(1970, 3, 8),
        place_of_birth="Hà Nội",
        registration_province_code="001",
        hometown="Nam Định",
        ethnicity="Kinh",
        nationality="VN",
    )
    idp = identity_service_pb2
    cardp = card_service_pb2
    popp = population_service_pb2
    return {
        "CivilRegistrationService/RegisterBirth": [
            birth_request(),
            birth_request(request_id=rid, mother_pin=w.adult_pin, father_pin=w.other_pin),
        ],
        "CivilRegistrationService/RegisterDeath": [
            death_request(w.death_pin, request_id=rid),
            death_request(w.adult_pin, date_of_death=date(1980, 1, 1)),
        ],
        "CivilRegistrationService/AnnulDeathRegistration": [
            civil_registration_service_pb2.AnnulDeathRegistrationRequest(
                request_id=rid, pin=pin, reason="registered in error", decision_reference="QĐ 1"
            )
            for pin in (w.death_pin, w.adult_pin)
        ],
        "CardService/IssueCard": [
            cardp.IssueCardRequest(
                request_id=rid,
                pin=w.other_pin,
                kind=card_pb2.CARD_KIND_FIRST_ISSUE,
                serial=f"FZ{uuid.uuid4().hex[:10].upper()}",
                issue_date=date(today.year, today.month, today.day),
                issuing_authority="CA Hà Nội",
            )
        ],
        "CardService/RevokeCard": [cardp.RevokeCardRequest(request_id=rid, serial=w.serial)],
        "CardService/WithholdCard": [
            cardp.WithholdCardRequest(request_id=rid, serial=w.serial, reason="lost")
        ],
        "CardService/ReleaseCard": [
            cardp.ReleaseCardRequest(request_id=rid, serial=w.serial, reason="found")
        ],
        "CardService/ListCards": [cardp.ListCardsRequest(pin=w.adult_pin)],
        "CardService/LinkLegacyId": [
            cardp.LinkLegacyIdRequest(request_id=rid, pin=w.other_pin, legacy_id=w.legacy_id)
        ],
        "IdentityService/VerifyIdentity": [
            idp.VerifyIdentityRequest(
                pin=w.adult_pin,
                full_name="Trần Thị Bích Ngọc",
                date_of_birth=date(1990, 5, 17),
                sex=citizen_pb2.SEX_FEMALE,
                card_serial=w.serial,
                correlation_id="c1",
                want_attestation=True,
            )
        ],
        "IdentityService/BatchVerify": [
            idp.VerifyIdentityRequest(pin=w.adult_pin, full_name="x", correlation_id="c")
        ],
        "IdentityService/GetCitizen": [
            idp.GetCitizenRequest(
                pin=w.adult_pin, read_mask=field_mask_pb2.FieldMask(paths=["full_name"])
            )
        ],
        "IdentityService/ResolveLegacyId": [idp.ResolveLegacyIdRequest(legacy_id=w.legacy_id)],
        "IdentityService/GetSigningKeys": [],
        "AuditService/GetAuditCheckpoint": [],
        "PopulationService/ImportCitizens": [
            popp.ImportCitizensRequest(source_id="fz-1", citizen=citizen)
        ],
        "IdentityService/VerifyIdentityBatches": [
            idp.VerifyIdentityBatchesRequest(
                requests=[
                    idp.VerifyIdentityRequest(pin=w.adult_pin, full_name="x", correlation_id="c")
                ]
            )
        ],
        "PopulationService/ImportCitizenBatches": [
            popp.ImportCitizenBatchesRequest(
                import_id=rid,
                offset=0,
                records=[popp.ImportCitizensRequest(source_id="fz-b1", citizen=citizen)],
            )
        ],
        "PopulationService/UpdateCitizen": [
            popp.UpdateCitizenRequest(
                request_id=rid,
                citizen=citizen_pb2.Citizen(pin=w.other_pin, current_address="Hà Nội"),
                update_mask=field_mask_pb2.FieldMask(paths=["current_address"]),
                expected_version=1,
            )
        ],
        "PopulationService/WatchChanges": [
            popp.WatchChangesRequest(after_sequence=0, types=[change_pb2.CHANGE_TYPE_BORN])
        ],
        "AuditService/ListAccessLog": [
            audit_service_pb2.ListAccessLogRequest(pin=w.adult_pin, page_size=10)
        ],
    }


# -- calling -----------------------------------------------------------------------------------


def _identity(b: bytes) -> bytes:
    return b


def unary(channel: grpc.Channel, rpc: str) -> Any:
    return channel.unary_unary(
        RPCS[rpc].path, request_serializer=_identity, response_deserializer=_identity
    )


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    trailing: tuple[tuple[str, Any], ...]
    responses: list[bytes]
    elapsed: float
    deadline: float
    cancelled_by_us: bool = False

    @property
    def own_deadline(self) -> bool:
        return self.code == C.DEADLINE_EXCEEDED and self.elapsed >= self.deadline * 0.95


def invoke(
    channel: grpc.Channel,
    rpc: str,
    bodies: Sequence[bytes],
    metadata: Sequence[tuple[str, Any]],
    timeout: float = CALL_TIMEOUT_S,
) -> Outcome:
    """Call an RPC with raw request bodies (one for the unary-request kinds)."""
    info = RPCS[rpc]
    md = tuple(metadata)
    started = time.perf_counter()
    responses: list[bytes] = []
    cancelled = False
    call: Any
    try:
        if info.client_streaming and info.server_streaming:
            call = channel.stream_stream(info.path, _identity, _identity)(
                iter(bodies), metadata=md, timeout=timeout
            )
            responses.extend(call)
        elif info.client_streaming:
            response, call = channel.stream_unary(info.path, _identity, _identity).with_call(
                iter(bodies), metadata=md, timeout=timeout
            )
            responses.append(response)
        elif info.server_streaming:
            [body] = bodies
            call = channel.unary_stream(info.path, _identity, _identity)(
                body, metadata=md, timeout=timeout
            )
            for response in call:
                responses.append(response)
                if len(responses) >= WATCH_MAX_EVENTS:
                    cancelled = call.cancel()
                    break
        else:
            [body] = bodies
            response, call = unary(channel, rpc).with_call(body, metadata=md, timeout=timeout)
            responses.append(response)
        code, details, trailing = call.code(), call.details(), call.trailing_metadata()
    except grpc.RpcError as error:
        err: Any = error
        code, details, trailing = err.code(), err.details(), err.trailing_metadata()
    return Outcome(
        code,
        details or "",
        tuple(trailing or ()),
        responses,
        time.perf_counter() - started,
        timeout,
        cancelled and code == C.CANCELLED,
    )


# -- checking ----------------------------------------------------------------------------------


class ServerLog(logging.Handler):
    """Error records the server logs (an INTERNAL answer logs its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.mark = 0  # records before it belong to earlier calls

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        return "\n".join(formatter.format(r) for r in self.records[self.mark :][-3:])


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    handler = ServerLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
    errors = [r for r in handler.records if r.name.startswith("registry")]
    assert not errors, f"the server logged errors while fuzzed:\n{handler.text()}"


def short(value: Any, limit: int = 600) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


@dataclass
class Checker:
    """Asserts the contract on each call and that refused calls change nothing.

    `start()` before each call takes the snapshot `check()` compares with.
    """

    tables: Tables
    log: ServerLog
    sentinels: tuple[Sentinel, ...] = ()
    before: dict[str, tuple[int, str]] = field(default_factory=dict)

    def start(self) -> None:
        self.before = self.tables.snapshot()
        self.log.mark = len(self.log.records)

    def check(
        self,
        rpc: str,
        outcome: Outcome,
        *,
        auth: str,
        what: Any,
        raw: bool = False,
        unchanged: bool | None = None,
    ) -> None:
        code = outcome.code
        event(f"{code.name} (auth {auth})")
        context = (
            f"\nRPC {rpc}: {code.name} {outcome.details!r}\nauth: {auth}\ninput: {short(what)}"
            f"\nserver log:\n{self.log.text() or '(no errors)'}"
        )
        self.log.mark = len(self.log.records)
        assert code not in (C.INTERNAL, C.UNKNOWN), f"server error{context}"
        allowed = allowed_codes(rpc, raw=raw)
        own = outcome.own_deadline or outcome.cancelled_by_us
        assert code in allowed or own, f"undocumented code{context}"
        if code != C.OK and not own:
            check_status_details(code, outcome.trailing, context)
            details = b"".join(v for k, v in outcome.trailing if k == DETAILS_KEY)
            error = f"{outcome.details}\n{details.decode('utf-8', 'ignore')}"
            check_no_stored_data(self.sentinels, error, what, context)
        if not raw:
            if auth == fs.INVALID:
                assert code == C.UNAUTHENTICATED, f"a call without a usable token{context}"
            elif auth == fs.VALID:
                assert code != C.UNAUTHENTICATED, f"a valid token refused{context}"
                if code == C.PERMISSION_DENIED:
                    reason = error_reason(outcome.trailing)
                    assert reason == "FIELDS_NOT_PERMITTED", f"all scopes, still{context}"
        after = self.tables.snapshot()
        if unchanged is None:
            unchanged = code != C.OK or rpc in READ_ONLY
            if code in (C.DEADLINE_EXCEEDED, C.UNAVAILABLE) and rpc not in READ_ONLY:
                # Our own deadline, or AUDIT_UNAVAILABLE ("a write may have happened: retry
                # with the same request_id"): the write may have been done.
                unchanged = False
        if unchanged:
            diff = changed(self.before, after)
            assert not diff, f"data changed by a refused or read-only call: {diff}{context}"


def parse_details(trailing: Sequence[tuple[str, Any]]) -> status_pb2.Status | None:
    values = [v for k, v in trailing if k == DETAILS_KEY]
    if not values:
        return None
    return status_pb2.Status.FromString(values[-1])


def error_reason(trailing: Sequence[tuple[str, Any]]) -> str:
    status = parse_details(trailing)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def unpack_all(status: status_pb2.Status, kind: type[Message]) -> list[Any]:
    out = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            out.append(message)
    return out


def check_status_details(
    code: grpc.StatusCode, trailing: Sequence[tuple[str, Any]], context: str
) -> None:
    """The error's google.rpc.Status: present, same code, ErrorInfo and the documented detail."""
    try:
        status = parse_details(trailing)
    except DecodeError as exc:
        raise AssertionError(f"{DETAILS_KEY} is not a google.rpc.Status ({exc}){context}") from exc
    assert status is not None, f"error without {DETAILS_KEY}{context}"
    check_rpc_status(status, code.value[0], context)


def check_rpc_status(status: status_pb2.Status, code: int, context: str) -> None:
    assert status.code == code, f"google.rpc.Status code {status.code} != {code}{context}"
    infos = unpack_all(status, error_details_pb2.ErrorInfo)
    assert infos and infos[0].domain == DOMAIN and infos[0].reason, f"no ErrorInfo{context}"
    required = REQUIRED_DETAIL.get(CODES[code])
    if required is not None:
        found = unpack_all(status, required)
        assert found, f"{required.DESCRIPTOR.name} missing{context}"
        if required is error_details_pb2.BadRequest:
            assert any(b.field_violations for b in found), f"BadRequest names no field{context}"
        if required is error_details_pb2.PreconditionFailure:
            assert any(p.violations for p in found), f"empty PreconditionFailure{context}"


def assert_still_serving(channel: grpc.Channel, agency: Agency) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
    response = civil.RegisterBirth(
        birth_request(), metadata=agency.metadata(), timeout=CALL_TIMEOUT_S
    )
    assert len(response.citizen.pin) == 12 and response.citizen.pin.isascii()
    assert response.citizen.pin.isdigit() and not response.replayed


def check_ok_response(rpc: str, outcome: Outcome, sent: Sequence[Message], context: str) -> None:
    """What an OK answer must look like (enough to tell a real answer from garbage)."""
    info = RPCS[rpc]
    cls = message_factory.GetMessageClass(info.response)
    parsed = [cls.FromString(r) for r in outcome.responses]
    if rpc == "IdentityService/VerifyIdentity":
        [answer] = parsed
        assert answer.result in (1, 2, 3), f"no result{context}"
        assert answer.correlation_id == sent[0].correlation_id, f"correlation id{context}"
    elif rpc == "IdentityService/BatchVerify":
        assert len(parsed) == len(sent), f"{len(parsed)} answers to {len(sent)} checks{context}"
        assert sorted(a.correlation_id for a in parsed) == sorted(r.correlation_id for r in sent), (
            f"correlation ids not echoed{context}"
        )
        for answer in parsed:
            if answer.HasField("error"):
                assert answer.result == 0, f"an answer with an error and a result{context}"
                # A bad item, or one about a citizen the agency failed on too often.
                code = answer.error.code
                assert code in (C.INVALID_ARGUMENT.value[0], C.RESOURCE_EXHAUSTED.value[0])
                check_rpc_status(answer.error, code, context)
            else:
                assert answer.result in (1, 2, 3), f"no result and no error{context}"
    elif rpc == "IdentityService/VerifyIdentityBatches":
        assert len(parsed) == len(sent), f"{len(parsed)} answers to {len(sent)} batches{context}"
        for batch, answer in zip(sent, parsed, strict=True):
            assert [a.correlation_id for a in answer.responses] == [
                r.correlation_id for r in batch.requests
            ], f"answers not in request order{context}"
            for a in answer.responses:
                if a.HasField("error"):
                    assert a.result == 0, f"an answer with an error and a result{context}"
                    assert a.error.code in (3, 8), f"item error {a.error.code}{context}"
                    check_rpc_status(a.error, a.error.code, context)
                else:
                    assert a.result in (1, 2, 3), f"no result and no error{context}"
    elif rpc == "PopulationService/ImportCitizenBatches":
        assert len(parsed) == len(sent), f"{len(parsed)} acks to {len(sent)} batches{context}"
        for batch, r in zip(sent, parsed, strict=True):
            assert r.offset == batch.offset, context
            # A replay (an import_id and offset already acknowledged) answers the original
            # batch's counts, whatever this one holds (SPEC §10).
            assert r.replayed or r.received == len(batch.records), context
            assert r.received == r.created + r.duplicates + r.rejected, f"counts{context}"
            assert len(r.rejects) == r.rejected, f"rejects listed{context}"
    elif rpc == "PopulationService/ImportCitizens":
        [r] = parsed
        assert r.received == len(sent), f"received {r.received} of {len(sent)}{context}"
        assert r.received == r.created + r.duplicates + r.rejected, f"counts{context}"
        assert r.assigned_pins <= r.created and r.mismatched_pins <= r.created, context
        assert len(r.rejects) == min(r.rejected, 1000), f"rejects listed{context}"
        # As sent, cut at 1,024 characters (ImportReject.source_id).
        ids = {m.source_id[:1024] for m in sent}
        assert all(x.source_id in ids for x in r.rejects), f"unknown source_id{context}"
    elif rpc == "PopulationService/WatchChanges":
        [request] = sent
        sequences = [p.event.sequence for p in parsed]
        assert sequences == sorted(set(sequences)), f"sequences not increasing{context}"
        assert all(s > request.after_sequence for s in sequences), f"before cursor{context}"
        if request.types:
            assert all(p.event.type in request.types for p in parsed), f"type filter{context}"


def replayed(outcome: Outcome, rpc: str) -> bool:
    """True for an OK answer that says it is a replay (so nothing may have changed)."""
    info = RPCS[rpc]
    if outcome.code != C.OK or "replayed" not in info.response.fields_by_name:
        return False
    response = message_factory.GetMessageClass(info.response).FromString(outcome.responses[0])
    return bool(response.replayed)


_FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def fuzz(examples: int) -> settings:
    return settings(_FUZZ, max_examples=examples * SCALE)


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", UNARY)
def test_unary_rpc_answers_random_messages_by_the_contract(
    rpc: str,
    channel: grpc.Channel,
    world: World,
    tables: Tables,
    server_log: ServerLog,
) -> None:
    checker = Checker(tables, server_log, world.sentinels)
    request_strategy = fs.requests(RPCS[rpc].request, seeds(world)[rpc], world.hints)
    metadata_strategy = world.call_metadata()

    valid_md = fs.Metadata(world.metadata(), fs.VALID)

    @fuzz(40)
    @given(request=request_strategy, md=metadata_strategy, limited=st.integers(0, 4))
    @example(request=fs.huge_everywhere(RPCS[rpc].request), md=valid_md, limited=1)
    def run(request: Message, md: fs.Metadata, limited: int) -> None:
        checker.start()
        pairs = md.pairs
        if rpc == "IdentityService/GetCitizen" and limited == 0 and md.auth == fs.VALID:
            pairs = world.limited.metadata(world.limited.token())
        outcome = invoke(channel, rpc, [request.SerializeToString()], pairs)
        what = {"request": request, "metadata": pairs}
        if outcome.code == C.OK:
            check_ok_response(rpc, outcome, [request], f"\nRPC {rpc}\ninput: {short(what)}")
        checker.check(
            rpc,
            outcome,
            auth=md.auth,
            what=what,
            unchanged=True if replayed(outcome, rpc) else None,
        )

    for request in explicit_examples(world).get(rpc, []):
        run = example(request=request, md=valid_md, limited=1)(run)
    run()
    assert_still_serving(channel, world.agency)


def explicit_examples(w: World) -> dict[str, list[Message]]:
    """Inputs always tried first (regressions: answers whose trailers outgrew gRPC's limits,
    a field name with a NUL that the protobuf runtime's name map took for the field)."""
    many = field_mask_pb2.FieldMask(paths=[""] * 400)
    long = field_mask_pb2.FieldMask(paths=["x" * 20_000])
    nul = field_mask_pb2.FieldMask(paths=["full_name\x00", "sex\x00x"])
    return {
        "IdentityService/GetCitizen": [
            identity_service_pb2.GetCitizenRequest(pin=w.adult_pin, read_mask=mask)
            for mask in (many, long, nul)
        ],
        "PopulationService/UpdateCitizen": [
            population_service_pb2.UpdateCitizenRequest(
                request_id=str(uuid.uuid4()),
                citizen=citizen_pb2.Citizen(pin=w.other_pin),
                update_mask=mask,
                expected_version=1,
            )
            for mask in (many, long, nul)
        ],
    }


# Client-streaming and bidirectional RPCs: (examples per run, most messages in one stream).
STREAMS = {
    "IdentityService/BatchVerify": (50, 6),
    "PopulationService/ImportCitizens": (25, 5),
    "IdentityService/VerifyIdentityBatches": (25, 3),
    "PopulationService/ImportCitizenBatches": (25, 3),
}


@pytest.mark.parametrize("rpc", list(STREAMS))
def test_streaming_rpc_answers_random_streams_by_the_contract(
    rpc: str, channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    examples, longest = STREAMS[rpc]
    checker = Checker(tables, server_log, world.sentinels)
    item = fs.requests(RPCS[rpc].request, seeds(world)[rpc], world.hints)

    @fuzz(examples)
    @given(
        items=st.lists(item, max_size=longest),
        md=world.call_metadata(),
    )
    def run(items: list[Message], md: fs.Metadata) -> None:
        checker.start()
        outcome = invoke(channel, rpc, [m.SerializeToString() for m in items], md.pairs)
        what = {"requests": items, "metadata": md.pairs}
        if outcome.code == C.OK:
            check_ok_response(rpc, outcome, items, f"\nRPC {rpc}\ninput: {short(what)}")
        # Batches acknowledged before a chunked import's stream ended stay written.
        written = rpc == "PopulationService/ImportCitizenBatches" and bool(outcome.responses)
        checker.check(rpc, outcome, auth=md.auth, what=what, unchanged=False if written else None)

    run()
    assert_still_serving(channel, world.agency)


def test_watch_changes_answers_random_requests_by_the_contract(
    channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    rpc = "PopulationService/WatchChanges"
    checker = Checker(tables, server_log, world.sentinels)

    @fuzz(20)
    @given(
        request=fs.requests(RPCS[rpc].request, seeds(world)[rpc], world.hints),
        md=world.call_metadata(),
    )
    def run(request: Message, md: fs.Metadata) -> None:
        checker.start()
        outcome = invoke(
            channel, rpc, [request.SerializeToString()], md.pairs, timeout=WATCH_TIMEOUT_S
        )
        what = {"request": request, "metadata": md.pairs}
        if outcome.code == C.OK or outcome.own_deadline or outcome.cancelled_by_us:
            check_ok_response(rpc, outcome, [request], f"\nRPC {rpc}\ninput: {short(what)}")
        checker.check(rpc, outcome, auth=md.auth, what=what)

    run()
    assert_still_serving(channel, world.agency)


@pytest.mark.parametrize("rpc", sorted(RPCS))
def test_malformed_bodies_are_refused_cleanly(
    rpc: str, channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    """Bodies that are not protobuf, or carry invalid UTF-8 in string fields."""
    checker = Checker(tables, server_log, world.sentinels)
    seed = (seeds(world)[rpc] or [message_factory.GetMessageClass(RPCS[rpc].request)()])[0]
    valid = seed.SerializeToString()
    info = RPCS[rpc]
    timeout = WATCH_TIMEOUT_S if info.server_streaming and not info.client_streaming else None

    @fuzz(12)
    @given(body=fs.raw_bodies(info.request, valid), data=st.data())
    def run(body: bytes, data: st.DataObject) -> None:
        checker.start()
        bodies = [body]
        if info.client_streaming:
            # Garbage among good messages: each good one must still be answered or counted.
            bodies = data.draw(st.permutations([body, *[valid] * data.draw(st.integers(0, 2))]))
        outcome = invoke(channel, rpc, bodies, world.metadata(), timeout or CALL_TIMEOUT_S)
        what = {"bodies": bodies}
        # Batches acknowledged before a chunked import's stream ended stay written.
        written = rpc == "PopulationService/ImportCitizenBatches" and bool(outcome.responses)
        checker.check(
            rpc, outcome, auth=fs.VALID, what=what, raw=True, unchanged=False if written else None
        )
        if outcome.code == C.OK and info.client_streaming:
            context = f"\nRPC {rpc}: OK\ninput: {short(what)}"
            cls = message_factory.GetMessageClass(info.response)
            if info.server_streaming:
                answered = len(outcome.responses)
                assert answered == len(bodies), f"{answered} answers to {len(bodies)}{context}"
            else:
                received = cls.FromString(outcome.responses[0]).received
                assert received == len(bodies), f"{received} of {len(bodies)} counted{context}"

    run()
    assert_still_serving(channel, world.agency)


def test_tokens_with_any_header_or_claim_value_are_refused_cleanly(
    channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    """Header parameters and claims set to any JSON value (NUL, control characters, 10 kB
    strings, floats, NaN, booleans, huge integers, nested lists and objects), signed with the
    agency's registered key or not signed at all: never a server error, never a traceback.

    The probe is a RegisterBirth without a name: a token that is refused gets UNAUTHENTICATED
    with an ErrorInfo reason; one that happens to be valid after all is admitted and answered
    INVALID_ARGUMENT (or PERMISSION_DENIED, its scope claim narrowed), so nothing is written.
    """
    agency = world.agency
    rpc = "CivilRegistrationService/RegisterBirth"
    body = birth_request(full_name="").SerializeToString()
    before = tables.snapshot()
    server_log.setLevel(logging.WARNING)  # a traceback logged as a warning counts too

    def base() -> tuple[dict[str, Any], dict[str, Any]]:
        now = int(time.time())
        header = {"alg": agency.algorithm, "typ": "JWT", "kid": agency.kid}
        claims = {"iss": agency.id, "aud": "citizen-registry", "iat": now, "exp": now + 300}
        return header, claims

    @fuzz(150)
    @given(contents=st.deferred(lambda: fs.token_contents(*base())), signed=st.booleans())
    @example(contents=({"alg": "ES256", "kid": "k1\x00"}, base()[1]), signed=True)
    @example(contents=(base()[0], {**base()[1], "iss": f"{agency.id}\x00"}), signed=True)
    @example(contents=(base()[0], {**base()[1], "iat": str(int(time.time()))}), signed=True)
    @example(contents=(base()[0], {**base()[1], "exp": "soon"}), signed=False)
    @example(contents=(base()[0], {**base()[1], "kid": "x" * 10_000}), signed=True)
    def run(contents: tuple[Any, Any], signed: bool) -> None:
        header, claims = contents
        key = agency.private_key if signed else None
        token = signed_jwt(header if isinstance(header, dict) else {}, claims, key)
        if not isinstance(header, dict):  # a header that is not an object at all
            token = f"{_b64_any(header)}.{token.split('.', 1)[1]}"
        outcome = invoke(channel, rpc, [body], (("authorization", f"Bearer {token}"),))
        context = (
            f"\nheader: {short(header)}\nclaims: {short(claims)}\nsigned: {signed}"
            f"\n{outcome.code.name} {outcome.details!r}\nserver log:\n{server_log.text()}"
        )
        event(f"{outcome.code.name} {error_reason(outcome.trailing)}")
        assert outcome.code not in (C.INTERNAL, C.UNKNOWN), f"server error{context}"
        admitted = {C.INVALID_ARGUMENT, C.PERMISSION_DENIED}
        assert outcome.code == C.UNAUTHENTICATED or (signed and outcome.code in admitted), (
            f"unexpected answer{context}"
        )
        check_status_details(outcome.code, outcome.trailing, context)
        assert not server_log.records, f"the server logged{context}"

    run()
    assert changed(before, tables.snapshot()) == []
    assert_still_serving(channel, agency)


def _b64_any(value: Any) -> str:
    text = json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


@pytest.mark.parametrize("size", [9 * 1024, 20 * 1024])
def test_oversized_metadata_is_refused_and_the_server_stays_up(
    size: int, channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    """Beyond gRPC's metadata limits the transport refuses the call before the registry sees
    it (RESOURCE_EXHAUSTED without google.rpc details): then nothing may happen either."""
    garbage_token = (("authorization", "Bearer " + "A" * size),)
    cases: list[tuple[tuple[tuple[str, Any], ...], set[grpc.StatusCode]]] = [
        (garbage_token, {C.UNAUTHENTICATED, C.RESOURCE_EXHAUSTED}),
        ((*world.metadata(), ("x-purpose", "p" * size)), {C.OK, C.RESOURCE_EXHAUSTED}),
        ((*world.metadata(), ("x-purpose-bin", b"\xff" * size)), {C.OK, C.RESOURCE_EXHAUSTED}),
    ]
    for pairs, expected in cases:
        before = tables.snapshot()
        body = birth_request().SerializeToString()
        outcome = invoke(channel, "CivilRegistrationService/RegisterBirth", [body], pairs)
        assert outcome.code in expected, (outcome.code, outcome.details)
        if outcome.code == C.UNAUTHENTICATED:
            check_status_details(outcome.code, outcome.trailing, f" ({outcome.details})")
        if outcome.code != C.OK:
            assert changed(before, tables.snapshot()) == []
    assert_still_serving(channel, world.agency)


def test_snapshots_see_a_change(channel: grpc.Channel, world: World, tables: Tables) -> None:
    """The no-change assertions are not vacuous: a registered birth shows in the snapshot."""
    before = tables.snapshot()
    assert tables.snapshot() == before
    body = birth_request().SerializeToString()
    outcome = invoke(channel, "CivilRegistrationService/RegisterBirth", [body], world.metadata())
    assert outcome.code == C.OK, outcome.details
    diff = changed(before, tables.snapshot())
    # pin_buckets changes only when the server reserves a new range of counter values.
    assert {d.split(":")[0] for d in diff} >= {"citizens", "idempotency_keys", "change_events"}


def test_server_still_serves_after_the_fuzzing(channel: grpc.Channel, world: World) -> None:
    assert_still_serving(channel, world.agency)
