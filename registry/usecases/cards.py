"""Use cases of the police card-issuance stations: issue and manage cards, link old numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date

import asyncpg

from registry.db import cards as store
from registry.db import citizens, idempotency
from registry.db.pool import Database
from registry.rules import cards as rules
from registry.rules.cards import Card, CardIssue, CardKind, CardState, LegacyLink, StateChange
from registry.rules.errors import (
    Code,
    PreconditionViolation,
    RegistryError,
    failed_precondition,
    not_found,
    pin_cancelled,
)
from registry.rules.fingerprints import request_hash
from registry.rules.model import Caller, Citizen, CitizenStatus

ISSUE_CARD = "IssueCard"
LINK_LEGACY_ID = "LinkLegacyId"
# Legal transitions of a card's stored state, per RPC (EXPIRED is checked separately).
_TRANSITIONS: dict[str, tuple[frozenset[CardState], CardState]] = {
    "RevokeCard": (
        frozenset({CardState.ACTIVE, CardState.WITHHELD, CardState.SUPERSEDED}),
        CardState.REVOKED,
    ),
    "WithholdCard": (frozenset({CardState.ACTIVE}), CardState.WITHHELD),
    "ReleaseCard": (frozenset({CardState.WITHHELD}), CardState.ACTIVE),
}


def reported(card: Card, today: date) -> Card:
    """Return the card with the state a caller is told (EXPIRED derived from the date)."""
    state = rules.effective_state(card.state, card.expiry_date, today)
    return card if state == card.state else replace(card, state=state)


def _refuse(reason: str, subject: str, message: str, **metadata: str) -> RegistryError:
    return failed_precondition(
        reason, message, [PreconditionViolation(reason, subject, message)], **metadata
    )


def _check_can_hold_card(citizen: Citizen | None, pin: str) -> Citizen:
    if citizen is None:
        raise not_found("CITIZEN_NOT_FOUND", f"no citizen has PIN {pin}", pin=pin)
    if citizen.status == CitizenStatus.DECEASED:
        raise _refuse("CITIZEN_DECEASED", pin, f"the citizen with PIN {pin} is deceased")
    if citizen.status == CitizenStatus.PIN_CANCELLED:
        raise pin_cancelled(pin, citizen.replaced_by_pin, "issue the card under the new PIN")
    return citizen


async def issue_card(
    db: Database, caller: Caller, request_id: str, issue: CardIssue, today: date
) -> tuple[Card, bool]:
    """Issue a card: compute its expiry, supersede the previous one; return (card, replayed)."""
    async with db.pool.acquire() as conn:

        async def work() -> Card:
            # The citizen row lock serialises issuance per citizen: stations issuing at the
            # same instant each supersede the previous card in turn, and the partial unique
            # index cards_one_active_per_citizen guarantees the outcome regardless.
            citizen = _check_can_hold_card(
                await citizens.get(conn, issue.pin, for_update=True), issue.pin
            )
            if issue.issue_date > today:
                raise _refuse(
                    "ISSUE_DATE_IN_FUTURE",
                    "issue_date",
                    f"issue date {issue.issue_date} is after today ({today})",
                )
            # The rules' names, never the register's dates (SPEC §6: no stored data in errors).
            if issue.issue_date < citizen.date_of_birth.earliest():
                raise _refuse(
                    "ISSUE_DATE_BEFORE_BIRTH",
                    "issue_date",
                    "issue_date is before the holder's recorded date of birth",
                )
            issued_before, latest = await store.history(conn, issue.pin)
            if issue.kind == CardKind.FIRST_ISSUE and issued_before:
                raise _refuse(
                    "CARD_ALREADY_ISSUED",
                    issue.pin,
                    "this citizen already has a card: issue an EXCHANGE or REISSUE instead",
                )
            if latest is not None and issue.issue_date < latest:
                raise _refuse(
                    "ISSUE_DATE_BEFORE_LATEST_CARD",
                    "issue_date",
                    "issue_date is before that of the citizen's latest card: a card cannot "
                    "replace one issued after it",
                )
            await store.supersede_current(conn, issue.pin)
            expiry = rules.card_expiry(citizen.date_of_birth, issue.issue_date)
            try:
                return await store.insert_active(conn, issue, expiry, caller.agency_id)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "cards_pkey":
                    raise RegistryError(
                        Code.ALREADY_EXISTS,
                        "SERIAL_IN_USE",
                        f"card serial {issue.serial} already belongs to another card",
                        metadata={"serial": issue.serial},
                    ) from None
                raise

        return await idempotency.run_once(
            conn,
            agency_id=caller.agency_id,
            request_id=request_id,
            method=ISSUE_CARD,
            request_hash=request_hash(ISSUE_CARD, issue),
            result_key=issue.serial,
            work=work,
            replay=lambda serial: _replay_card(conn, serial),
        )


async def _replay_card(conn: asyncpg.Connection, serial: str) -> Card:
    card = await store.get(conn, serial)
    if card is None:  # pragma: no cover - cards are never deleted
        raise RegistryError(Code.INTERNAL, "REPLAY_TARGET_MISSING", "the original card is gone")
    return card


async def change_state(
    db: Database,
    caller: Caller,
    request_id: str,
    change: StateChange,
    today: date,
    reached: Callable[[str], None] = lambda pin: None,
) -> tuple[Card, bool]:
    """Revoke, withhold or release a card along a legal transition; return (card, replayed).

    `reached` is told the holder's PIN as soon as the card is found (for the audit entry,
    refusals included).
    """
    allowed_from, target = _TRANSITIONS[change.action]
    async with db.pool.acquire() as conn:

        async def work() -> Card:
            card = await store.get(conn, change.serial)
            if card is None:
                raise not_found(
                    "CARD_NOT_FOUND", f"no card has serial {change.serial}", serial=change.serial
                )
            reached(card.pin)
            # Lock order citizen → card, as in issuance (which supersedes cards under the
            # citizen lock): the other order could deadlock against a concurrent issuance.
            holder = await citizens.get(conn, card.pin, for_update=True)
            card = await store.get(conn, change.serial, for_update=True)
            assert card is not None
            # Expiry is judged on the date alone: a card that expired while WITHHELD must not
            # come back ACTIVE.
            expired = card.expiry_date is not None and card.expiry_date < today
            current = (
                CardState.EXPIRED
                if expired
                and card.state
                in (
                    CardState.ACTIVE,
                    CardState.WITHHELD,
                )
                else card.state
            )
            if card.state not in allowed_from or (expired and target != CardState.REVOKED):
                raise _refuse(
                    f"CARD_{current.name}",
                    change.serial,
                    f"card {change.serial} is {current.name}: {change.action} needs a card "
                    f"that is {' or '.join(sorted(s.name for s in allowed_from))}",
                    state=current.name,
                )
            if target == CardState.ACTIVE:
                _check_can_hold_card(holder, card.pin)
            return await store.set_state(conn, change.serial, target, change.reason)

        return await idempotency.run_once(
            conn,
            agency_id=caller.agency_id,
            request_id=request_id,
            method=change.action,
            request_hash=request_hash(change.action, change),
            result_key=change.serial,
            work=work,
            replay=lambda serial: _replay_card(conn, serial),
        )


async def list_cards(db: Database, pin: str, today: date) -> list[Card]:
    """Return a citizen's cards newest first, as callers are told of them."""

    async def read(pool: asyncpg.Pool) -> list[Card]:
        async with pool.acquire() as conn:
            found = await store.list_for_pin(conn, pin)
            if not found and await citizens.get(conn, pin) is None:
                raise not_found("CITIZEN_NOT_FOUND", f"no citizen has PIN {pin}", pin=pin)
        return found

    return [reported(card, today) for card in await db.read(read)]


async def link_legacy_id(
    db: Database,
    caller: Caller,
    request_id: str,
    link: LegacyLink,
    render: Callable[[Citizen], bytes],
) -> tuple[idempotency.Answer, bool]:
    """Attach an old CMND number to a PIN (one owner per number); return (answer, replayed).

    `render` makes the answer kept with the idempotency key, which replays return.
    """
    async with db.pool.acquire() as conn:

        async def work() -> Citizen:
            citizen = await citizens.get(conn, link.pin, for_update=True)
            if citizen is None:
                raise not_found("CITIZEN_NOT_FOUND", f"no citizen has PIN {link.pin}", pin=link.pin)
            if citizen.status == CitizenStatus.PIN_CANCELLED:
                raise pin_cancelled(
                    link.pin, citizen.replaced_by_pin, "link the number to the new PIN"
                )
            owner = await store.link_legacy_id(conn, link.legacy_id, link.pin, caller.agency_id)
            if owner != link.pin:
                raise RegistryError(
                    Code.ALREADY_EXISTS,
                    "LEGACY_ID_TAKEN",
                    f"legacy number {link.legacy_id} is already linked to another citizen",
                    metadata={"legacy_id": link.legacy_id},
                )
            return await citizens.get_existing(conn, link.pin)

        return await idempotency.run_once_answered(
            conn,
            agency_id=caller.agency_id,
            request_id=request_id,
            method=LINK_LEGACY_ID,
            request_hash=request_hash(LINK_LEGACY_ID, link),
            result_key=link.pin,
            work=work,
            render=render,
        )


async def resolve_legacy_id(db: Database, legacy_id: str) -> str:
    """Return the current PIN of the citizen an old CMND number belongs to."""

    async def read(pool: asyncpg.Pool) -> str:
        async with pool.acquire() as conn:
            pin = await store.legacy_owner(conn, legacy_id)
            if pin is None:
                raise not_found(
                    "LEGACY_ID_NOT_FOUND",
                    f"no citizen is linked to legacy number {legacy_id}",
                    legacy_id=legacy_id,
                )
            # Follow PIN re-establishments: the number resolves to the PIN in use today.
            owner = await citizens.get_existing(conn, pin)
            current, _ = await citizens.follow_replacements(conn, owner)
            return current.pin

    return await db.read(read)
