"""RegistryClient (blocking) and AsyncRegistryClient (asyncio, grpc.aio)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from ._pb import (
    audit_service_pb2,
    card_service_pb2,
    civil_registration_service_pb2,
    identity_service_pb2,
    population_service_pb2,
)
from .auth import LIFETIME, TokenSource
from .errors import RegistryError, error_from_rpc_error
from .types import (
    Card,
    CardKind,
    ChangeEvent,
    ChangeType,
    Citizen,
    DateLike,
    Sex,
    Verification,
    VerifyRequest,
    _enum_in,
    date_to_proto,
)

R = TypeVar("R")

_CIVIL = "/registry.v1.CivilRegistrationService/"
_CARDS = "/registry.v1.CardService/"
_IDENTITY = "/registry.v1.IdentityService/"
INSTANCE_HEADER = "x-registry-instance"
"""The registry process that answered (an opaque id, new at each start of it)."""
WORKERS_HEADER = "x-registry-workers"
"""How many worker processes that process's host runs on the registry's port."""
_POPULATION = "/registry.v1.PopulationService/"


@dataclass(frozen=True)
class _Call(Generic[R]):
    """One unary RPC ready to send: path, request message, response type and converter."""

    path: str
    request: Any
    response_type: Any
    convert: Callable[[Any], R]


def _request_id(request_id: str | None) -> str:
    # Generated once per logical call: every retry of the call resends the same one.
    return request_id if request_id is not None else str(uuid.uuid4())


def _set_date(message: Any, name: str, value: DateLike | None) -> None:
    date = date_to_proto(value)
    if date is not None:
        getattr(message, name).CopyFrom(date)


def _register_birth(
    full_name: str,
    sex: Sex | str,
    date_of_birth: DateLike,
    registration_province_code: str,
    *,
    place_of_birth: str,
    hometown: str,
    ethnicity: str,
    registration_authority: str,
    registration_number: str,
    nationality: str = "VN",
    father_pin: str | None = None,
    mother_pin: str | None = None,
    registered_on: DateLike | None = None,
    request_id: str | None = None,
) -> _Call[Citizen]:
    m = civil_registration_service_pb2.RegisterBirthRequest(
        request_id=_request_id(request_id),
        full_name=full_name,
        sex=_enum_in(Sex, sex),
        place_of_birth=place_of_birth,
        registration_province_code=registration_province_code,
        hometown=hometown,
        ethnicity=ethnicity,
        nationality=nationality,
        father_pin=father_pin or "",
        mother_pin=mother_pin or "",
        registration_authority=registration_authority,
        registration_number=registration_number,
    )
    _set_date(m, "date_of_birth", date_of_birth)
    _set_date(m, "registered_on", registered_on)
    return _Call(
        _CIVIL + "RegisterBirth",
        m,
        civil_registration_service_pb2.RegisterBirthResponse,
        lambda r: Citizen.from_proto(r.citizen, replayed=r.replayed),
    )


def _register_death(
    pin: str,
    date_of_death: DateLike,
    *,
    registration_authority: str,
    registration_number: str,
    request_id: str | None = None,
) -> _Call[Citizen]:
    m = civil_registration_service_pb2.RegisterDeathRequest(
        request_id=_request_id(request_id),
        pin=pin,
        registration_authority=registration_authority,
        registration_number=registration_number,
    )
    _set_date(m, "date_of_death", date_of_death)
    return _Call(
        _CIVIL + "RegisterDeath",
        m,
        civil_registration_service_pb2.RegisterDeathResponse,
        lambda r: Citizen.from_proto(r.citizen, replayed=r.replayed),
    )


def _annul_death_registration(
    pin: str, *, reason: str, decision_reference: str, request_id: str | None = None
) -> _Call[Citizen]:
    m = civil_registration_service_pb2.AnnulDeathRegistrationRequest(
        request_id=_request_id(request_id),
        pin=pin,
        reason=reason,
        decision_reference=decision_reference,
    )
    return _Call(
        _CIVIL + "AnnulDeathRegistration",
        m,
        civil_registration_service_pb2.AnnulDeathRegistrationResponse,
        lambda r: Citizen.from_proto(r.citizen, replayed=r.replayed),
    )


def _verify_identity(
    pin: str,
    full_name: str | None = None,
    date_of_birth: DateLike | None = None,
    sex: Sex | str | None = None,
    card_serial: str | None = None,
    *,
    correlation_id: str | None = None,
    want_attestation: bool = False,
) -> _Call[Verification]:
    request = VerifyRequest(
        pin, full_name, date_of_birth, sex, card_serial, correlation_id, want_attestation
    )
    return _Call(
        _IDENTITY + "VerifyIdentity",
        request.to_proto(),
        identity_service_pb2.VerifyIdentityResponse,
        Verification.from_proto,
    )


def _get_citizen(pin: str, fields: Sequence[str] | None = None) -> _Call[Citizen]:
    m = identity_service_pb2.GetCitizenRequest(pin=pin)
    if fields:
        m.read_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(fields)))
    return _Call(
        _IDENTITY + "GetCitizen",
        m,
        identity_service_pb2.GetCitizenResponse,
        lambda r: Citizen.from_proto(r.citizen),
    )


def _issue_card(
    pin: str,
    serial: str,
    issue_date: DateLike,
    issuing_authority: str,
    *,
    kind: CardKind | str = CardKind.FIRST_ISSUE,
    request_id: str | None = None,
) -> _Call[Card]:
    m = card_service_pb2.IssueCardRequest(
        request_id=_request_id(request_id),
        pin=pin,
        kind=_enum_in(CardKind, kind),
        serial=serial,
        issuing_authority=issuing_authority,
    )
    _set_date(m, "issue_date", issue_date)
    return _Call(
        _CARDS + "IssueCard",
        m,
        card_service_pb2.IssueCardResponse,
        lambda r: Card.from_proto(r.card, replayed=r.replayed),
    )


def _list_cards(pin: str) -> _Call[list[Card]]:
    return _Call(
        _CARDS + "ListCards",
        card_service_pb2.ListCardsRequest(pin=pin),
        card_service_pb2.ListCardsResponse,
        lambda r: [Card.from_proto(c) for c in r.cards],
    )


def _card_change(action: str, serial: str, reason: str, request_id: str | None) -> _Call[Card]:
    request = getattr(card_service_pb2, f"{action}CardRequest")(
        request_id=_request_id(request_id), serial=serial, reason=reason
    )
    return _Call(
        _CARDS + f"{action}Card",
        request,
        getattr(card_service_pb2, f"{action}CardResponse"),
        lambda r: Card.from_proto(r.card, replayed=r.replayed),
    )


def _link_legacy_id(pin: str, legacy_id: str, request_id: str | None) -> _Call[Citizen]:
    return _Call(
        _CARDS + "LinkLegacyId",
        card_service_pb2.LinkLegacyIdRequest(
            request_id=_request_id(request_id), pin=pin, legacy_id=legacy_id
        ),
        card_service_pb2.LinkLegacyIdResponse,
        lambda r: Citizen.from_proto(r.citizen, replayed=r.replayed),
    )


def _resolve_legacy_id(legacy_id: str) -> _Call[str]:
    return _Call(
        _IDENTITY + "ResolveLegacyId",
        identity_service_pb2.ResolveLegacyIdRequest(legacy_id=legacy_id),
        identity_service_pb2.ResolveLegacyIdResponse,
        lambda r: str(r.pin),
    )


def _serving(trailers: Any) -> tuple[str, int]:
    """(instance id, workers) from an answer's trailers; ("", 1) when the registry sent none."""
    headers = dict(trailers or ())
    workers = str(headers.get(WORKERS_HEADER, "1"))
    return str(headers.get(INSTANCE_HEADER, "")), int(workers) if workers.isdigit() else 1


def _get_signing_keys() -> _Call[str]:
    return _Call(
        _IDENTITY + "GetSigningKeys",
        identity_service_pb2.GetSigningKeysRequest(),
        identity_service_pb2.GetSigningKeysResponse,
        lambda r: str(r.jwks_json),
    )


_DATE_FIELDS = ("date_of_birth", "date_of_death")


def _update_citizen(
    pin: str, expected_version: int, changes: dict[str, Any], request_id: str | None
) -> _Call[Citizen]:
    m = population_service_pb2.UpdateCitizenRequest(
        request_id=_request_id(request_id), expected_version=expected_version
    )
    m.citizen.pin = pin
    for name, value in changes.items():
        if name in _DATE_FIELDS:
            _set_date(m.citizen, name, value)
        elif isinstance(value, list | tuple):
            getattr(m.citizen, name).extend(value)
        else:
            setattr(m.citizen, name, int(value) if isinstance(value, int) else value)
    m.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(changes)))
    return _Call(
        _POPULATION + "UpdateCitizen",
        m,
        population_service_pb2.UpdateCitizenResponse,
        lambda r: Citizen.from_proto(r.citizen, replayed=r.replayed),
    )


@dataclass(frozen=True)
class AccessLogPage:
    """One page of a citizen's access history, newest first."""

    entries: list[dict[str, Any]]
    next_page_token: str


def _list_access_log(pin: str, page_size: int, page_token: str) -> _Call[AccessLogPage]:
    def convert(r: Any) -> AccessLogPage:
        return AccessLogPage(
            [
                {
                    "time": e.time.ToDatetime(),
                    "agency_id": e.agency_id,
                    "agency_name": e.agency_name,
                    "method": e.method,
                    "purpose": e.purpose,
                    "outcome": e.outcome,
                }
                for e in r.entries
            ],
            r.next_page_token,
        )

    return _Call(
        "/registry.v1.AuditService/ListAccessLog",
        audit_service_pb2.ListAccessLogRequest(pin=pin, page_size=page_size, page_token=page_token),
        audit_service_pb2.ListAccessLogResponse,
        convert,
    )


@dataclass(frozen=True)
class AuditCheckpoint:
    """The registry's signature over its audit log at a position; keep `checkpoint` (the JWS).

    Verify it offline with the get_signing_keys() JWKS (ES256, aud
    "citizen-registry/audit-checkpoint"); hand saved ones to the registry's operator for
    `registry audit verify --checkpoint`.
    """

    checkpoint: str
    sequence: int
    head_hash: bytes
    time: datetime.datetime


def _get_audit_checkpoint() -> _Call[AuditCheckpoint]:
    return _Call(
        "/registry.v1.AuditService/GetAuditCheckpoint",
        audit_service_pb2.GetAuditCheckpointRequest(),
        audit_service_pb2.GetAuditCheckpointResponse,
        lambda r: AuditCheckpoint(
            r.checkpoint,
            r.sequence,
            bytes(r.head_hash),
            r.time.ToDatetime(datetime.UTC),
        ),
    )


@dataclass(frozen=True)
class ImportSummary:
    """What an ImportCitizens stream did."""

    received: int
    created: int
    assigned_pins: int
    duplicates: int
    mismatched_pins: int
    rejected: int
    #: (source_id, reason) of the first 1,000 rejected records.
    rejects: list[tuple[str, str]]


def _import_requests(records: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[Any]:
    """(source_id, Citizen fields) -> ImportCitizensRequest messages, lazily."""
    for source_id, fields in records:
        m = population_service_pb2.ImportCitizensRequest(source_id=source_id)
        for name, value in fields.items():
            if value is None:
                continue
            if name in _DATE_FIELDS:
                _set_date(m.citizen, name, value)
            elif isinstance(value, list | tuple):
                getattr(m.citizen, name).extend(value)
            else:
                setattr(m.citizen, name, int(value) if isinstance(value, int) else value)
        yield m


def _import_summary(r: Any) -> ImportSummary:
    return ImportSummary(
        r.received, r.created, r.assigned_pins, r.duplicates, r.mismatched_pins, r.rejected,
        [(x.source_id, x.reason) for x in r.rejects],
    )  # fmt: skip


# A batch of the chunked RPCs holds 1 to 10,000 items (SPEC §10).
MAX_BATCH = 10_000
# Batches sent ahead of their acknowledgement: enough to keep the server busy while answers
# travel back, few enough to hold in memory for resending after a broken stream.
_WINDOW = 4
# Answers of VerifyIdentityBatches with attestations can exceed gRPC's default 4 MiB.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]


def _check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be 1 to {MAX_BATCH:,}, got {batch_size}")


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _ImportRun:
    """The client side of one ImportCitizenBatches run: batches numbered by offset, the ones
    sent but not acknowledged kept for resending, the counts added up from the acks."""

    def __init__(self, records: Iterable[tuple[str, dict[str, Any]]], import_id: str, size: int):
        _check_batch_size(size)
        self.import_id = import_id
        self._batches = _chunks(_import_requests(records), size)
        self.offset = 0  # of the next new batch
        self.unacked: deque[Any] = deque()
        self.totals = [0] * 6
        self.rejects: list[tuple[str, str]] = []
        self.acknowledged = 0

    def resend(self) -> list[Any]:
        """The batches to send first on a new stream: those sent and not acknowledged."""
        return list(self.unacked)

    def next_batch(self) -> Any | None:
        chunk = next(self._batches, None)
        if chunk is None:
            return None
        batch = population_service_pb2.ImportCitizenBatchesRequest(
            import_id=self.import_id, offset=self.offset, records=chunk
        )
        self.offset += len(chunk)
        self.unacked.append(batch)
        return batch

    def ack(self, r: Any) -> None:
        sent = self.unacked.popleft()
        assert sent.offset == r.offset, "acknowledgements come in order"
        self.acknowledged = r.offset + r.received
        for i, value in enumerate(
            (r.received, r.created, r.assigned_pins, r.duplicates, r.mismatched_pins, r.rejected)
        ):
            self.totals[i] += value
        if len(self.rejects) < 1000:
            self.rejects.extend(
                (x.source_id, x.reason) for x in r.rejects[: 1000 - len(self.rejects)]
            )

    def summary(self) -> ImportSummary:
        received, created, assigned, duplicates, mismatched, rejected = self.totals
        return ImportSummary(
            received, created, assigned, duplicates, mismatched, rejected, self.rejects
        )


class _VerifyRun:
    """The client side of one VerifyIdentityBatches run: claims numbered from 0 in batches,
    the ones sent but not answered kept for resending."""

    def __init__(self, claims: Iterable[VerifyRequest | str], size: int):
        _check_batch_size(size)
        self._chunks = _chunks(claims, size)
        self._first = 0  # the number of the next new claim
        self.unacked: deque[Any] = deque()

    def resend(self) -> list[Any]:
        """The batches to send first on a new stream: those sent and not answered."""
        return list(self.unacked)

    def next_batch(self) -> Any | None:
        chunk = next(self._chunks, None)
        if chunk is None:
            return None
        batch = _verify_batch(chunk, self._first)
        self._first += len(chunk)
        self.unacked.append(batch)
        return batch

    def ack(self, r: Any) -> None:
        self.unacked.popleft()


_BatchRun = _ImportRun | _VerifyRun


def _ended_early() -> RegistryError:
    return RegistryError(
        grpc.StatusCode.INTERNAL,
        "STREAM_ENDED_EARLY",
        "the server ended the stream before answering every batch",
    )


def _take(window: threading.Semaphore, stopped: threading.Event) -> bool:
    """Wait for room in the window (the request thread of a stream); False once it ended."""
    while not window.acquire(timeout=0.1):
        if stopped.is_set():
            return False
    return not stopped.is_set()


def _sync_batches(
    resend: list[Any],
    window: threading.Semaphore,
    stopped: threading.Event,
    lock: threading.Lock,
    produce: Callable[[], Any | None],
) -> Iterator[Any]:
    """The request stream of one attempt: the unanswered batches again, then new ones, at
    most _WINDOW ahead of the answers (gRPC's request thread runs it)."""
    for batch in resend:
        if not _take(window, stopped):
            return
        yield batch
    while _take(window, stopped):
        with lock:
            batch = produce()
        if batch is None:
            return
        yield batch


async def _async_batches(
    resend: list[Any], window: asyncio.Semaphore, produce: Callable[[], Any | None]
) -> AsyncIterator[Any]:
    """The async twin of _sync_batches."""
    for batch in resend:
        await window.acquire()
        yield batch
    while True:
        await window.acquire()
        batch = produce()
        if batch is None:
            return
        yield batch


def _verify_batch(claims: list[VerifyRequest | str], first: int) -> Any:
    return identity_service_pb2.VerifyIdentityBatchesRequest(
        requests=list(_batch_requests(claims, first))
    )


def _watch_request(after_sequence: int, types: Sequence[ChangeType | str] | None) -> Any:
    return population_service_pb2.WatchChangesRequest(
        after_sequence=after_sequence, types=[_enum_in(ChangeType, t) for t in types or ()]
    )


def _batch_requests(requests: Iterable[VerifyRequest | str], first: int = 0) -> Iterator[Any]:
    """The request messages, numbered from ``first`` where the caller gave no correlation_id.
    The package's own CLI hands over messages it already built (checking each CSV row)."""
    message_type = identity_service_pb2.VerifyIdentityRequest
    for index, request in enumerate(requests, start=first):
        if isinstance(request, message_type):
            message = request
        else:
            item = VerifyRequest(request) if isinstance(request, str) else request
            message = item.to_proto()
        if not message.correlation_id:
            message.correlation_id = str(index)
        yield message


class _Base:
    _channel: Any  # grpc.Channel or grpc.aio.Channel, opened by the subclass's _open_channel

    def __init__(
        self,
        target: str,
        agency_id: str,
        kid: str,
        private_key_pem: str | bytes,
        *,
        tls: grpc.ChannelCredentials | None = None,
        audience: str = "citizen-registry",
        purpose: str | None = None,
        max_attempts: int = 4,
        initial_backoff: float = 0.2,
        max_backoff: float = 5.0,
        max_retry_delay: float = 30.0,
        timeout: float | None = 10.0,
        token_lifetime: int = LIFETIME,
        interceptors: Sequence[Any] = (),
        own_connection: bool = False,
    ):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.target = target
        self.purpose = purpose
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.max_retry_delay = max_retry_delay
        self.timeout = timeout
        self._tokens = TokenSource(agency_id, kid, private_key_pem, audience, token_lifetime)
        self._options = _CHANNEL_OPTIONS + (
            [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
        )
        self._open_channel(target, tls, interceptors)

    def _open_channel(
        self, target: str, tls: grpc.ChannelCredentials | None, interceptors: Sequence[Any]
    ) -> None:
        raise NotImplementedError

    def _rpc(self, call: _Call[Any]) -> Any:
        """The channel's callable for a unary call's method."""
        return self._channel.unary_unary(
            call.path,
            request_serializer=type(call.request).SerializeToString,
            response_deserializer=call.response_type.FromString,
        )

    def _metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        md: list[tuple[str, str | bytes]] = [("authorization", f"Bearer {self._tokens.token()}")]
        if self.purpose:
            if self.purpose.isascii() and self.purpose.isprintable():
                md.append(("x-purpose", self.purpose))
            else:
                md.append(("x-purpose-bin", self.purpose.encode("utf-8")))
        return tuple(md)

    def _retry_delay(self, error: RegistryError, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if attempt >= self.max_attempts:
            return None
        code = error.code
        retryable = (
            code == grpc.StatusCode.UNAVAILABLE
            # Rate limits carry RetryInfo; PIN_BUCKET_EXHAUSTED has none: retrying is useless.
            or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_delay is not None)
            or (code == grpc.StatusCode.ABORTED and error.reason == "CONCURRENT_UPDATE")
        )
        if not retryable:
            return None
        if error.retry_delay is not None and error.retry_delay > self.max_retry_delay:
            return None
        backoff = min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1))
        backoff *= random.uniform(0.5, 1.0)
        return float(max(backoff, error.retry_delay or 0.0))


class RegistryClient(_Base):
    """Blocking client of the registry for one agency.

    Args:
        target: ``host:port`` of the registry.
        agency_id, kid: the agency id and the key id registered for its public key.
        private_key_pem: the agency's private key (PKCS#8 or traditional PEM, unencrypted):
            P-256 signs ES256, Ed25519 EdDSA, RSA (2048+) RS256.
        tls: channel credentials (``grpc.ssl_channel_credentials(...)``); None = plaintext.
        audience: the registry's token audience.
        purpose: sent as ``x-purpose`` (``x-purpose-bin`` when not ASCII) on every call.
        max_attempts: attempts per call, retrying UNAVAILABLE, rate limits (RESOURCE_EXHAUSTED
            with RetryInfo) and ABORTED/CONCURRENT_UPDATE with exponential backoff, never
            sooner than the server's RetryInfo; a mutation resends the same request_id.
        timeout: deadline of each attempt of a unary call, in seconds.
        token_lifetime: seconds each minted token is valid (61 to 900, default 300); a new
            one is minted when the current one has less than a minute left.
        interceptors: extra gRPC client interceptors (logging, tracing, tests).
        own_connection: open a connection of its own rather than share one with the other
            clients of the same target in this process. A registry with several workers
            serves each connection in one of them: clients meant to run in parallel (the
            streams of ``registry-client batch-verify --streams``) each need their own.

    Use it as a context manager, or call close().
    """

    def _open_channel(
        self, target: str, tls: grpc.ChannelCredentials | None, interceptors: Sequence[Any]
    ) -> None:
        raw = (
            grpc.secure_channel(target, tls, options=self._options)
            if tls
            else grpc.insecure_channel(target, options=self._options)
        )
        self._raw_channel = raw
        self._channel = grpc.intercept_channel(raw, *interceptors) if interceptors else raw

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, call: _Call[R]) -> R:
        rpc = self._rpc(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = rpc(call.request, metadata=self._metadata(), timeout=self.timeout)
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
            else:
                return call.convert(response)
            delay = self._retry_delay(error, attempt)
            if delay is None:
                raise error
            time.sleep(delay)

    def register_birth(
        self,
        full_name: str,
        sex: Sex | str,
        date_of_birth: DateLike,
        registration_province_code: str,
        *,
        place_of_birth: str,
        hometown: str,
        ethnicity: str,
        registration_authority: str,
        registration_number: str,
        nationality: str = "VN",
        father_pin: str | None = None,
        mother_pin: str | None = None,
        registered_on: DateLike | None = None,
        request_id: str | None = None,
    ) -> Citizen:
        """Register a birth; returns the new citizen (``.pin`` is the child's PIN).

        ``request_id`` (default: a new UUID, kept for every retry) makes the call idempotent:
        the same id again returns the same citizen with ``replayed=True``.
        """
        return self._unary(
            _register_birth(
                full_name,
                sex,
                date_of_birth,
                registration_province_code,
                place_of_birth=place_of_birth,
                hometown=hometown,
                ethnicity=ethnicity,
                registration_authority=registration_authority,
                registration_number=registration_number,
                nationality=nationality,
                father_pin=father_pin,
                mother_pin=mother_pin,
                registered_on=registered_on,
                request_id=request_id,
            )
        )

    def register_death(
        self,
        pin: str,
        date_of_death: DateLike,
        *,
        registration_authority: str,
        registration_number: str,
        request_id: str | None = None,
    ) -> Citizen:
        """Register a death; returns the record (status DECEASED). Idempotent on request_id."""
        return self._unary(
            _register_death(
                pin,
                date_of_death,
                registration_authority=registration_authority,
                registration_number=registration_number,
                request_id=request_id,
            )
        )

    def annul_death_registration(
        self,
        pin: str,
        *,
        reason: str,
        decision_reference: str,
        request_id: str | None = None,
    ) -> Citizen:
        """Annul a death registered in error (status ALIVE again, date of death cleared) on
        the deciding authority's decision; returns the record. Idempotent on request_id."""
        return self._unary(
            _annul_death_registration(
                pin,
                reason=reason,
                decision_reference=decision_reference,
                request_id=request_id,
            )
        )

    def verify_identity(
        self,
        pin: str,
        full_name: str | None = None,
        date_of_birth: DateLike | None = None,
        sex: Sex | str | None = None,
        card_serial: str | None = None,
        *,
        correlation_id: str | None = None,
        want_attestation: bool = False,
    ) -> Verification:
        """Check presented identity data against the register (fields left None: unchecked)."""
        return self._unary(
            _verify_identity(
                pin,
                full_name,
                date_of_birth,
                sex,
                card_serial,
                correlation_id=correlation_id,
                want_attestation=want_attestation,
            )
        )

    def get_citizen(self, pin: str, fields: Sequence[str] | None = None) -> Citizen:
        """Read a citizen record (only ``fields`` when given). A replaced PIN is followed:
        the result's ``pin`` is then the new PIN, which should be stored instead."""
        return self._unary(_get_citizen(pin, fields))

    def issue_card(
        self,
        pin: str,
        serial: str,
        issue_date: DateLike,
        issuing_authority: str,
        *,
        kind: CardKind | str = CardKind.FIRST_ISSUE,
        request_id: str | None = None,
    ) -> Card:
        """Issue a card; returns it with the expiry date the registry computed."""
        return self._unary(
            _issue_card(
                pin, serial, issue_date, issuing_authority, kind=kind, request_id=request_id
            )
        )

    def list_cards(self, pin: str) -> list[Card]:
        """All of a citizen's cards, newest first."""
        return self._unary(_list_cards(pin))

    def revoke_card(self, serial: str, reason: str, *, request_id: str | None = None) -> Card:
        """Revoke a card (final)."""
        return self._unary(_card_change("Revoke", serial, reason, request_id))

    def withhold_card(self, serial: str, reason: str, *, request_id: str | None = None) -> Card:
        """Withhold an ACTIVE card temporarily."""
        return self._unary(_card_change("Withhold", serial, reason, request_id))

    def release_card(self, serial: str, reason: str, *, request_id: str | None = None) -> Card:
        """Release a WITHHELD card back to ACTIVE."""
        return self._unary(_card_change("Release", serial, reason, request_id))

    def link_legacy_id(self, pin: str, legacy_id: str, *, request_id: str | None = None) -> Citizen:
        """Link an old 9/12-digit CMND number to the citizen."""
        return self._unary(_link_legacy_id(pin, legacy_id, request_id))

    def resolve_legacy_id(self, legacy_id: str) -> str:
        """The PIN in use today for an old CMND number."""
        return self._unary(_resolve_legacy_id(legacy_id))

    def serving_instance(self) -> tuple[str, int]:
        """Which registry process serves this client's connection: (its opaque instance id,
        how many workers its host runs), from the headers of a GetSigningKeys answer;
        ("", 1) from a registry that sends none. Clients with ``own_connection`` compare
        them to reach different workers (``registry-client batch-verify --streams``)."""
        keys = _get_signing_keys()
        try:
            _, call = self._rpc(keys).with_call(
                keys.request, metadata=self._metadata(), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from None
        return _serving(call.trailing_metadata())

    def get_signing_keys(self) -> str:
        """The registry's attestation keys as a JWKS JSON document."""
        return self._unary(_get_signing_keys())

    def update_citizen(
        self, pin: str, expected_version: int, *, request_id: str | None = None, **changes: Any
    ) -> Citizen:
        """Change the named fields if the record is still at expected_version (else Aborted).

        Changing sex, birth year or province re-establishes the PIN: the result's pin is new.
        """
        return self._unary(_update_citizen(pin, expected_version, changes, request_id))

    def list_access_log(self, pin: str, page_size: int = 0, page_token: str = "") -> AccessLogPage:
        """One page of who accessed the citizen's data, newest first."""
        return self._unary(_list_access_log(pin, page_size, page_token))

    def get_audit_checkpoint(self) -> AuditCheckpoint:
        """The latest signed checkpoint of the audit log (NotFound before the first)."""
        return self._unary(_get_audit_checkpoint())

    def watch_changes(
        self, after_sequence: int = 0, types: Sequence[ChangeType | str] | None = None
    ) -> Iterator[ChangeEvent]:
        """Iterate over change events after ``after_sequence``, then wait for new ones.

        The iterator never ends on its own; close it (or break out) to stop. After
        UNAVAILABLE it reconnects from the last event received, so no event is lost or
        repeated (up to max_attempts reconnections without progress).
        """
        rpc = self._channel.unary_stream(
            _POPULATION + "WatchChanges",
            request_serializer=population_service_pb2.WatchChangesRequest.SerializeToString,
            response_deserializer=population_service_pb2.WatchChangesResponse.FromString,
        )
        last, attempt = after_sequence, 0
        while True:
            stream = rpc(_watch_request(last, types), metadata=self._metadata())
            try:
                for response in stream:
                    attempt = 0
                    event = ChangeEvent.from_proto(response.event)
                    last = event.sequence
                    yield event
                return
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
            finally:
                stream.cancel()
            attempt += 1
            delay = self._retry_delay(error, attempt)
            if delay is None:
                raise error
            time.sleep(delay)

    def import_citizens(
        self, records: Iterable[tuple[str, dict[str, Any]]], *, timeout: float | None = None
    ) -> ImportSummary:
        """Bulk-load records over one stream: (source_id, {Citizen field: value}) pairs.

        Re-sending records already imported is harmless (they count as duplicates). Not
        retried automatically: after UNAVAILABLE, send the whole file again.
        """
        rpc = self._channel.stream_unary(
            _POPULATION + "ImportCitizens",
            request_serializer=population_service_pb2.ImportCitizensRequest.SerializeToString,
            response_deserializer=population_service_pb2.ImportCitizensResponse.FromString,
        )
        try:
            answer = rpc(_import_requests(records), metadata=self._metadata(), timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from None
        return _import_summary(answer)

    def batch_verify(self, requests: Iterable[VerifyRequest | str]) -> Iterator[Verification]:
        """Verify many identities over one stream, answers in request order.

        ``requests`` may be lazy; requests without a correlation_id are numbered "0", "1",
        ... A rejected request yields a Verification whose ``error`` is set. Not retried.
        """
        rpc = self._channel.stream_stream(
            _IDENTITY + "BatchVerify",
            request_serializer=identity_service_pb2.VerifyIdentityRequest.SerializeToString,
            response_deserializer=identity_service_pb2.VerifyIdentityResponse.FromString,
        )
        stream = rpc(_batch_requests(requests), metadata=self._metadata())
        try:
            for response in stream:
                yield Verification.from_proto(response)
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from None
        finally:
            stream.cancel()

    def import_citizens_batched(
        self,
        records: Iterable[tuple[str, dict[str, Any]]],
        import_id: str,
        batch_size: int = 1000,
        *,
        timeout: float | None = None,
    ) -> ImportSummary:
        """Bulk-load records in batches over ImportCitizenBatches: (source_id, {Citizen field:
        value}) pairs, ``batch_size`` records a message, acknowledged in order.

        ``import_id`` names the run (1 to 128 printable ASCII characters). After UNAVAILABLE
        (up to max_attempts times without progress) it opens a new stream and resends from the
        last acknowledged batch: nothing is lost or written twice. Running it again with the
        same import_id, records and batch_size replays the acknowledged batches (their counts
        come back, nothing is written) and continues after them.
        """
        run = _ImportRun(records, import_id, batch_size)
        rpc = self._channel.stream_stream(
            _POPULATION + "ImportCitizenBatches",
            request_serializer=population_service_pb2.ImportCitizenBatchesRequest.SerializeToString,
            response_deserializer=population_service_pb2.ImportCitizenBatchesResponse.FromString,
        )
        for _ in self._batched(rpc, run, timeout):
            pass
        return run.summary()

    def verify_many(
        self, claims: Iterable[VerifyRequest | str], batch_size: int = 1000
    ) -> Iterator[Verification]:
        """Verify many identities over VerifyIdentityBatches, ``batch_size`` claims a message;
        yields one Verification per claim, in order (``error`` set on a refused one).

        Claims without a correlation_id are numbered "0", "1", ... After UNAVAILABLE it resends
        the batches not yet answered on a new stream (up to max_attempts times without
        progress); each check answered is audited once per answer received.
        """
        run = _VerifyRun(claims, batch_size)
        rpc = self._channel.stream_stream(
            _IDENTITY + "VerifyIdentityBatches",
            request_serializer=identity_service_pb2.VerifyIdentityBatchesRequest.SerializeToString,
            response_deserializer=identity_service_pb2.VerifyIdentityBatchesResponse.FromString,
        )
        for response in self._batched(rpc, run):
            for item in response.responses:
                yield Verification.from_proto(item)

    def _batched(self, rpc: Any, run: _BatchRun, timeout: float | None = None) -> Iterator[Any]:
        """Drive a chunked stream: send run's batches at most _WINDOW ahead of the answers and
        yield each answer once run has taken it; after UNAVAILABLE (up to max_attempts times
        without progress) resend the unanswered batches on a new stream."""
        attempt = 0
        while True:
            window = threading.Semaphore(_WINDOW)
            lock = threading.Lock()
            stopped = threading.Event()
            batches = _sync_batches(run.resend(), window, stopped, lock, run.next_batch)
            stream = rpc(batches, metadata=self._metadata(), timeout=timeout)
            try:
                for response in stream:
                    with lock:
                        run.ack(response)
                    window.release()
                    attempt = 0
                    yield response
                if not run.unacked:
                    return
                raise _ended_early()
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
            finally:
                stopped.set()
                stream.cancel()
            attempt += 1
            delay = self._retry_delay(error, attempt)
            if delay is None or error.code != grpc.StatusCode.UNAVAILABLE:
                raise error
            time.sleep(delay)


class AsyncRegistryClient(_Base):
    """The asyncio (grpc.aio) client; the same arguments and methods as RegistryClient,
    as coroutines and async iterators. Use ``async with`` or ``await close()``."""

    def _open_channel(
        self, target: str, tls: grpc.ChannelCredentials | None, interceptors: Sequence[Any]
    ) -> None:
        extra = list(interceptors) or None
        self._channel = (
            grpc.aio.secure_channel(target, tls, options=self._options, interceptors=extra)
            if tls
            else grpc.aio.insecure_channel(target, options=self._options, interceptors=extra)
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncRegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, call: _Call[R]) -> R:
        rpc = self._rpc(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await rpc(call.request, metadata=self._metadata(), timeout=self.timeout)
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
            else:
                return call.convert(response)
            delay = self._retry_delay(error, attempt)
            if delay is None:
                raise error
            await asyncio.sleep(delay)

    async def register_birth(self, *args: Any, **kwargs: Any) -> Citizen:
        """See RegistryClient.register_birth."""
        return await self._unary(_register_birth(*args, **kwargs))

    async def register_death(self, *args: Any, **kwargs: Any) -> Citizen:
        """See RegistryClient.register_death."""
        return await self._unary(_register_death(*args, **kwargs))

    async def annul_death_registration(self, *args: Any, **kwargs: Any) -> Citizen:
        """See RegistryClient.annul_death_registration."""
        return await self._unary(_annul_death_registration(*args, **kwargs))

    async def verify_identity(self, *args: Any, **kwargs: Any) -> Verification:
        """See RegistryClient.verify_identity."""
        return await self._unary(_verify_identity(*args, **kwargs))

    async def get_citizen(self, pin: str, fields: Sequence[str] | None = None) -> Citizen:
        """See RegistryClient.get_citizen."""
        return await self._unary(_get_citizen(pin, fields))

    async def issue_card(self, *args: Any, **kwargs: Any) -> Card:
        """See RegistryClient.issue_card."""
        return await self._unary(_issue_card(*args, **kwargs))

    async def list_cards(self, pin: str) -> list[Card]:
        """See RegistryClient.list_cards."""
        return await self._unary(_list_cards(pin))

    async def revoke_card(self, serial: str, reason: str, *, request_id: str | None = None) -> Card:
        """See RegistryClient.revoke_card."""
        return await self._unary(_card_change("Revoke", serial, reason, request_id))

    async def withhold_card(
        self, serial: str, reason: str, *, request_id: str | None = None
    ) -> Card:
        """See RegistryClient.withhold_card."""
        return await self._unary(_card_change("Withhold", serial, reason, request_id))

    async def release_card(
        self, serial: str, reason: str, *, request_id: str | None = None
    ) -> Card:
        """See RegistryClient.release_card."""
        return await self._unary(_card_change("Release", serial, reason, request_id))

    async def link_legacy_id(
        self, pin: str, legacy_id: str, *, request_id: str | None = None
    ) -> Citizen:
        """See RegistryClient.link_legacy_id."""
        return await self._unary(_link_legacy_id(pin, legacy_id, request_id))

    async def resolve_legacy_id(self, legacy_id: str) -> str:
        """See RegistryClient.resolve_legacy_id."""
        return await self._unary(_resolve_legacy_id(legacy_id))

    async def serving_instance(self) -> tuple[str, int]:
        """See RegistryClient.serving_instance."""
        keys = _get_signing_keys()
        call = self._rpc(keys)(keys.request, metadata=self._metadata(), timeout=self.timeout)
        try:
            await call
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from None
        return _serving(await call.trailing_metadata())

    async def get_signing_keys(self) -> str:
        """See RegistryClient.get_signing_keys."""
        return await self._unary(_get_signing_keys())

    async def update_citizen(
        self, pin: str, expected_version: int, *, request_id: str | None = None, **changes: Any
    ) -> Citizen:
        """See RegistryClient.update_citizen."""
        return await self._unary(_update_citizen(pin, expected_version, changes, request_id))

    async def list_access_log(
        self, pin: str, page_size: int = 0, page_token: str = ""
    ) -> AccessLogPage:
        """See RegistryClient.list_access_log."""
        return await self._unary(_list_access_log(pin, page_size, page_token))

    async def get_audit_checkpoint(self) -> AuditCheckpoint:
        """See RegistryClient.get_audit_checkpoint."""
        return await self._unary(_get_audit_checkpoint())

    async def watch_changes(
        self, after_sequence: int = 0, types: Sequence[ChangeType | str] | None = None
    ) -> AsyncIterator[ChangeEvent]:
        """See RegistryClient.watch_changes."""
        rpc = self._channel.unary_stream(
            _POPULATION + "WatchChanges",
            request_serializer=population_service_pb2.WatchChangesRequest.SerializeToString,
            response_deserializer=population_service_pb2.WatchChangesResponse.FromString,
        )
        last, attempt = after_sequence, 0
        while True:
            stream = rpc(_watch_request(last, types), metadata=self._metadata())
            try:
                async for response in stream:
                    attempt = 0
                    event = ChangeEvent.from_proto(response.event)
                    last = event.sequence
                    yield event
                return
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
            finally:
                stream.cancel()
            attempt += 1
            delay = self._retry_delay(error, attempt)
            if delay is None:
                raise error
            await asyncio.sleep(delay)

    async def import_citizens(self, records: Iterable[tuple[str, dict[str, Any]]]) -> ImportSummary:
        """See RegistryClient.import_citizens (bound it with asyncio.timeout if needed)."""
        rpc = self._channel.stream_unary(
            _POPULATION + "ImportCitizens",
            request_serializer=population_service_pb2.ImportCitizensRequest.SerializeToString,
            response_deserializer=population_service_pb2.ImportCitizensResponse.FromString,
        )
        try:
            answer = await rpc(_import_requests(records), metadata=self._metadata())
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from None
        return _import_summary(answer)

    async def batch_verify(
        self, requests: Iterable[VerifyRequest | str]
    ) -> AsyncIterator[Verification]:
        """See RegistryClient.batch_verify."""
        rpc = self._channel.stream_stream(
            _IDENTITY + "BatchVerify",
            request_serializer=identity_service_pb2.VerifyIdentityRequest.SerializeToString,
            response_deserializer=identity_service_pb2.VerifyIdentityResponse.FromString,
        )
        stream = rpc(_batch_requests(requests), metadata=self._metadata())
        try:
            async for response in stream:
                yield Verification.from_proto(response)
        except grpc.RpcError as exc:
            raise error_from_rpc_error(exc) from None
        finally:
            stream.cancel()

    async def import_citizens_batched(
        self,
        records: Iterable[tuple[str, dict[str, Any]]],
        import_id: str,
        batch_size: int = 1000,
    ) -> ImportSummary:
        """See RegistryClient.import_citizens_batched."""
        run = _ImportRun(records, import_id, batch_size)
        rpc = self._channel.stream_stream(
            _POPULATION + "ImportCitizenBatches",
            request_serializer=population_service_pb2.ImportCitizenBatchesRequest.SerializeToString,
            response_deserializer=population_service_pb2.ImportCitizenBatchesResponse.FromString,
        )
        async for _ in self._batched(rpc, run):
            pass
        return run.summary()

    async def verify_many(
        self, claims: Iterable[VerifyRequest | str], batch_size: int = 1000
    ) -> AsyncIterator[Verification]:
        """See RegistryClient.verify_many."""
        run = _VerifyRun(claims, batch_size)
        rpc = self._channel.stream_stream(
            _IDENTITY + "VerifyIdentityBatches",
            request_serializer=identity_service_pb2.VerifyIdentityBatchesRequest.SerializeToString,
            response_deserializer=identity_service_pb2.VerifyIdentityBatchesResponse.FromString,
        )
        async for response in self._batched(rpc, run):
            for item in response.responses:
                yield Verification.from_proto(item)

    async def _batched(self, rpc: Any, run: _BatchRun) -> AsyncIterator[Any]:
        """See RegistryClient._batched."""
        attempt = 0
        while True:
            window = asyncio.Semaphore(_WINDOW)
            stream = rpc(
                _async_batches(run.resend(), window, run.next_batch), metadata=self._metadata()
            )
            try:
                async for response in stream:
                    run.ack(response)
                    window.release()
                    attempt = 0
                    yield response
                if not run.unacked:
                    return
                raise _ended_early()
            except grpc.RpcError as exc:
                error = error_from_rpc_error(exc)
            finally:
                stream.cancel()
            attempt += 1
            delay = self._retry_delay(error, attempt)
            if delay is None or error.code != grpc.StatusCode.UNAVAILABLE:
                raise error
            await asyncio.sleep(delay)
