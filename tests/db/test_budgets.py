"""registry/db/budgets.py against PostgreSQL, as the server's runtime role."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import asyncpg
import pytest

from registry.db import budgets
from tests.conftest import AgencyFactory
from tests.db.records import fresh_pin

# A budget of 60 misses per 600 s: one miss frees up every 10 s, far slower than a test runs.
INTERVAL, PERIOD = 10.0, 600.0
WINDOW, LIMIT = timedelta(hours=1), 3


@pytest.fixture
def agency_id(make_agency: AgencyFactory) -> str:
    return make_agency().id


async def charge(conn, agency_id: str, misses: int) -> budgets.Charge:
    return await budgets.charge_misses(conn, agency_id, misses, INTERVAL, PERIOD)


async def test_charges_grant_what_the_budget_holds_and_alert_once(rt, su, agency_id):
    assert await budgets.miss_wait(rt, agency_id, INTERVAL, PERIOD) == 0.0  # no row yet
    first = await charge(rt, agency_id, 10)  # the first miss makes a full bucket
    assert first == budgets.Charge(10, False, 0.0)
    assert await budgets.miss_wait(rt, agency_id, INTERVAL, PERIOD) == 0.0
    short = await charge(rt, agency_id, 100)
    assert (short.granted, short.alert) == (50, True)
    assert 9 < short.retry_after_s <= INTERVAL  # until one miss frees up
    empty = await charge(rt, agency_id, 1)
    assert (empty.granted, empty.alert) == (0, False)  # the same episode: no second alert
    assert 9 < await budgets.miss_wait(rt, agency_id, INTERVAL, PERIOD) <= INTERVAL
    row = await su.fetchrow("SELECT * FROM agency_miss_budgets WHERE agency_id = $1", agency_id)
    assert row["alerted"] is True

    # Once the bucket is full again, the episode is over: the next shortfall alerts again.
    await su.execute(
        "UPDATE agency_miss_budgets SET tat = extract(epoch FROM now()) - 1000 "
        "WHERE agency_id = $1",
        agency_id,
    )
    assert (await charge(rt, agency_id, 1)).alert is False
    assert (
        await su.fetchval("SELECT alerted FROM agency_miss_budgets WHERE agency_id = $1", agency_id)
        is False
    )
    again = await charge(rt, agency_id, 1000)
    assert (again.granted, again.alert) == (59, True)


async def test_a_pool_charges_like_a_connection(runtime_dsn, agency_id):
    pool = await asyncpg.create_pool(runtime_dsn, min_size=1, max_size=2)
    try:
        assert (await charge(pool, agency_id, 60)).granted == 60
        assert (await charge(pool, agency_id, 1)).granted == 0
    finally:
        await pool.close()


async def test_mark_miss_alert_reports_an_episode_once(rt, su, agency_id):
    assert await budgets.mark_miss_alert(rt, agency_id) is False  # no budget row
    await charge(rt, agency_id, 1)
    assert await budgets.mark_miss_alert(rt, agency_id) is True
    assert await budgets.mark_miss_alert(rt, agency_id) is False
    assert (
        await su.fetchval("SELECT alerted FROM agency_miss_budgets WHERE agency_id = $1", agency_id)
        is True
    )


async def test_record_failures_accepts_up_to_the_limit_per_citizen(rt, su, agency_id):
    a, b, c = fresh_pin(), fresh_pin(), fresh_pin()
    got = await budgets.record_failures(rt, agency_id, [a, a, b], WINDOW, LIMIT)
    assert got == {a: 2, b: 1}
    assert await budgets.record_failures(rt, agency_id, [a, a, c], WINDOW, LIMIT) == {a: 1, c: 1}
    assert await budgets.record_failures(rt, agency_id, [a], WINDOW, LIMIT) == {a: 0}
    stored = await su.fetchval(
        "SELECT failures FROM verification_failures WHERE agency_id = $1 AND pin = $2",
        agency_id,
        a,
    )
    assert len(stored) == LIMIT and stored == sorted(stored)
    assert await budgets.record_failures(rt, agency_id, [], WINDOW, LIMIT) == {}
    many = fresh_pin()  # more than the limit at once, for a citizen without a row yet
    assert await budgets.record_failures(rt, agency_id, [many] * 5, WINDOW, LIMIT) == {many: 3}


async def test_old_failures_age_out_of_the_window(rt, su, agency_id):
    pin = fresh_pin()
    await budgets.record_failures(rt, agency_id, [pin] * LIMIT, WINDOW, LIMIT)
    assert await budgets.record_failures(rt, agency_id, [pin], WINDOW, LIMIT) == {pin: 0}
    await su.execute(
        "UPDATE verification_failures SET failures = ARRAY[now() - interval '2 hours', "
        "now() - interval '90 minutes', now() - interval '10 minutes'] "
        "WHERE agency_id = $1 AND pin = $2",
        agency_id,
        pin,
    )
    assert await budgets.record_failures(rt, agency_id, [pin, pin, pin], WINDOW, LIMIT) == {pin: 2}
    kept = await su.fetchval(
        "SELECT failures FROM verification_failures WHERE agency_id = $1 AND pin = $2",
        agency_id,
        pin,
    )
    assert len(kept) == LIMIT  # the recent one and two new ones; the aged ones dropped


async def test_failure_alerts_are_marked_once_and_end_with_the_episode(rt, su, agency_id):
    full, partial = fresh_pin(), fresh_pin()
    await budgets.record_failures(rt, agency_id, [full] * LIMIT + [partial], WINDOW, LIMIT)
    assert await budgets.mark_failure_alerts(rt, agency_id, [full, partial, fresh_pin()]) == 2
    assert await budgets.mark_failure_alerts(rt, agency_id, [full, partial]) == 0
    # Still blocked: the flag stays. Room again: the episode is over.
    await budgets.record_failures(rt, agency_id, [full, partial], WINDOW, LIMIT)
    alerted = {
        r["pin"]: r["alerted"]
        for r in await su.fetch(
            "SELECT pin, alerted FROM verification_failures WHERE agency_id = $1", agency_id
        )
    }
    assert alerted == {full: True, partial: False}


async def test_a_charge_is_a_value(rt, agency_id):
    charge_ = await charge(rt, agency_id, 1)
    assert charge_ == budgets.Charge(1, False, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        charge_.granted = 2  # type: ignore[misc]
