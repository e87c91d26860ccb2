"""Bounded work before validation: a size limit for unary requests, a count for every list.

A validator that walks a request item by item works in proportion to what the caller sent.
A review sent four concurrent 3.5 MB GetCitizen requests with 400,000 read_mask paths each:
other agencies' calls stalled 2.3-3.0 s and the server grew by 370 MB; a 1 MB
WatchChanges.types took 1.8 s of event-loop time. So, before any per-item work:

- A unary request message (one request, unary or server-streaming RPC) larger than
  MAX_UNARY_REQUEST_BYTES is refused unparsed (the gate wraps its deserializer and looks at the
  length only), with RESOURCE_EXHAUSTED, reason REQUEST_TOO_LARGE. Messages of request streams
  keep 4 MiB (registry.grpc.gate DEFAULT_MAX_BYTES and BATCH_MAX_BYTES): SPEC §10's batch messages
  will need it.
- Every repeated field of every request message has a maximum count (MAX_REPEATED), checked
  with len() before its items are looked at: INVALID_ARGUMENT + BadRequest naming the field.
  The proto comments state the same figures; tests/grpc/test_bounds.py checks that
  every repeated field reachable from a request has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.rules.errors import Code, FieldViolation, QuotaViolation, RegistryError

# The largest legitimate unary request (an UpdateCitizen setting every text field to its
# maximum) is under 16 KiB; 64 KiB leaves room without letting a caller make the server parse
# megabytes per call.
MAX_UNARY_REQUEST_BYTES = 64 * 1024

# Maximum items of each repeated field, by its full protobuf name.
MAX_REPEATED: dict[str, int] = {
    # read_mask / update_mask: Citizen has 28 fields; more paths can only repeat or be wrong.
    "google.protobuf.FieldMask.paths": 64,
    # Aliases, names in religion, former names: a handful in practice.
    "registry.v1.Citizen.other_names": 20,
    # Old 9- and 12-digit CMND numbers: one or two per person, a few after reissues.
    "registry.v1.Citizen.legacy_ids": 10,
    # ChangeType has 6 values besides UNSPECIFIED.
    "registry.v1.WatchChangesRequest.types": 16,
    # SPEC §10: 1 to 10,000 items per batch message (checked by the chunked RPCs' servicers,
    # registry.rules.imports.check_batch_size; the gate checks unary requests only).
    "registry.v1.ImportCitizenBatchesRequest.records": 10_000,
    "registry.v1.VerifyIdentityBatchesRequest.requests": 10_000,
}


@dataclass(frozen=True)
class _Plan:
    repeated: tuple[tuple[str, int, bool], ...]
    """(field name, maximum count, items are messages) of each repeated field."""
    nested: tuple[str, ...]
    """Singular message fields whose type can hold a repeated field."""


_plans: dict[str, _Plan | None] = {}


def _plan(descriptor: Any) -> _Plan | None:
    """The checks a message type needs (None: it holds no repeated field at any depth)."""
    name = descriptor.full_name
    if name in _plans:
        return _plans[name]
    _plans[name] = None  # a recursive type refers to itself: no cycle while planning
    repeated = []
    nested = []
    for field in descriptor.fields:
        if field.is_repeated:
            # A field missing from the table may carry nothing: new fields fail closed.
            limit = MAX_REPEATED.get(field.full_name, 0)
            repeated.append((field.name, limit, field.message_type is not None))
        elif field.message_type is not None and _plan(field.message_type) is not None:
            nested.append(field.name)
    plan = _Plan(tuple(repeated), tuple(nested)) if repeated or nested else None
    _plans[name] = plan
    return plan


def oversized_fields(message: Any, prefix: str = "") -> list[FieldViolation]:
    """Return a violation for each repeated field of message holding more than its maximum."""
    plan = _plan(message.DESCRIPTOR)
    if plan is None:
        return []
    violations = []
    for name, limit, of_messages in plan.repeated:
        items = getattr(message, name)
        count = len(items)
        if count > limit:
            violations.append(
                FieldViolation(f"{prefix}{name}", f"at most {limit} items (got {count})")
            )
        elif of_messages:
            for index, item in enumerate(items):
                violations.extend(oversized_fields(item, f"{prefix}{name}[{index}]."))
    for name in plan.nested:
        if message.HasField(name):
            violations.extend(oversized_fields(getattr(message, name), f"{prefix}{name}."))
    return violations


class Oversized:
    """A unary request message refused unparsed for its size."""

    __slots__ = ("message_type", "size")

    def __init__(self, message_type: str, size: int):
        self.message_type = message_type
        self.size = size

    def error(self) -> RegistryError:
        return RegistryError(
            Code.RESOURCE_EXHAUSTED,
            "REQUEST_TOO_LARGE",
            f"the {self.message_type} message is {self.size:,} bytes; a unary request may "
            f"have at most {MAX_UNARY_REQUEST_BYTES:,} (lists have a maximum count: see the "
            "API reference)",
            quota_violations=(
                QuotaViolation("request", f"{MAX_UNARY_REQUEST_BYTES} bytes per request message"),
            ),
            metadata={"max_bytes": str(MAX_UNARY_REQUEST_BYTES), "size_bytes": str(self.size)},
        )
