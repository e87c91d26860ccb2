"""Translation of domain errors into gRPC statuses with google.rpc details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from registry.rules.errors import DOMAIN, Code, RegistryError

_GRPC_CODES: dict[Code, int] = {code: getattr(code_pb2, code.value) for code in Code}

# Error trailers must stay well under gRPC's metadata limits (8 KiB soft, 16 KiB hard by
# default in clients): beyond them the caller gets a detail-less RESOURCE_EXHAUSTED instead
# of our answer. A request can make any number of violations, each quoting what was sent, so
# what goes into the status is bounded here for every RPC.
MAX_MESSAGE = 300
MAX_VIOLATIONS = 20
MAX_FIELD = 64
MAX_DESCRIPTION = 120
MAX_METADATA_VALUE = 128


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _violations(error: RegistryError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    shown = error.field_violations[:MAX_VIOLATIONS]
    out = [
        error_details_pb2.BadRequest.FieldViolation(
            field=_bounded(v.field, MAX_FIELD),
            description=_bounded(v.description, MAX_DESCRIPTION),
        )
        for v in shown
    ]
    hidden = len(error.field_violations) - len(shown)
    if hidden > 0:
        out[-1] = error_details_pb2.BadRequest.FieldViolation(
            field=out[-1].field,
            description=f"{out[-1].description} (and {hidden} more violations not listed)",
        )
    return out


def grpc_code(code: Code) -> grpc.StatusCode:
    """Return the grpc.StatusCode of a domain code."""
    return getattr(grpc.StatusCode, code.value)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status_proto(error: RegistryError) -> status_pb2.Status:
    """Build the google.rpc.Status of an error: ErrorInfo first, then the specific details."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason,
                domain=DOMAIN,
                metadata={k: _bounded(v, MAX_METADATA_VALUE) for k, v in error.metadata.items()},
            )
        )
    ]
    if error.field_violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=_violations(error))))
    if error.precondition_violations:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type,
                            subject=_bounded(v.subject, MAX_FIELD),
                            description=_bounded(v.description, MAX_DESCRIPTION),
                        )
                        for v in error.precondition_violations
                    ]
                )
            )
        )
    if error.quota_violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in error.quota_violations
                    ]
                )
            )
        )
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(
        code=_GRPC_CODES[error.code],
        message=_bounded(error.message, MAX_MESSAGE),
        details=details,
    )


def to_grpc_status(error: RegistryError) -> grpc.Status:
    """Build the grpc.Status (code, message, grpc-status-details-bin trailer) of an error."""
    return rpc_status.to_status(to_status_proto(error))
