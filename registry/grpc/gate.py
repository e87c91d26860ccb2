"""The gate every RPC passes: authentication, scope, deadline, audit, error translation, one
access-log line.

Implemented as an aio server interceptor that wraps each method handler, so the wrapper runs
in the handler's own task: it can abort with a rich status, and the call's context (the
authenticated caller, the PINs it touches) is visible to the servicer through `current_call()`.

Audit (SPEC §7): once the caller is authenticated and within its rate limit, a call that names
or reaches a citizen's PIN answers only after its audit entry is durable — refusals (missing
scope, bad request, not found) included. The PINs come from the request's `pin` / `*_pin`
fields and from what the servicer reports with `touch()` (a new child's PIN, a card's holder);
servicers that answer for many citizens at once (BatchVerify, the imports, WatchChanges) write
an entry per item, batch or page through the same `CallContext.audit` (registry.grpc.calls).
Unauthenticated and rate-limited calls are not audited: nothing was looked at, and writing for
them would let anyone flood the log; the access log counts them.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from registry.db.pool import is_conflict, is_unavailable
from registry.grpc.bounds import MAX_UNARY_REQUEST_BYTES, Oversized, oversized_fields
from registry.grpc.calls import CallContext, begin
from registry.grpc.errors import to_grpc_status
from registry.rules.audit import clean_text
from registry.rules.errors import (
    Code,
    FieldViolation,
    QuotaViolation,
    RegistryError,
    invalid_argument,
    permission_denied,
    unauthenticated,
    unavailable,
)
from registry.rules.limits import RateLimiter
from registry.rules.model import Caller
from registry.rules.tokens import TokenVerifier, unverified_key_id
from registry.runtime import metrics
from registry.runtime.access_log import AccessLog
from registry.runtime.audit_writer import AuditUnavailable, AuditWriter
from registry.runtime.caches import AgencyDirectory
from registry.v1 import (
    audit_service_pb2,
    card_service_pb2,
    civil_registration_service_pb2,
    identity_service_pb2,
    options_pb2,
    population_service_pb2,
)

log = logging.getLogger(__name__)

INSTANCE_HEADER = "x-registry-instance"
"""Names the server process that answered (an opaque id, new at each start): trailing metadata
of every unary answer and of every refusal of an authenticated caller, initial metadata of every
admitted stream. With WORKERS_HEADER (how many workers that process's host runs on the port) a
client opening several connections can tell whether they reach different workers."""
WORKERS_HEADER = "x-registry-workers"

_V1 = "/registry.v1."
SERVICE_FILES = (
    civil_registration_service_pb2,
    card_service_pb2,
    identity_service_pb2,
    population_service_pb2,
    audit_service_pb2,
)
"""The proto files of the registry's services: the one list that the gate's scope table, the
health statuses and reflection are read from."""
SERVICE_NAMES = tuple(
    service.full_name
    for file in SERVICE_FILES
    for service in file.DESCRIPTOR.services_by_name.values()
)


def method_scopes() -> dict[str, str | None]:
    """The scope each RPC needs, read from its ``(registry.v1.access)`` option (SPEC §5; the
    protos are where a rule is declared, once). None: any authenticated agency. A method
    without the option is left out, and the gate refuses a method it does not find here: a
    new RPC must be given its rule deliberately."""
    scopes: dict[str, str | None] = {}
    for file in SERVICE_FILES:
        for service in file.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(options_pb2.access):
                    continue
                access = options.Extensions[options_pb2.access]
                path = f"/{service.full_name}/{method.name}"
                if access.WhichOneof("rule") == "scope" and access.scope:
                    scopes[path] = access.scope
                elif access.WhichOneof("rule") == "any_agency" and access.any_agency:
                    scopes[path] = None
    return scopes


METHOD_SCOPES = method_scopes()
# Scopes that widen what a method answers, checked by its servicer: with it, ListAccessLog
# shows confidential agencies' entries in full (SPEC §6; oversight bodies).
READ_CONFIDENTIAL_SCOPE = "audit:read-confidential"
# The calls that can commit a change event (migration 0007's triggers): when one ends, the
# change feed's sequencer is woken (`on_change`).
CHANGING_METHODS = frozenset(
    f"{_V1}{name}"
    for name in (
        "CivilRegistrationService/RegisterBirth",
        "CivilRegistrationService/RegisterDeath",
        "CivilRegistrationService/AnnulDeathRegistration",
        "CardService/IssueCard",
        "CardService/RevokeCard",
        "CardService/WithholdCard",
        "CardService/ReleaseCard",
        "CardService/LinkLegacyId",
        "PopulationService/ImportCitizens",
        "PopulationService/ImportCitizenBatches",
        "PopulationService/UpdateCitizen",
    )
)
# The chunked RPCs (SPEC §10) take messages of at most 4 MiB: the transport lets larger ones
# through (registry.app.MAX_RECEIVE_BYTES) so that the caller gets INVALID_ARGUMENT naming
# this limit rather than a bare RESOURCE_EXHAUSTED.
BATCH_MAX_BYTES = 4 * 1024 * 1024
# Every other method keeps gRPC's default limit, answered as gRPC itself would answer it
# (RESOURCE_EXHAUSTED), now with details.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
MESSAGE_LIMITS: dict[str, int] = {
    f"{_V1}PopulationService/ImportCitizenBatches": BATCH_MAX_BYTES,
    f"{_V1}IdentityService/VerifyIdentityBatches": BATCH_MAX_BYTES,
}
# Served without a token: load balancers and tools must reach these.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_MAX_PURPOSE = 200


def _check_deadline(context: grpc.aio.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise RegistryError(
            Code.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
            "the call's deadline passed before the registry could start it; nothing was done",
        )


def _bearer(metadata: Any) -> tuple[str, str]:
    token = ""
    purpose = ""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, rest = value.partition(" ")
            if scheme.lower() == "bearer":
                token = rest.strip()
        elif key == "x-purpose" and isinstance(value, str):
            purpose = clean_text(value, _MAX_PURPOSE)
        elif key == "x-purpose-bin" and isinstance(value, bytes):
            # gRPC metadata values are ASCII: a purpose in Vietnamese travels as UTF-8 bytes.
            purpose = clean_text(value.decode("utf-8", "replace"), _MAX_PURPOSE)
    return token, purpose


class Undecodable:
    """A request message that could not be parsed (corrupt wire format, invalid UTF-8), or
    one larger than its method accepts."""

    __slots__ = ("message_type", "problem")

    def __init__(self, message_type: str, problem: str):
        self.message_type = message_type
        self.problem = problem

    def error(self) -> RegistryError:
        return invalid_argument(
            [
                FieldViolation(
                    "request",
                    f"is not a valid {self.message_type} message ({self.problem})",
                )
            ]
        )


class _Oversized(Undecodable):
    __slots__ = ()

    def error(self) -> RegistryError:
        # A chunked RPC's batch is a bad request naming its limit (SPEC §10); any other
        # message over the transport's usual limit is what gRPC calls RESOURCE_EXHAUSTED.
        if self.message_type.endswith("BatchesRequest"):
            return invalid_argument([FieldViolation("request", self.problem)])
        return RegistryError(
            Code.RESOURCE_EXHAUSTED,
            "MESSAGE_TOO_LARGE",
            f"the request message {self.problem}",
            quota_violations=(QuotaViolation("request", self.problem),),
        )


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, max_bytes: int | None, *, unary: bool = False
) -> Callable[[bytes], Any] | None:
    """Wrap a request deserializer so that a corrupt message becomes an `Undecodable`, and one
    longer than max_bytes an `Oversized` (unary requests) or `_Oversized` (stream messages),
    not parsed at all.

    gRPC parses requests before any handler code runs and answers a parse failure with a
    detail-less UNKNOWN (logging a traceback): instead the gate answers it, after
    authentication, with INVALID_ARGUMENT like any other bad request. Parsing runs on the
    event loop, in proportion to the message: a size beyond max_bytes is answered from the
    length alone (registry.grpc.bounds).
    """
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else "request"

    def deserialize(data: bytes) -> Any:
        if max_bytes is not None and len(data) > max_bytes:
            if unary:
                return Oversized(name, len(data))
            return _Oversized(
                name,
                f"is {len(data):,} bytes; a message of this method may hold at most "
                f"{max_bytes:,} bytes ({max_bytes // (1024 * 1024)} MiB)",
            )
        try:
            return deserializer(data)
        except Exception as exc:
            problem = "invalid UTF-8 in a string field" if "UTF-8" in str(exc) else "corrupt"
            return Undecodable(name, problem)

    return deserialize


class _CheckedStream:
    """A request stream that raises INVALID_ARGUMENT at a message that could not be parsed.

    A plain iterator class, not an async generator: a generator abandoned by a cancelled
    reader would be closed later by a task of its own, outliving the call.
    """

    def __init__(self, requests: AsyncIterator[Any]):
        self._requests = requests.__aiter__()

    def __aiter__(self) -> _CheckedStream:
        return self

    async def __anext__(self) -> Any:
        request = await self._requests.__anext__()
        if isinstance(request, Undecodable):
            raise request.error()
        return request


def certificate_names(auth_context: Any) -> set[str]:
    """Return the names a verified client certificate carries (subject CN and SANs)."""
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth_context.get(key, ()):
            text = value.decode() if isinstance(value, bytes) else str(value)
            names.add(text.removeprefix("agency:"))
    return names


def _check_certificate(context: grpc.aio.ServicerContext, agency_id: str) -> None:
    names = certificate_names(context.auth_context())
    if agency_id not in names:
        raise unauthenticated(
            "CLIENT_CERT_AGENCY_MISMATCH",
            f"the client certificate does not belong to agency {agency_id!r} named in the token "
            "(its subject CN or a SAN must be the agency id)",
        )


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticate and authorise every non-public call; translate its errors."""

    def __init__(
        self,
        directory: AgencyDirectory,
        verifier: TokenVerifier,
        access: AccessLog,
        audit: AuditWriter,
        *,
        bind_client_certificates: bool = False,
        on_change: Callable[[], None] | None = None,
        limit_shares: int = 1,
        workers: int = 1,
    ):
        self._directory = directory
        self._verifier = verifier
        self._access = access
        self._audit = audit
        # With mutual TLS the client certificate must name the agency the token names: a
        # stolen token is useless without that agency's certificate and key.
        self._bind_certificates = bind_client_certificates
        self._limits = RateLimiter(shares=limit_shares)
        self._on_change = on_change or (lambda: None)
        self._instance = ((INSTANCE_HEADER, uuid.uuid4().hex[:12]), (WORKERS_HEADER, str(workers)))
        # Handlers are fixed per method, so each is wrapped once, not on every call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        scope = METHOD_SCOPES.get(method, "")
        wrap = {
            "unary_unary": (self._unary, grpc.unary_unary_rpc_method_handler),
            "stream_unary": (self._unary, grpc.stream_unary_rpc_method_handler),
            "unary_stream": (self._streaming, grpc.unary_stream_rpc_method_handler),
            "stream_stream": (self._streaming, grpc.stream_stream_rpc_method_handler),
        }
        for kind, (wrapper, make) in wrap.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                streamed_in = kind.startswith("stream_")
                wrapped = make(
                    wrapper(behavior, method, scope, streamed_in),
                    request_deserializer=_tolerant(
                        handler.request_deserializer,
                        MAX_UNARY_REQUEST_BYTES
                        if not streamed_in
                        else MESSAGE_LIMITS.get(method, DEFAULT_MAX_BYTES),
                        unary=not streamed_in,
                    ),
                    response_serializer=handler.response_serializer,
                )
                self._wrapped[method] = wrapped
                return wrapped
        return handler

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        token, purpose = _bearer(context.invocation_metadata())
        if not token:
            raise unauthenticated(
                "TOKEN_MISSING", "the call needs 'authorization: Bearer <agency JWT>' metadata"
            )
        try:
            caller = self._verifier.verify(token, self._directory.snapshot, purpose)
        except RegistryError as exc:
            key_id = unverified_key_id(token) if exc.reason == "TOKEN_KEY_UNKNOWN" else None
            if key_id is None or not await self._directory.refresh_for_unknown_key(*key_id):
                raise
            caller = self._verifier.verify(token, self._directory.snapshot, purpose)
        if self._bind_certificates:
            _check_certificate(context, caller.agency_id)
        return caller

    @staticmethod
    def _permit(caller: Caller, scope: str | None) -> None:
        if scope == "":
            raise permission_denied("METHOD_NOT_ALLOWED", "this method is not open to agencies")
        if scope is not None and scope not in caller.scopes:
            raise permission_denied(
                "SCOPE_MISSING",
                f"the token does not grant the scope {scope!r} this method needs",
                required_scope=scope,
            )

    def _log(self, outcome: _Outcome, method: str, started: float) -> None:
        if outcome.status == "RESOURCE_EXHAUSTED":
            metrics.REFUSED.labels(outcome.agency, outcome.reason).inc()
        if self._access.enabled:
            latency_ms = (time.perf_counter() - started) * 1000
            self._access.record(outcome.agency, method, outcome.status, outcome.reason, latency_ms)

    # The wrappers below share plain helpers rather than an async context manager: they run
    # on every call, and a context manager's enter/exit cost ~3% of a verification.

    async def _open(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        method: str,
        scope: str | None,
        streamed_in: bool,
        outcome: _Outcome,
    ) -> Any:
        """Admit a call: authenticate, open its context, check scope and deadline.

        Returns the request to hand to the servicer (a request stream checked message by
        message; a unary request within its size, every list within its count). The context
        is set in the call's own task and not reset: a response stream the client cancels is
        closed from another context, and the task ends with the call.
        """
        caller = await self._authenticate(context)
        outcome.agency = caller.agency_id
        self._limits.check(caller.agency_id, caller.rate_limit)
        ctx = outcome.ctx = CallContext(caller, method, request, time.time(), self._audit)
        begin(ctx)
        self._permit(caller, scope)
        _check_deadline(context)
        if streamed_in:
            return _CheckedStream(request)
        if isinstance(request, Undecodable | Oversized):
            raise request.error()
        # Every list of the request within its maximum count before any servicer walks it.
        violations = oversized_fields(request)
        if violations:
            raise invalid_argument(violations)
        return request

    async def _audit_answer(self, outcome: _Outcome) -> None:
        """Make the audit entry of a call that succeeded durable, before it answers."""
        ctx = outcome.ctx
        assert ctx is not None  # set by _open
        if ctx.pins:
            ctx.audited = True
            await ctx.audit((ctx.entry("OK"),))

    def _unary(
        self, behavior: Callable[..., Any], method: str, scope: str | None, streamed_in: bool
    ) -> Callable[..., Any]:
        changes = method in CHANGING_METHODS

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            outcome = _Outcome()
            try:
                request = await self._open(request, context, method, scope, streamed_in, outcome)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                await self._audit_answer(outcome)
                context.set_trailing_metadata(self._instance)
                return result
            except BaseException as exc:
                await self._fail(exc, context, outcome)
                raise
            finally:
                if changes:
                    # Whatever the outcome: a call cancelled after its commit changed things.
                    self._on_change()
                self._log(outcome, method, started)

        return call

    def _streaming(
        self, behavior: Callable[..., Any], method: str, scope: str | None, streamed_in: bool
    ) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            outcome = _Outcome()
            try:
                request = await self._open(request, context, method, scope, streamed_in, outcome)
                await context.send_initial_metadata(self._instance)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    await result
                else:
                    async for response in result:
                        yield response
                await self._audit_answer(outcome)
            except BaseException as exc:
                await self._fail(exc, context, outcome)
                raise
            finally:
                self._log(outcome, method, started)

        return call

    async def _fail(
        self, exc: BaseException, context: grpc.aio.ServicerContext, outcome: _Outcome
    ) -> None:
        """Audit the refusal and abort the call with the status it deserves (raises)."""
        ctx = outcome.ctx
        if isinstance(exc, grpc.aio.AbortError):
            return  # already aborted
        if not isinstance(exc, Exception):
            # Cancelled while waiting (CancelledError) or while waiting to write an answer of a
            # response stream (gRPC closes the handler: GeneratorExit); both are the client
            # gone or the deadline passed.
            outcome.status = "CANCELLED"
            if ctx is not None and ctx.pins and not ctx.audited:
                ctx.audit_later((ctx.entry("CANCELLED"),))
            return  # cancellation (client gone, deadline passed): nothing to answer
        error = _as_registry_error(exc)
        if ctx is not None and ctx.pins and not ctx.audited:
            try:
                await ctx.audit((ctx.entry(error.code.value),))
            except AuditUnavailable as audit_error:
                error = audit_error
        outcome.status = error.code.value
        outcome.reason = error.reason
        status = to_grpc_status(error)
        # abort() itself, not abort_with_status(): what gRPC does for the latter, but through
        # the context a wrapping interceptor handed us (tracing records the code there).
        # Only an authenticated caller learns which process refused it: to anyone else a new
        # instance id would announce that a worker restarted (a crash oracle).
        named = self._instance if outcome.agency != "-" else ()
        await context.abort(status.code, status.details, (*status.trailing_metadata, *named))


def _as_registry_error(exc: Exception) -> RegistryError:
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, NotImplementedError):
        return RegistryError(
            Code.UNIMPLEMENTED, "NOT_IMPLEMENTED", "this RPC is declared but not implemented yet"
        )
    if is_conflict(exc):
        log.warning("transaction conflict: %s", type(exc).__name__)
        return RegistryError(
            Code.ABORTED,
            "CONCURRENT_UPDATE",
            "the call collided with a concurrent change; retry it with the same request_id",
            retry_after_s=0.1,
        )
    if is_unavailable(exc):
        log.warning("database unavailable: %s", type(exc).__name__)
        return unavailable("the register's database is temporarily unavailable; retry shortly")
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s", error_id, exc_info=exc)
    return RegistryError(
        Code.INTERNAL,
        "INTERNAL",
        f"internal error; quote error id {error_id} to the registry operator",
        metadata={"error_id": error_id},
    )


class _Outcome:
    __slots__ = ("agency", "ctx", "reason", "status")

    def __init__(self) -> None:
        self.ctx: CallContext | None = None
        self.agency = "-"
        self.status = "OK"
        self.reason = ""
