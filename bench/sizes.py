"""10 M citizens (issue 17 item 4): verification on a 10,000,000-citizen register beside 1 M.

One register per size, each in its own embedded cluster under REGISTRY_BENCH_DIR/size-N (built
once by COPY through bench.verify, kept between runs), each served by its own server process.
After BENCH_WARMUP_ROUNDS unmeasured rounds (default 1: the pages the rounds use are read into
memory, as they are on a register in service), the figures alternate between the sizes for
BENCH_ROUNDS rounds (unary VerifyIdentity from a client process, then a chunked
VerifyIdentityBatches stream), so a machine whose speed drifts (±30% here) moves both sides
alike; the medians are compared. The plans of the unary and the
batched verification queries are printed at every size (index scans expected).

    BENCH_SIZES=1000000,10000000 .venv/bin/python -m bench.sizes

Building 10 M takes ~16 minutes (12,900 rows/s by COPY here) and 8.5 GB of disk the first time.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack

import asyncpg

from bench import cores
from bench import verify as verify_bench
from bench.bulk import _verify_stream
from bench.common import bench_database, prepare, server_process, token

SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "1000000,10000000").split(",") if n]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# Unmeasured first rounds: they read the pages the measured rounds use from disk into memory
# (at 10 M, ~2 pages a claim from a cold disk: 0.34 ms a citizen lookup instead of 0.02).
WARMUP_ROUNDS = int(os.environ.get("BENCH_WARMUP_ROUNDS", "1"))
STREAM_REQUESTS = int(os.environ.get("BENCH_STREAM_REQUESTS", "30000"))


def main() -> dict[str, float]:
    cores.CLIENT_PROCS = 1
    context = multiprocessing.get_context("spawn")
    registers = {}
    with ExitStack() as stack, ProcessPoolExecutor(1, mp_context=context) as pool:
        for size in SIZES:
            dsn = stack.enter_context(bench_database(f"size-{size}"))
            agency_id, kid, key = asyncio.run(prepare(dsn))
            verify_bench.CITIZENS = size
            started = time.monotonic()
            samples = asyncio.run(verify_bench.ensure_citizens(dsn))
            print(f"register of {size:,}: ready in {time.monotonic() - started:.0f} s", flush=True)
            requests = verify_bench.true_claims(samples)
            print(asyncio.run(_explain(dsn, [s.pin for s in samples[:500]])), flush=True)
            server = stack.enter_context(server_process(dsn, REGISTRY_WORKERS="1"))
            registers[size] = (server.target, (agency_id, kid, key), requests)
        unary: dict[int, list[float]] = {size: [] for size in SIZES}
        chunked: dict[int, list[float]] = {size: [] for size in SIZES}
        for round_no in range(1 - WARMUP_ROUNDS, ROUNDS + 1):
            for size in SIZES:
                target, credentials, requests = registers[size]
                md = (("authorization", f"Bearer {token(*credentials)}"),)  # 15 min at most
                claims = [r.SerializeToString() for r in requests]
                rate, errors = cores._load(pool, cores._verifications, target, md, claims)
                stream = (requests * (STREAM_REQUESTS // len(requests) + 1))[:STREAM_REQUESTS]
                seconds, answered, results = asyncio.run(_verify_stream(target, md, stream))
                if round_no > 0:
                    unary[size].append(rate)
                    chunked[size].append(answered / seconds)
                label = f"round {round_no}" if round_no > 0 else "warm-up (cold pages, not counted)"
                print(
                    f"{label}, {size:,} citizens: unary {rate:,.0f}/s ({errors} errors), "
                    f"VerifyIdentityBatches {answered / seconds:,.0f}/s "
                    f"({verify_bench._results(results)})",
                    flush=True,
                )
    figures: dict[str, float] = {}
    base = SIZES[0]
    print(f"verification by register size, median of {ROUNDS} alternating rounds, 1 worker:")
    for size in SIZES:
        u, c = statistics.median(unary[size]), statistics.median(chunked[size])
        figures[f"unary_at_{size}"], figures[f"chunked_at_{size}"] = u, c
        print(
            f"  {size:>12,} citizens: unary {u:,.0f}/s ({u / figures[f'unary_at_{base}']:.2f}x), "
            f"chunked {c:,.0f}/s ({c / figures[f'chunked_at_{base}']:.2f}x); target within 10% "
            f"of {base:,}"
        )
    return figures


async def _explain(dsn: str, pins: list[str]) -> str:
    """The plans of the unary and the batched verification queries on this register."""
    from registry.db import verification

    conn = await asyncpg.connect(dsn)
    try:
        size = await conn.fetchval("SELECT count(*) FROM citizens")
        one = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + verification._ONE, pins[0], "", "bench", 0.1, 60.0
        )
        lines = [f"EXPLAIN ANALYZE of the unary verification query at {size:,} citizens:"]
        lines += ["    " + r[0] for r in one]
        many = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + verification._MANY,
            pins,
            [""] * len(pins),
            "bench",
            0.1,
            60.0,
        )
        lines += [f"EXPLAIN ANALYZE of the batched query, {len(pins)} claims:"]
        lines += ["    " + r[0] for r in many]
    finally:
        await conn.close()
    return "\n".join(lines)


if __name__ == "__main__":
    main()
