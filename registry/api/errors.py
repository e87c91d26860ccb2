"""Translation of domain errors into gRPC statuses with google.rpc details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from registry.errors import DOMAIN, Code, RegistryError

_GRPC_CODES: dict[Code, int] = {code: getattr(code_pb2, code.value) for code in Code}


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
                reason=error.reason, domain=DOMAIN, metadata=dict(error.metadata)
            )
        )
    ]
    if error.field_violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.field_violations
                    ]
                )
            )
        )
    if error.precondition_violations:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type, subject=v.subject, description=v.description
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
    return status_pb2.Status(code=_GRPC_CODES[error.code], message=error.message, details=details)


def to_grpc_status(error: RegistryError) -> grpc.Status:
    """Build the grpc.Status (code, message, grpc-status-details-bin trailer) of an error."""
    return rpc_status.to_status(to_status_proto(error))
