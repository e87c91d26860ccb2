"""The call being served: who called, which method, which citizens it reached, and the one way
its audit entries are written (SPEC §7).

The gate (registry.grpc.gate) opens a CallContext for every authenticated call and binds it to
the handler's task (`begin`); servicers read it with `current_call()` / `current_caller()` and
report the citizens they reached with `touch()`.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from registry.rules.audit import Entry, clean_text
from registry.rules.civil_registration import trim
from registry.rules.model import Caller
from registry.runtime.audit_writer import AuditWriter

_PIN = re.compile(r"[0-9]{12}")
# Names of the PIN fields of each request message type, found once per type.
_pin_fields: dict[str, tuple[str, ...]] = {}


def _request_pins(request: Any) -> list[str]:
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None:
        return []  # a request stream
    names = _pin_fields.get(descriptor.full_name)
    if names is None:
        names = _pin_fields[descriptor.full_name] = tuple(
            f.name
            for f in descriptor.fields
            if f.type == f.TYPE_STRING
            and not f.is_repeated
            and (f.name == "pin" or f.name.endswith("_pin"))
        )
    pins = []
    for name in names:
        # Trimmed as the servicers trim it: " 001…  " reaches the same citizen.
        value = trim(getattr(request, name))
        if value and _PIN.fullmatch(value) and value not in pins:
            pins.append(value)
    return pins


def audited_pins(*values: str) -> tuple[str, ...]:
    """Return the well-formed PINs among values (what an audit entry may name)."""
    return tuple(p for p in map(trim, values) if p and _PIN.fullmatch(p))


class CallContext:
    """What the gate knows about the call being served."""

    __slots__ = (
        "_time",
        "_writer",
        "audited",
        "caller",
        "method",
        "pins",
        "request_id",
        "started",
    )

    def __init__(
        self, caller: Caller, method: str, request: Any, started: float, writer: AuditWriter
    ):
        self._writer = writer
        self.audited = False
        self.caller = caller
        self.method = method
        self.started = started
        self._time: datetime | None = None  # `started` as the entries' time, made once
        self.pins = _request_pins(request)
        # The caller's idempotency key, or the correlation id of a verification.
        request_id = getattr(request, "request_id", "") or getattr(request, "correlation_id", "")
        self.request_id = clean_text(request_id, 128) if isinstance(request_id, str) else ""

    def touch(self, *pins: str) -> None:
        """Record that the call reached these citizens (well-formed PINs only)."""
        for pin in map(trim, pins):
            if pin and pin not in self.pins and _PIN.fullmatch(pin):
                self.pins.append(pin)

    def entry(
        self, outcome: str, pins: tuple[str, ...] | None = None, request_id: str | None = None
    ) -> Entry:
        """Return the audit entry for this call (or for one item of a streaming call)."""
        if self._time is None:
            self._time = datetime.fromtimestamp(self.started, UTC)
        return Entry(
            time=self._time,
            agency_id=self.caller.agency_id,
            method=self.method,
            pins=tuple(self.pins) if pins is None else pins,
            outcome=outcome,
            purpose=self.caller.purpose,
            request_id=self.request_id if request_id is None else request_id,
        )

    async def audit(self, entries: Sequence[Entry]) -> None:
        """Make these entries durable; return once they are (before the answer leaves).

        The one way an RPC writes its audit: the gate for a unary call's own entry, a
        streaming servicer for each batch, page or item it answers (`entry` builds them).
        """
        await self._writer.record(entries)

    def audit_later(self, entries: Sequence[Entry]) -> None:
        """Queue entries without waiting: a cancelled call has nobody left to answer."""
        self._writer.submit(entries)


_call: contextvars.ContextVar[CallContext] = contextvars.ContextVar("call")


def current_call() -> CallContext:
    """Return the context of the RPC being served."""
    return _call.get()


def current_caller() -> Caller:
    """Return the authenticated caller of the RPC being served."""
    return _call.get().caller


def touch(*pins: str) -> None:
    """Record that the RPC being served reached these citizens (for its audit entry)."""
    _call.get().touch(*pins)


def begin(ctx: CallContext) -> None:
    """Make ctx the context of the call whose task is running."""
    _call.set(ctx)
