"""What a response carrying a Citizen may tell the calling agency (SPEC §6).

Every RPC that answers with a record (the civil-status writes, UpdateCitizen, LinkLegacyId)
answers only the agency's registered read fields, the fields its own request supplied, and
`pin`, `status`, `version` (`lookup.disclosed_fields`). The answer is rendered once, inside
the transaction that made the change, and kept with the idempotency key: a replay returns it,
cut down again by the agency's registration of the day, never the record as it is now.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from google.protobuf.descriptor import Descriptor

from registry.db.idempotency import Answer
from registry.grpc import convert
from registry.rules.model import CITIZEN_FIELDS, Caller, Citizen
from registry.usecases import lookup
from registry.v1 import citizen_pb2


def supplied_by(request: Descriptor) -> frozenset[str]:
    """Return the Citizen fields a request message type carries values for, by name."""
    return frozenset(request.fields_by_name) & frozenset(CITIZEN_FIELDS)


class CitizenAnswer:
    """The record one call may show its caller."""

    def __init__(
        self, caller: Caller, supplied: Iterable[str], legacy_ids: Sequence[str] = ()
    ) -> None:
        self._fields = lookup.disclosed_fields(caller.fields, supplied)
        # An agency that links an old number learns that this number is linked, not the
        # citizen's other old numbers (unless it is registered to read them).
        self._legacy_ids = () if "legacy_ids" in caller.fields else tuple(legacy_ids)

    def _cut(self, message: citizen_pb2.Citizen) -> citizen_pb2.Citizen:
        visible = convert.disclosed(message, self._fields)
        if self._legacy_ids:
            visible.legacy_ids.extend(i for i in message.legacy_ids if i in self._legacy_ids)
        return visible

    def render(self, citizen: Citizen) -> bytes:
        """Return the answer to keep for this record (what the first call answers)."""
        body: bytes = self._cut(convert.citizen(citizen)).SerializeToString(deterministic=True)
        return body

    def message(self, answer: Answer) -> citizen_pb2.Citizen:
        """Return the Citizen message of a kept answer, as this caller may see it today."""
        if answer.body is None:  # kept before migration 0016: the PIN is all that is known
            return citizen_pb2.Citizen(pin=answer.result_key)
        return self._cut(citizen_pb2.Citizen.FromString(answer.body))
