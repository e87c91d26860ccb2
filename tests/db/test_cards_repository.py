"""registry/db/cards.py against PostgreSQL, as the server's runtime role."""

from __future__ import annotations

import secrets
from datetime import date

import asyncpg
import pytest

from registry.db import cards
from registry.rules.cards import Card, CardIssue, CardKind, CardState
from tests.db.conftest import connected
from tests.db.records import insert_citizen


def serial() -> str:
    return f"S-{secrets.token_hex(6).upper()}"


def legacy_id() -> str:
    return f"{secrets.randbelow(10**9):09d}"


async def issue(conn, pin: str, on: date, kind=CardKind.FIRST_ISSUE, expiry=None, number=None):
    return await cards.insert_active(
        conn, CardIssue(pin, kind, number or serial(), on, "Cục C06"), expiry, "repo-agency"
    )


async def test_insert_active_records_an_active_card(rt, su):
    pin = await insert_citizen(rt)
    number = serial()
    card = await issue(rt, pin, date(2021, 6, 1), CardKind.EXCHANGE, date(2045, 5, 16), number)
    assert card == Card(
        number, pin, CardKind.EXCHANGE, CardState.ACTIVE, date(2021, 6, 1), date(2045, 5, 16),
        "Cục C06", "",
    )  # fmt: skip
    row = await su.fetchrow("SELECT * FROM cards WHERE serial = $1", number)
    assert (row["state"], row["kind"], row["issued_by"]) == (1, 2, "repo-agency")

    never = await issue(rt, await insert_citizen(rt), date(2021, 6, 1))
    assert never.expiry_date is None
    assert (
        await su.fetchval("SELECT expiry_date FROM cards WHERE serial = $1", never.serial) is None
    )


async def test_insert_active_refuses_a_used_serial(rt):
    first = await issue(rt, await insert_citizen(rt), date(2020, 1, 1))
    with pytest.raises(asyncpg.UniqueViolationError) as used:
        await issue(rt, await insert_citizen(rt), date(2020, 1, 1), number=first.serial)
    assert used.value.constraint_name == "cards_pkey"


async def test_history_counts_every_card_and_the_latest_issue(rt):
    pin = await insert_citizen(rt)
    assert await cards.history(rt, pin) == (0, None)
    await issue(rt, pin, date(2016, 3, 1))
    await cards.supersede_current(rt, pin)
    await issue(rt, pin, date(2022, 8, 9))
    await cards.supersede_current(rt, pin)
    await issue(rt, pin, date(2019, 1, 1))  # recorded last, issued earlier
    await issue(rt, await insert_citizen(rt), date(2024, 1, 1))  # someone else's
    assert await cards.history(rt, pin) == (3, date(2022, 8, 9))


async def test_supersede_current_touches_only_the_active_or_withheld_card(rt):
    pin, other = await insert_citizen(rt), await insert_citizen(rt)
    revoked = await issue(rt, pin, date(2015, 1, 1))
    await cards.set_state(rt, revoked.serial, CardState.REVOKED, "stolen")
    withheld = await issue(rt, pin, date(2016, 1, 1))
    await cards.set_state(rt, withheld.serial, CardState.WITHHELD, "investigation")
    theirs = await issue(rt, other, date(2016, 1, 1))

    await cards.supersede_current(rt, pin)
    assert (await cards.get(rt, withheld.serial)).state is CardState.SUPERSEDED
    assert (await cards.get(rt, revoked.serial)).state is CardState.REVOKED
    assert (await cards.get(rt, theirs.serial)).state is CardState.ACTIVE

    active = await issue(rt, pin, date(2020, 1, 1))
    await cards.supersede_current(rt, pin)
    assert (await cards.get(rt, active.serial)).state is CardState.SUPERSEDED
    await cards.supersede_current(rt, pin)  # nothing current: nothing changes
    assert (await cards.get(rt, revoked.serial)).state is CardState.REVOKED


async def test_get_and_set_state(rt, su):
    assert await cards.get(rt, serial()) is None
    card = await issue(rt, await insert_citizen(rt), date(2020, 2, 2))
    assert await cards.get(rt, card.serial) == card
    changed = await cards.set_state(rt, card.serial, CardState.WITHHELD, "court order 1/2024")
    assert (changed.state, changed.state_reason, changed.serial) == (
        CardState.WITHHELD,
        "court order 1/2024",
        card.serial,
    )
    row = await su.fetchrow("SELECT state, state_reason FROM cards WHERE serial = $1", card.serial)
    assert tuple(row) == (4, "court order 1/2024")


async def test_get_for_update_locks_the_card(rt, runtime_dsn):
    card = await issue(rt, await insert_citizen(rt), date(2020, 2, 2))
    async with connected(runtime_dsn) as other:
        await other.execute("SET lock_timeout = '300ms'")
        async with rt.transaction():
            await cards.get(rt, card.serial, for_update=True)
            with pytest.raises(asyncpg.LockNotAvailableError):
                await cards.get(other, card.serial, for_update=True)
            assert await cards.get(other, card.serial) == card  # a plain read does not wait
        assert await cards.get(other, card.serial, for_update=True) == card


async def test_list_for_pin_is_newest_first(rt):
    pin = await insert_citizen(rt)
    assert await cards.list_for_pin(rt, pin) == []
    order = []
    for on in (date(2016, 1, 1), date(2021, 5, 5), date(2021, 5, 5), date(2018, 1, 1)):
        await cards.supersede_current(rt, pin)
        order.append(((await issue(rt, pin, on)).serial, on))
    await issue(rt, await insert_citizen(rt), date(2030, 1, 1))
    listed = await cards.list_for_pin(rt, pin)
    # Same issue date: the card recorded later comes first.
    assert [c.serial for c in listed] == [order[2][0], order[1][0], order[3][0], order[0][0]]
    S, A = CardState.SUPERSEDED, CardState.ACTIVE
    assert [c.state for c in listed] == [S, S, A, S]


async def test_link_legacy_id_links_a_free_number_once(rt, su):
    pin, other = await insert_citizen(rt), await insert_citizen(rt)
    number = legacy_id()
    assert await cards.legacy_owner(rt, number) is None
    assert await cards.link_legacy_id(rt, number, pin, "repo-agency") == pin
    assert await cards.legacy_owner(rt, number) == pin
    # Taken: the owner is named and the link stays as it was.
    assert await cards.link_legacy_id(rt, number, other, "someone-else") == pin
    rows = await su.fetch("SELECT pin, linked_by FROM legacy_ids WHERE legacy_id = $1", number)
    assert [tuple(r) for r in rows] == [(pin, "repo-agency")]
    assert await cards.legacy_owner(rt, legacy_id()) is None
