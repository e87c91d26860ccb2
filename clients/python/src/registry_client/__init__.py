"""Python client of the citizen identity registry (gRPC API registry.v1).

    from registry_client import RegistryClient

    with RegistryClient("registry.example:443", "portal-hn", "k1", pem,
                        tls=grpc.ssl_channel_credentials(), purpose="account opening") as c:
        answer = c.verify_identity("001226000123", full_name="Nguyễn Văn An",
                                   date_of_birth="2026-11-20")
        print(answer.result.name)

See clients/python/README.md.
"""

from __future__ import annotations

from .auth import TokenSource, algorithm_for
from .client import (
    AccessLogPage,
    AsyncRegistryClient,
    AuditCheckpoint,
    ImportSummary,
    RegistryClient,
)
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RegistryError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    Violation,
)
from .pin import province_codes, validate_pin
from .types import (
    BloodType,
    Card,
    CardKind,
    CardState,
    ChangeEvent,
    ChangeType,
    Citizen,
    CitizenStatus,
    MaritalStatus,
    PartialDate,
    Sex,
    Verification,
    VerifyRequest,
    VerifyResult,
)

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "AccessLogPage",
    "AlreadyExists",
    "AsyncRegistryClient",
    "AuditCheckpoint",
    "BloodType",
    "Cancelled",
    "Card",
    "CardKind",
    "CardState",
    "ChangeEvent",
    "ChangeType",
    "Citizen",
    "CitizenStatus",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "ImportSummary",
    "Internal",
    "InvalidArgument",
    "MaritalStatus",
    "NotFound",
    "OutOfRange",
    "PartialDate",
    "PermissionDenied",
    "RegistryClient",
    "RegistryError",
    "ResourceExhausted",
    "Sex",
    "TokenSource",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "Verification",
    "VerifyRequest",
    "VerifyResult",
    "Violation",
    "algorithm_for",
    "province_codes",
    "validate_pin",
]
