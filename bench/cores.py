"""Every core (issue 17): births and unary verifications with REGISTRY_WORKERS = 1, 2, 4, 8 …

Made for a many-core host, where the load generator does not starve the server: the load comes
from BENCH_CLIENT_PROCS client processes (default: a quarter of the cores), each with its own
channels (one connection each, the same number to every worker: bench.common.spread_channels)
and callers. The claims are true claims about citizens of the bench register (bench.verify
builds it by COPY, BENCH_CITIZENS of them): a MATCH writes nothing but its audit entry, so the
figure is the serving path's, not the budgets'. Prints each figure and its ratio to one worker.

    BENCH_WORKERS=1,2,4,8 BENCH_CITIZENS=1000000 .venv/bin/python -m bench.cores
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from bench import loads
from bench import verify as verify_bench
from bench.common import bench_database, prepare, server_process, token
from bench.verify import ensure_citizens
from registry.v1 import identity_service_pb2 as id_pb

CORES = os.cpu_count() or 1
WORKERS = [int(w) for w in os.environ.get("BENCH_WORKERS", "1,2").split(",")]
CLIENT_PROCS = int(os.environ.get("BENCH_CLIENT_PROCS", str(max(1, CORES // 4))))
DURATION_S = float(os.environ.get("BENCH_DURATION_S", "10"))
CALLERS = int(os.environ.get("BENCH_CALLERS", "32"))  # per client process
# Register sizes to measure unary verification at, with the most workers (e.g. 1M and 10M):
# each is reached by topping the bench register up (bench.verify's COPY path).
SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "").split(",") if n]
CHANNELS = 4  # per client process, at least: a multiple of the workers (spread evenly)
Metadata = tuple[tuple[str, str], ...]


def _channels(workers: int) -> int:
    """Channels per client process: CHANNELS or more, the same number to every worker."""
    return workers * -(-CHANNELS // workers)


def _births(target: str, md: Metadata, workers: int, seed: int) -> tuple[int, int]:
    completed, _, errors = asyncio.run(
        loads.births(target, md, CALLERS, DURATION_S, seed, _channels(workers))
    )
    return completed, errors


def _verifications(
    target: str, md: Metadata, claims: list[bytes], workers: int, seed: int
) -> tuple[int, int]:
    requests = [id_pb.VerifyIdentityRequest.FromString(c) for c in claims]
    completed, _, errors = asyncio.run(
        loads.verifications(target, md, requests, CALLERS, DURATION_S, seed, _channels(workers))
    )
    return completed, errors


def _load(
    pool: ProcessPoolExecutor, work: Callable[..., tuple[int, int]], *args: object
) -> tuple[float, int]:
    """Run work in every client process at once; return (calls/s, errors)."""
    futures = [pool.submit(work, *args, seed) for seed in range(CLIENT_PROCS)]
    results = [f.result() for f in futures]
    return sum(c for c, _ in results) / DURATION_S, sum(e for _, e in results)


def main() -> dict[str, float]:
    figures: dict[str, float] = {}
    context = multiprocessing.get_context("spawn")  # clients hold no copy of anything gRPC
    with bench_database() as dsn, ProcessPoolExecutor(CLIENT_PROCS, mp_context=context) as pool:
        agency_id, kid, key = asyncio.run(prepare(dsn))
        md: Metadata = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
        samples = asyncio.run(ensure_citizens(dsn))
        claims = [c.SerializeToString() for c in verify_bench.true_claims(samples)]
        for workers in WORKERS:
            with server_process(dsn, REGISTRY_WORKERS=str(workers)) as server:
                started = time.monotonic()
                births, birth_errors = _load(pool, _births, server.target, md, workers)
                verifies, verify_errors = _load(
                    pool, _verifications, server.target, md, claims, workers
                )
                figures[f"births_w{workers}"] = births
                figures[f"verify_w{workers}"] = verifies
                print(
                    f"workers={workers}: births {births:,.0f}/s ({birth_errors} errors), "
                    f"unary verifications {verifies:,.0f}/s ({verify_errors} errors) "
                    f"[{time.monotonic() - started:.0f} s]",
                    flush=True,
                )
        for size in SIZES:
            verify_bench.CITIZENS = size
            started = time.monotonic()
            samples = asyncio.run(ensure_citizens(dsn))
            loaded_s = time.monotonic() - started
            sized = [c.SerializeToString() for c in verify_bench.true_claims(samples)]
            print(f"register at {size:,}: ready in {loaded_s:.0f} s", flush=True)
            print(asyncio.run(_explain(dsn, samples[0].pin)), flush=True)
            with server_process(dsn, REGISTRY_WORKERS=str(WORKERS[-1])) as server:
                verifies, errors = _load(
                    pool, _verifications, server.target, md, sized, WORKERS[-1]
                )
            figures[f"verify_at_{size}"] = verifies
            print(
                f"unary verifications at {size:,} citizens, {WORKERS[-1]} workers: "
                f"{verifies:,.0f}/s ({errors} errors)",
                flush=True,
            )
    base_b, base_v = figures[f"births_w{WORKERS[0]}"], figures[f"verify_w{WORKERS[0]}"]
    print(
        f"{CORES} cores, {CLIENT_PROCS} client processes x {CALLERS} callers, "
        f"{DURATION_S:.0f} s per figure"
    )
    for workers in WORKERS:
        b, v = figures[f"births_w{workers}"], figures[f"verify_w{workers}"]
        print(
            f"  REGISTRY_WORKERS={workers}: births {b:,.0f}/s ({b / base_b:.2f}x), "
            f"verifications {v:,.0f}/s ({v / base_v:.2f}x)"
        )
    if len(SIZES) > 1:
        small, large = figures[f"verify_at_{SIZES[0]}"], figures[f"verify_at_{SIZES[-1]}"]
        print(
            f"  verification at {SIZES[-1]:,} vs {SIZES[0]:,} citizens: {large:,.0f} vs "
            f"{small:,.0f}/s ({large / small:.2f}x; target within 10%)"
        )
    return figures


async def _explain(dsn: str, pin: str) -> str:
    """The plan of the unary verification query at this size (index scans expected)."""
    import asyncpg

    from registry.db import verification

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("EXPLAIN " + verification._ONE, pin, "", "bench", 0.1, 60.0)
    finally:
        await conn.close()
    return "\n".join("    " + r[0] for r in rows)


if __name__ == "__main__":
    main()
