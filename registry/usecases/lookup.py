"""Reading a citizen's record: which fields an agency may see, and PIN replacements."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from registry.db import citizens
from registry.db.pool import Database
from registry.rules.errors import (
    FieldViolation,
    invalid_argument,
    not_found,
    permission_denied,
)
from registry.rules.model import CITIZEN_FIELDS, Citizen

# The number itself is what was asked about: always returned.
ALWAYS_RETURNED = ("pin",)
# What any answer carrying a record may hold besides the agency's registered read fields and
# the fields its own request supplied (SPEC §6): which record, in what state, at what version
# (the version an update must name; the state a card check reports anyway).
ALWAYS_DISCLOSED = ("pin", "status", "version")


def disclosed_fields(entitled: Iterable[str], supplied: Iterable[str]) -> list[str]:
    """Return the Citizen fields a response carrying a record may hold, in message order.

    `entitled` are the agency's registered read fields, `supplied` the Citizen fields its own
    request gave values for (a civil-status system gets back the child it registered, an
    update the fields it set), whatever it is registered to read.
    """
    allowed = {*entitled, *supplied, *ALWAYS_DISCLOSED}
    return [f for f in CITIZEN_FIELDS if f in allowed]


def resolve_read_mask(paths: Iterable[str], entitled: frozenset[str]) -> list[str]:
    """Return the fields to return for a read_mask, or raise naming the bad or forbidden ones.

    An empty mask means every field the agency is entitled to. Unknown paths are
    INVALID_ARGUMENT; known fields the agency is not registered for are PERMISSION_DENIED.
    """
    given = list(paths)
    violations = [
        FieldViolation(f"read_mask.paths[{index}]", f"{path!r} is not a Citizen field")
        for index, path in enumerate(given)
        if path not in CITIZEN_FIELDS
    ]
    if violations:
        raise invalid_argument(violations)
    requested = list(dict.fromkeys(given))
    if not requested:
        requested = [f for f in CITIZEN_FIELDS if f in entitled]
    forbidden = [p for p in requested if p not in entitled and p not in ALWAYS_RETURNED]
    if forbidden:
        raise permission_denied(
            "FIELDS_NOT_PERMITTED",
            f"this agency is not registered to read: {', '.join(forbidden)}",
            fields=",".join(forbidden),
        )
    return list(dict.fromkeys([*ALWAYS_RETURNED, *requested]))


async def current_record(db: Database, pin: str) -> tuple[Citizen, bool]:
    """Return the citizen for a PIN, following PIN re-establishments; (citizen, replaced)."""

    async def read(pool: asyncpg.Pool) -> tuple[Citizen, bool]:
        async with pool.acquire() as conn:
            citizen = await citizens.get(conn, pin)
            if citizen is None:
                raise not_found("CITIZEN_NOT_FOUND", f"no citizen has PIN {pin}", pin=pin)
            return await citizens.follow_replacements(conn, citizen)

    return await db.read(read)
