"""Reading a citizen's record: which fields an agency may see, and PIN replacements."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

import asyncpg

from registry.db import citizens
from registry.db import verification as verification_db
from registry.db.pool import Database
from registry.errors import (
    FieldViolation,
    invalid_argument,
    not_found,
    permission_denied,
)
from registry.model import CITIZEN_FIELDS, Caller, Citizen
from registry.verification import Claim, Outcome, VerifyResult, verify

# The number itself is what was asked about: always returned.
ALWAYS_RETURNED = ("pin",)


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


async def verify_claims(
    db: Database, caller: Caller, claims: Sequence[Claim], today: date
) -> list[Outcome]:
    """Verify claims against the register with one query, in order.

    On a replica, the claims that did not match are verified again on the primary: a birth
    or correction made a moment ago may not have reached the replica yet.
    """

    async def judge(pool: asyncpg.Pool, asked: Sequence[Claim]) -> list[Outcome]:
        async with pool.acquire() as conn:
            if len(asked) == 1:
                found = [await verification_db.record(conn, asked[0].pin, asked[0].card_serial)]
            else:
                found = await verification_db.records(conn, [(c.pin, c.card_serial) for c in asked])
        return [
            verify(claim, record, today, diacritic_insensitive=caller.diacritic_insensitive)
            for claim, record in zip(asked, found, strict=True)
        ]

    async def confirm(outcomes: list[Outcome], primary: asyncpg.Pool) -> list[Outcome]:
        missed = [i for i, o in enumerate(outcomes) if o.result is not VerifyResult.MATCH]
        if missed:
            again = await judge(primary, [claims[i] for i in missed])
            for index, outcome in zip(missed, again, strict=True):
                outcomes[index] = outcome
        return outcomes

    return await db.read(lambda pool: judge(pool, claims), confirm)
