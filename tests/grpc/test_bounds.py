"""Every repeated field a request can carry has a maximum count, stated in its proto comment,
and the check names the field beyond it (registry/grpc/bounds.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import field_mask_pb2

from registry.grpc.bounds import MAX_REPEATED, oversized_fields
from registry.v1 import (
    audit_service_pb2,
    card_service_pb2,
    citizen_pb2,
    civil_registration_service_pb2,
    identity_service_pb2,
    population_service_pb2,
)

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "registry" / "v1"
SERVICE_FILES = (
    audit_service_pb2,
    card_service_pb2,
    civil_registration_service_pb2,
    identity_service_pb2,
    population_service_pb2,
)


def _request_types() -> list[Any]:
    return [
        method.input_type
        for module in SERVICE_FILES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def _reachable_fields(descriptor: Any, seen: set[str]) -> list[tuple[Any, Any]]:
    """(containing message, field) of every field reachable from a message type."""
    if descriptor.full_name in seen:
        return []
    seen.add(descriptor.full_name)
    out = []
    for field in descriptor.fields:
        out.append((descriptor, field))
        if field.message_type is not None:
            out.extend(_reachable_fields(field.message_type, seen))
    return out


def _all_request_fields() -> list[tuple[Any, Any]]:
    seen: set[str] = set()
    return [pair for d in _request_types() for pair in _reachable_fields(d, seen)]


def _comment_of(message: Any, field: Any) -> str:
    """The comment lines above a field's declaration in the .proto file that declares it."""
    path = PROTO_DIR / Path(message.file.name).name
    lines = path.read_text().splitlines()
    decl = re.compile(rf"^\s*(repeated\s+)?[\w.]+\s+{field.name}\s*=\s*{field.number};")
    start = next(i for i, line in enumerate(lines) if decl.match(line))
    comment = []
    for line in reversed(lines[:start]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip().removeprefix("//").strip())
    return " ".join(comment)


def test_every_repeated_field_of_every_request_has_a_maximum() -> None:
    repeated = {f.full_name for _, f in _all_request_fields() if f.is_repeated}
    assert repeated, "the walk found no repeated field"
    assert repeated <= set(MAX_REPEATED), f"without a maximum: {repeated - set(MAX_REPEATED)}"
    assert {"registry.v1.Citizen.other_names", "google.protobuf.FieldMask.paths"} <= repeated


def test_every_maximum_is_stated_in_the_proto_comment() -> None:
    for message, field in _all_request_fields():
        if message.file.name.startswith("google/"):
            continue
        if field.is_repeated:
            limit = MAX_REPEATED[field.full_name]
        elif field.message_type is not None and field.message_type.full_name == (
            "google.protobuf.FieldMask"
        ):
            limit = MAX_REPEATED["google.protobuf.FieldMask.paths"]
        else:
            continue
        comment = _comment_of(message, field)
        assert f"At most {limit}" in comment, f"{field.full_name}: {comment!r}"


def _mask(n: int) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=["full_name"] * n)


def test_counts_up_to_the_maximum_pass_and_one_more_is_named() -> None:
    ok = identity_service_pb2.GetCitizenRequest(read_mask=_mask(64))
    assert oversized_fields(ok) == []
    bad = identity_service_pb2.GetCitizenRequest(read_mask=_mask(65))
    [violation] = oversized_fields(bad)
    assert violation.field == "read_mask.paths"
    assert "at most 64" in violation.description and "65" in violation.description


def test_nested_lists_are_named_by_their_path() -> None:
    request = population_service_pb2.UpdateCitizenRequest(
        citizen=citizen_pb2.Citizen(other_names=["An"] * 21, legacy_ids=["123456789"] * 11),
        update_mask=_mask(400_000),
    )
    fields = [v.field for v in oversized_fields(request)]
    assert fields == ["citizen.other_names", "citizen.legacy_ids", "update_mask.paths"]
    watch = population_service_pb2.WatchChangesRequest(types=[1] * 17)
    assert [v.field for v in oversized_fields(watch)] == ["types"]


@pytest.mark.parametrize("message", [m() for m in (
    identity_service_pb2.VerifyIdentityRequest,
    card_service_pb2.ListCardsRequest,
    audit_service_pb2.ListAccessLogRequest,
)])  # fmt: skip
def test_messages_without_lists_have_nothing_to_check(message: Any) -> None:
    assert oversized_fields(message) == []
