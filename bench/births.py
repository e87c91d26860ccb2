"""Births/s: RegisterBirth from 32 concurrent callers over real channels, durable commits.

Target (issue 2): >= 500 durable registrations/s with 32 concurrent callers on 2 cores.
"""

from __future__ import annotations

import asyncio
import random
import uuid

from google.type import date_pb2

from bench.common import (
    bench_database,
    closed_loop,
    open_channels,
    prepare,
    report,
    server_process,
    token,
)
from registry.rules.pin import PrefixTable
from registry.runtime.clock import today
from registry.v1 import civil_registration_service_pb2 as pb
from registry.v1 import civil_registration_service_pb2_grpc as pb_grpc

TARGET_PER_S = 500
CONCURRENCY = 32
DURATION_S = 10.0


async def _run(target: str, md: tuple[tuple[str, str], ...]) -> tuple[int, list[float], int]:
    provinces = sorted(PrefixTable.load_default())
    d = today()
    channels = open_channels(target)
    stubs = [pb_grpc.CivilRegistrationServiceStub(c) for c in channels]
    try:

        async def call(i: int, n: int) -> None:
            await stubs[i % len(stubs)].RegisterBirth(
                pb.RegisterBirthRequest(
                    request_id=uuid.uuid4().hex,
                    full_name="Nguyễn Thị Bình",
                    sex=random.choice((1, 2)),
                    date_of_birth=date_pb2.Date(year=d.year, month=d.month, day=1),
                    place_of_birth="Trạm y tế xã",
                    registration_province_code=random.choice(provinces),
                    hometown="Nam Định",
                    ethnicity="Kinh",
                    nationality="VN",
                    registration_authority="UBND xã",
                    registration_number=f"{i}-{n}",
                ),
                metadata=md,
                timeout=30,
            )

        return await closed_loop(call, CONCURRENCY, DURATION_S)
    finally:
        for channel in channels:
            await channel.close()


def main() -> dict[str, float]:
    with bench_database() as dsn:
        agency_id, kid, key = asyncio.run(prepare(dsn))
        md = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
        with server_process(dsn) as server:
            measured = asyncio.run(_run(server.target, md))
    setup = f"{CONCURRENCY} callers, {DURATION_S:.0f} s"
    return report("births", "registrations", setup, measured, DURATION_S, TARGET_PER_S)


if __name__ == "__main__":
    main()
