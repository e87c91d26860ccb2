"""The generated protobuf message modules (see generate.py), imported in one place."""

from __future__ import annotations

try:
    from ._gen.registry.v1 import (
        audit_service_pb2,
        card_pb2,
        card_service_pb2,
        change_pb2,
        citizen_pb2,
        civil_registration_service_pb2,
        identity_service_pb2,
        population_service_pb2,
    )
except ImportError as exc:  # pragma: no cover - only in an unprepared source checkout
    raise ImportError(
        "registry_client's generated protobuf modules are missing: run "
        "`python clients/python/generate.py` (needs grpcio-tools) before using or "
        "installing the package from a source checkout"
    ) from exc

__all__ = [
    "audit_service_pb2",
    "card_pb2",
    "card_service_pb2",
    "change_pb2",
    "citizen_pb2",
    "civil_registration_service_pb2",
    "identity_service_pb2",
    "population_service_pb2",
]
