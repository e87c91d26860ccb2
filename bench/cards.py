"""Cards/s: IssueCard from 32 concurrent callers over real channels, durable commits.

Target (issue 3): >= 400 card issuances/s with 32 concurrent callers on 2 cores (a national
campaign peaked at 400,000 cards a day).
"""

from __future__ import annotations

import asyncio
import random
import uuid

import asyncpg
import grpc
from google.type import date_pb2

from bench.common import bench_database, closed_loop, prepare, report, server_process, token
from registry.runtime.clock import today
from registry.v1 import card_pb2
from registry.v1 import card_service_pb2 as pb
from registry.v1 import card_service_pb2_grpc as pb_grpc

TARGET_PER_S = 400
CONCURRENCY = 32
DURATION_S = 10.0
HOLDERS = 5_000
# Citizens born 1990, female, registered in province 096: bucket 096-1-90. Their random parts
# are taken from the top of the range, which the births benchmark (current year) never uses.
_PIN_PREFIX = "096190"


async def seed_holders(dsn: str) -> list[str]:
    """Insert the card holders once (idempotent) and return their PINs."""
    pins = [f"{_PIN_PREFIX}{999_999 - i:06d}" for i in range(HOLDERS)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            """
            INSERT INTO citizens (pin, full_name, birth_year, birth_month, birth_day, sex,
                                  registration_province_code, created_by)
            VALUES ($1, 'Lê Thị Hoa', 1990, 4, 12, 2, '096', 'bench')
            ON CONFLICT (pin) DO NOTHING
            """,
            [(p,) for p in pins],
        )
    finally:
        await conn.close()
    return pins


async def _run(
    target: str, md: tuple[tuple[str, str], ...], holders: list[str]
) -> tuple[int, list[float], int]:
    d = today()
    issued_on = date_pb2.Date(year=d.year, month=d.month, day=d.day)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.CardServiceStub(channel)

        async def call(i: int, n: int) -> None:
            await stub.IssueCard(
                pb.IssueCardRequest(
                    request_id=uuid.uuid4().hex,
                    pin=random.choice(holders),
                    kind=card_pb2.CARD_KIND_EXCHANGE,
                    serial=f"B{uuid.uuid4().hex[:20].upper()}",
                    issue_date=issued_on,
                    issuing_authority="Cục Cảnh sát QLHC về TTXH",
                ),
                metadata=md,
                timeout=30,
            )

        return await closed_loop(call, CONCURRENCY, DURATION_S)


def main() -> dict[str, float]:
    with bench_database() as dsn:
        agency_id, kid, key = asyncio.run(prepare(dsn))
        holders = asyncio.run(seed_holders(dsn))
        md = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
        with server_process(dsn) as server:
            measured = asyncio.run(_run(server.target, md, holders))
    setup = f"{CONCURRENCY} callers, {DURATION_S:.0f} s, {HOLDERS:,} holders"
    return report("cards", "issuances", setup, measured, DURATION_S, TARGET_PER_S)


if __name__ == "__main__":
    main()
