"""Births/s: RegisterBirth from 32 concurrent callers over real channels, durable commits.

Target (issue 2): >= 500 durable registrations/s with 32 concurrent callers on 2 cores.
"""

from __future__ import annotations

import asyncio

from bench import loads
from bench.common import bench_database, prepare, report, server_process, token

TARGET_PER_S = 500
CONCURRENCY = 32
DURATION_S = 10.0


def main() -> dict[str, float]:
    with bench_database() as dsn:
        agency_id, kid, key = asyncio.run(prepare(dsn))
        md = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
        with server_process(dsn) as server:
            measured = asyncio.run(loads.births(server.target, md, CONCURRENCY, DURATION_S))
    setup = f"{CONCURRENCY} callers, {DURATION_S:.0f} s"
    return report("births", "registrations", setup, measured, DURATION_S, TARGET_PER_S)


if __name__ == "__main__":
    main()
