"""What the oracle budgets cost a verification (issue 13 item 3), measured at the database.

The verification query now also reads the agency's miss-budget wait and its recent failures
about each citizen; a miss costs one UPDATE (per call, or per batch of a stream), a NO_MATCH
one upsert more. This prints, on 100,000 synthetic citizens (created_by 'bench-budgets',
loaded once), the time per claim of:

- the verification query before (no budget state) and now, one claim per query and 512 per
  query: what a MATCH costs, since it runs nothing else;
- a miss charge and a failure record, one per call: what a NOT_FOUND or NO_MATCH adds.

Run with `.venv/bin/python -m bench.budgets` (REGISTRY_BENCH_DIR picks the cluster).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import asyncpg

from bench.common import bench_database, prepare
from registry.db import budgets
from registry.db.verification import _MANY, _ONE
from registry.rules import limits

PEOPLE = 100_000

_OLD_ONE = """
SELECT c.full_name, c.birth_year, c.birth_month, c.birth_day, c.sex, c.status,
       k.state AS card_state, k.expiry_date
  FROM citizens c
  LEFT JOIN cards k ON k.serial = $2 AND k.pin = c.pin
 WHERE c.pin = $1
"""
_OLD_MANY = """
SELECT q.i, c.pin IS NOT NULL AS found, c.full_name, c.birth_year, c.birth_month, c.birth_day,
       c.sex, c.status, k.state AS card_state, k.expiry_date
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS q(pin, serial, i)
  LEFT JOIN citizens c ON c.pin = q.pin
  LEFT JOIN cards k ON k.serial = q.serial AND k.pin = q.pin
"""


async def _seed(conn: asyncpg.Connection) -> list[str]:
    if not await conn.fetchval("SELECT count(*) FROM citizens WHERE created_by = 'bench-budgets'"):
        await conn.execute(
            "INSERT INTO citizens (pin, full_name, birth_year, sex, registration_province_code, "
            "created_by) SELECT '6' || lpad(n::text, 11, '0'), 'Người ' || n, 1980, 1, '001', "
            "'bench-budgets' FROM generate_series(1, $1) AS n",
            PEOPLE,
        )
        await conn.execute("ANALYZE citizens")
    return [f"6{n:011d}" for n in range(1, PEOPLE + 1)]


async def _per_claim(
    label: str, rounds: int, claims: int, work: Callable[[], Awaitable[object]]
) -> float:
    for _ in range(min(rounds, 50)):
        await work()  # warm the plan cache and the buffers
    started = time.perf_counter()
    for _ in range(rounds):
        await work()
    per_claim_us = (time.perf_counter() - started) / (rounds * claims) * 1e6
    print(f"  {label:<58} {per_claim_us:8.1f} µs per claim")
    return per_claim_us


async def _run(dsn: str) -> None:
    agency_id, _, _ = await prepare(dsn)
    # As the server's `counters` pool commits the budget writes (registry.usecases.budgets).
    conn = await asyncpg.connect(dsn, server_settings={"synchronous_commit": "off"})
    try:
        pins = await _seed(conn)
        state = (agency_id, limits.miss_interval_s(None), limits.MISS_PERIOD_S)
        print(f"oracle budgets, {PEOPLE:,} citizens (one connection, sequential statements):")

        def one(sql: str, *extra: object) -> Callable[[], Awaitable[object]]:
            return lambda: conn.fetchrow(sql, random.choice(pins), None, *extra)

        def many(sql: str, *extra: object) -> Callable[[], Awaitable[object]]:
            def go() -> Awaitable[object]:
                batch = random.sample(pins, 512)
                fetched: Awaitable[object] = conn.fetch(sql, batch, [None] * 512, *extra)
                return fetched

            return go

        old = await _per_claim("verification query, 1 claim, before", 3000, 1, one(_OLD_ONE))
        new = await _per_claim("verification query, 1 claim, with budget state", 3000, 1,
                               one(_ONE, *state))  # fmt: skip
        print(f"  {'':<58} {new / old:8.2f}x")
        old = await _per_claim("verification query, 512 claims, before", 60, 512, many(_OLD_MANY))
        new = await _per_claim("verification query, 512 claims, with budget state", 60, 512,
                               many(_MANY, *state))  # fmt: skip
        print(f"  {'':<58} {new / old:8.2f}x")
        window = limits.CITIZEN_FAILURE_WINDOW

        def charge() -> Awaitable[object]:
            return budgets.charge_misses(conn, agency_id, 1, 1e-9, 60.0)

        def fail() -> Awaitable[object]:
            return budgets.record_failures(conn, agency_id, [random.choice(pins)], window, 5)

        await _per_claim("miss charge (NOT_FOUND/NO_MATCH), one per call", 2000, 1, charge)
        await _per_claim("failure record (NO_MATCH), one per call", 2000, 1, fail)
    finally:
        await conn.close()


def main() -> None:
    with bench_database() as dsn:
        asyncio.run(_run(dsn))


if __name__ == "__main__":
    main()
