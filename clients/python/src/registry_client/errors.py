"""RegistryError and its subclasses, decoded from gRPC status and google.rpc details."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True)
class Violation:
    """A precondition or quota violation (google.rpc.PreconditionFailure / QuotaFailure)."""

    type: str
    subject: str
    description: str


class RegistryError(Exception):
    """A call failed. Raised as the subclass for its status code (NotFound, ...).

    Attributes:
        code: the gRPC status code.
        reason: google.rpc.ErrorInfo.reason (see docs/errors.md), or "" when absent.
        message: the status message.
        field_violations: google.rpc.BadRequest violations (INVALID_ARGUMENT).
        retry_delay: google.rpc.RetryInfo.retry_delay in seconds, or None.
        metadata: google.rpc.ErrorInfo.metadata.
        violations: google.rpc.PreconditionFailure and QuotaFailure violations.
        details: every decoded google.rpc detail message.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
        *,
        metadata: dict[str, str] | None = None,
        violations: tuple[Violation, ...] = (),
        details: tuple[Any, ...] = (),
    ):
        super().__init__(f"{code.name}{f' {reason}' if reason else ''}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.field_violations = field_violations
        self.retry_delay = retry_delay
        self.metadata = metadata or {}
        self.violations = violations
        self.details = details


class Cancelled(RegistryError):
    pass


class Unknown(RegistryError):
    pass


class InvalidArgument(RegistryError):
    pass


class DeadlineExceeded(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class AlreadyExists(RegistryError):
    pass


class PermissionDenied(RegistryError):
    pass


class ResourceExhausted(RegistryError):
    pass


class FailedPrecondition(RegistryError):
    pass


class Aborted(RegistryError):
    pass


class OutOfRange(RegistryError):
    pass


class Unimplemented(RegistryError):
    pass


class Internal(RegistryError):
    pass


class Unavailable(RegistryError):
    pass


class DataLoss(RegistryError):
    pass


class Unauthenticated(RegistryError):
    pass


_CLASSES: dict[grpc.StatusCode, type[RegistryError]] = {
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNKNOWN: Unknown,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _build(
    code: grpc.StatusCode, message: str, detail_anys: Any, cause: Any = None
) -> RegistryError:
    reason = ""
    metadata: dict[str, str] = {}
    fields: list[FieldViolation] = []
    violations: list[Violation] = []
    retry: float | None = None
    decoded: list[Any] = []
    for any_ in detail_anys:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.QuotaFailure,
        ):
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                decoded.append(msg)
                break
        else:
            decoded.append(any_)
            continue
        if isinstance(msg, error_details_pb2.ErrorInfo):
            reason, metadata = msg.reason, dict(msg.metadata)
        elif isinstance(msg, error_details_pb2.BadRequest):
            fields += [FieldViolation(v.field, v.description) for v in msg.field_violations]
        elif isinstance(msg, error_details_pb2.RetryInfo):
            retry = msg.retry_delay.seconds + msg.retry_delay.nanos / 1e9
        elif isinstance(msg, error_details_pb2.PreconditionFailure):
            violations += [Violation(v.type, v.subject, v.description) for v in msg.violations]
        else:
            violations += [Violation("", v.subject, v.description) for v in msg.violations]
    error = _CLASSES.get(code, RegistryError)(
        code,
        reason,
        message,
        tuple(fields),
        retry,
        metadata=metadata,
        violations=tuple(violations),
        details=tuple(decoded),
    )
    error.__cause__ = cause
    return error


def error_from_rpc_error(exc: grpc.RpcError) -> RegistryError:
    """Convert a failed call (sync or grpc.aio) into a RegistryError subclass."""
    call: Any = exc
    code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    message = (call.details() if hasattr(call, "details") else None) or ""
    trailers = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    details: Any = ()
    for key, value in trailers or ():
        if key == DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            message = message or status.message
            details = status.details
            break
    return _build(code, message, details, exc)


def error_from_status(status: status_pb2.Status) -> RegistryError:
    """Convert a google.rpc.Status message (e.g. a BatchVerify answer's error)."""
    code = _BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return _build(code, status.message, status.details)
