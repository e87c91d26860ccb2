"""Reads: a citizen's record (which fields an agency may see, PIN replacements), a page of
the change feed, a page of a citizen's access history; each from a replica when one is
healthy, with the primary asked where a replica's answer may be behind."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from registry.db import audit, changes, citizens
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


async def feed_page(
    db: Database, after: int, types: tuple[int, ...], size: int
) -> list[changes.ChangeEvent]:
    """Read the next change-feed page: the backlog from a replica, the tail from the primary.

    A page from a replica that is not full means the replica has no more, and the primary may:
    the rest is read from the primary, so a watcher sees an event as soon as the primary
    announces it, and the replica's events, a prefix of the primary's, keep the order.
    """

    async def page(pool: asyncpg.Pool) -> list[changes.ChangeEvent]:
        return await changes.read(pool, after, types, size)

    async def rest(
        found: list[changes.ChangeEvent], primary: asyncpg.Pool
    ) -> list[changes.ChangeEvent]:
        if len(found) >= size:
            return found
        cursor = found[-1].sequence if found else after
        return [*found, *await changes.read(primary, cursor, types, size - len(found))]

    return await db.read(page, rest)


async def access_history(
    db: Database, pin: str, before: int | None, limit: int
) -> list[audit.HistoryItem]:
    """Read up to `limit` entries of a citizen's access history older than `before`."""

    async def history(pool: asyncpg.Pool) -> list[audit.HistoryItem]:
        return await audit.history(pool, pin, before, limit)

    async def confirm(
        found: list[audit.HistoryItem], primary: asyncpg.Pool
    ) -> list[audit.HistoryItem]:
        # Nothing on a replica may mean a citizen registered a moment ago: ask the primary.
        # Otherwise a page is at most REGISTRY_REPLICA_MAX_LAG_S behind.
        return found if found else await history(primary)

    return await db.read(history, confirm)
