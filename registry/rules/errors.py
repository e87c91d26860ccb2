"""Domain errors: what went wrong, in words and codes a caller can act on.

Each error carries a gRPC-independent code name, an UPPER_SNAKE reason (ErrorInfo.reason, in
the single domain DOMAIN) and optional details; `registry.grpc.errors` turns it into a gRPC
status with google.rpc details. Nothing here imports grpc.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

DOMAIN = "citizen-registry"


class Code(Enum):
    """The subset of gRPC status codes the registry answers with."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    OUT_OF_RANGE = "OUT_OF_RANGE"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (google.rpc.PreconditionFailure.Violation)."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exhausted quota (google.rpc.QuotaFailure.Violation)."""

    subject: str
    description: str


@dataclass
class RegistryError(Exception):
    """An error answered to the caller with a precise status and details."""

    code: Code
    reason: str
    message: str
    field_violations: Sequence[FieldViolation] = ()
    precondition_violations: Sequence[PreconditionViolation] = ()
    quota_violations: Sequence[QuotaViolation] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.value} {self.reason}: {self.message}"


def invalid_argument(violations: Sequence[FieldViolation]) -> RegistryError:
    """Build the INVALID_ARGUMENT error naming every bad field."""
    names = ", ".join(v.field for v in violations)
    return RegistryError(
        Code.INVALID_ARGUMENT,
        "INVALID_FIELDS",
        f"the request has invalid fields: {names}",
        field_violations=tuple(violations),
    )


def not_found(reason: str, message: str, **metadata: str) -> RegistryError:
    """Build a NOT_FOUND error."""
    return RegistryError(Code.NOT_FOUND, reason, message, metadata=metadata)


def failed_precondition(
    reason: str, message: str, violations: Sequence[PreconditionViolation], **metadata: str
) -> RegistryError:
    """Build a FAILED_PRECONDITION error with its PreconditionFailure violations."""
    return RegistryError(
        Code.FAILED_PRECONDITION,
        reason,
        message,
        precondition_violations=tuple(violations),
        metadata=metadata,
    )


def pin_cancelled(pin: str, replaced_by_pin: str | None, then: str) -> RegistryError:
    """Refuse a change to a citizen whose PIN was cancelled (re-established after a
    correction): the one wording of every RPC, naming the replacement the caller needs
    (`replaced_by_pin` in the ErrorInfo too) and what to do under it (`then`)."""
    return failed_precondition(
        "PIN_CANCELLED",
        f"PIN {pin} was cancelled and replaced by {replaced_by_pin}; {then}",
        [PreconditionViolation("PIN_CANCELLED", pin, "this PIN is no longer in use")],
        replaced_by_pin=replaced_by_pin or "",
    )


def unavailable(message: str, retry_after_s: float = 1.0) -> RegistryError:
    """Build the UNAVAILABLE error answered while the database cannot be reached."""
    return RegistryError(
        Code.UNAVAILABLE, "DATABASE_UNAVAILABLE", message, retry_after_s=retry_after_s
    )


def unauthenticated(reason: str, message: str, **metadata: str) -> RegistryError:
    """Build an UNAUTHENTICATED error (the token is missing or not acceptable)."""
    return RegistryError(Code.UNAUTHENTICATED, reason, message, metadata=metadata)


def permission_denied(reason: str, message: str, **metadata: str) -> RegistryError:
    """Build a PERMISSION_DENIED error (valid caller, not allowed to do this)."""
    return RegistryError(Code.PERMISSION_DENIED, reason, message, metadata=metadata)


def feed_pruned(after: int, pruned_through: int) -> RegistryError:
    """Build the refusal of a WatchChanges cursor older than the retained events."""
    return RegistryError(
        Code.OUT_OF_RANGE,
        "CHANGES_PRUNED",
        f"events after position {after} are no longer kept (retention): the oldest available "
        f"position is {pruned_through + 1}; resync, then watch from after_sequence = "
        f"{pruned_through}",
        metadata={
            "oldest_available_sequence": str(pruned_through + 1),
            "resume_after_sequence": str(pruned_through),
        },
    )
