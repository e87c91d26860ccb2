"""Scaling (issue 17): REGISTRY_WORKERS=2 against =1, one read replica against none.

Prints, as ratios: births/s and unary verifications/s with two worker processes over one;
unary verifications/s with one streaming replica attached over none, and the primary's CPU per
verification in both (PostgreSQL's processes, from /proc). The client opens CHANNELS channels,
each its own connection (a channel is one connection, and the kernel hands whole connections
to workers), and spreads its callers over them. The server, the client and PostgreSQL share
this machine: on 2 cores, two workers compete with both. The claims verified are the citizens
the births run registered (true claims and some wrong names).

    .venv/bin/python -m bench.scaling
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import asyncpg
from google.type import date_pb2

from bench import loads
from bench.common import (
    CHANNELS,
    _bench_settings,
    bench_database,
    prepare,
    server_process,
    token,
)
from registry.db import audit as audit_db
from registry.embedded import EmbeddedCluster
from registry.rules import audit
from registry.v1 import identity_service_pb2 as id_pb
from tests.replicas import ReplicaCluster, wait_caught_up

BIRTH_CALLERS = 32
VERIFY_CALLERS = 64
DURATION_S = 10.0
Metadata = tuple[tuple[str, str], ...]


async def _births(target: str, md: Metadata) -> float:
    completed, _, errors = await loads.births(target, md, BIRTH_CALLERS, DURATION_S)
    assert errors == 0, f"{errors} births failed"
    return completed / DURATION_S


async def _verify(
    target: str, md: Metadata, requests: Sequence[id_pb.VerifyIdentityRequest]
) -> float:
    completed, _, errors = await loads.verifications(
        target, md, requests, VERIFY_CALLERS, DURATION_S
    )
    assert errors == 0, f"{errors} verifications failed"
    return completed / DURATION_S


async def _claims(dsn: str, agency_id: str) -> list[id_pb.VerifyIdentityRequest]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pin, full_name, birth_year, birth_month, birth_day, sex FROM citizens"
            " WHERE created_by = $1 LIMIT 20000",
            agency_id,
        )
    finally:
        await conn.close()
    rng = random.Random(1)
    return [
        id_pb.VerifyIdentityRequest(
            pin=r["pin"],
            full_name=r["full_name"] if rng.random() > 0.1 else "Trần Văn Cường",
            date_of_birth=date_pb2.Date(
                year=r["birth_year"], month=r["birth_month"] or 0, day=r["birth_day"] or 0
            ),
            sex=r["sex"],
        )
        for r in rows
    ]


def _bank(dsn: str) -> Metadata:
    """The metadata of a new agency for one verification load. A tenth of the claims name
    someone else: repeated NO_MATCH answers about the same citizens by one agency reach the
    per-citizen failure limit (5 a day) after a couple of loads, so each load is its own bank."""
    agency_id, kid, key = asyncio.run(prepare(dsn))
    return (("authorization", f"Bearer {token(agency_id, kid, key)}"),)


def _cluster_cpu_s(pgdata: Path) -> float:
    """CPU seconds used so far by a cluster's postmaster and its live children."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and its live descendants (the server)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        proc = Path(f"/proc/{current}")
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in (proc / "task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total / ticks


def _measured(run: Callable[[], float], pgdata: Path, server: int) -> tuple[float, float, float]:
    """Return (calls/s, primary CPU ms per call, server CPU ms per call) of one measurement."""
    before, server_before = _cluster_cpu_s(pgdata), _tree_cpu_s(server)
    rate = run()
    used, server_used = _cluster_cpu_s(pgdata) - before, _tree_cpu_s(server) - server_before
    # closed_loop runs a 2 s warm-up before the measured DURATION_S.
    calls = rate * (DURATION_S + 2.0)
    return rate, 1000 * used / calls, 1000 * server_used / calls


async def _audit_head(dsn: str, group: int, seconds: float = 3.0) -> float:
    """Entries/s one writer appends to the chain in durable groups of `group` entries."""
    conn = await asyncpg.connect(dsn)
    try:
        entry = audit.Entry(
            datetime.now(UTC), "bench", "bench audit head", ("001000000000",), "OK", "", ""
        )
        entries, last, loop = [entry] * group, None, asyncio.get_running_loop()
        started, appended = loop.time(), 0
        while loop.time() - started < seconds:
            last = await audit_db.append(conn, entries, last)
            appended += group
        return appended / (loop.time() - started)
    finally:
        await conn.close()


def main() -> dict[str, float]:
    os.environ.setdefault("REGISTRY_BENCH_DIR", "/var/tmp/citizen-registry-bench-scale")
    figures: dict[str, float] = {}
    with bench_database() as dsn:
        agency_id, kid, key = asyncio.run(prepare(dsn))
        md: Metadata = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
        primary = EmbeddedCluster(_bench_settings().data_dir)
        for workers in (1, 2):
            with server_process(dsn, REGISTRY_WORKERS=str(workers)) as server:
                rate, _, cpu = _measured(
                    partial(asyncio.run, _births(server.target, md)),
                    primary.pgdata,
                    server.process.pid,
                )
                figures[f"births_w{workers}"], figures[f"births_w{workers}_server_ms"] = rate, cpu
        requests = asyncio.run(_claims(dsn, agency_id))
        for workers in (1, 2):
            with server_process(dsn, REGISTRY_WORKERS=str(workers)) as server:
                bank = _bank(dsn)
                rate, cpu, server_cpu = _measured(
                    partial(asyncio.run, _verify(server.target, bank, requests)),
                    primary.pgdata,
                    server.process.pid,
                )
                figures[f"verify_w{workers}"], figures[f"verify_w{workers}_cpu_ms"] = rate, cpu
                figures[f"verify_w{workers}_server_ms"] = server_cpu
        replica = ReplicaCluster.of(primary, name="bench-replica")
        try:
            wait_caught_up(primary.dsn, replica.dsn)
            with server_process(dsn, REGISTRY_REPLICA_URLS=replica.runtime_dsn) as server:
                bank = _bank(dsn)
                rate, cpu, _ = _measured(
                    partial(asyncio.run, _verify(server.target, bank, requests)),
                    primary.pgdata,
                    server.process.pid,
                )
                figures["verify_replica"], figures["verify_replica_cpu_ms"] = rate, cpu
        finally:
            replica.remove()
        figures["audit_1"] = asyncio.run(_audit_head(dsn, 1))
        figures["audit_500"] = asyncio.run(_audit_head(dsn, 500))
    cores = os.cpu_count() or 1
    b1, b2 = figures["births_w1"], figures["births_w2"]
    v1, v2 = figures["verify_w1"], figures["verify_w2"]
    print(
        f"births: {b1:,.0f}/s with 1 worker, {b2:,.0f}/s with 2 -> ratio {b2 / b1:.2f}x "
        f"({BIRTH_CALLERS} callers over {CHANNELS} channels, {DURATION_S:.0f} s, {cores} cores "
        "shared with the client and PostgreSQL)"
    )
    print(
        f"verify unary: {v1:,.0f}/s with 1 worker, {v2:,.0f}/s with 2 -> ratio {v2 / v1:.2f}x "
        f"({VERIFY_CALLERS} callers over {CHANNELS} channels); primary CPU "
        f"{figures['verify_w1_cpu_ms']:.2f} / {figures['verify_w2_cpu_ms']:.2f} ms per verification"
    )
    print(
        f"server CPU per call (all workers): births {figures['births_w1_server_ms']:.2f} ms "
        f"(1 worker) / {figures['births_w2_server_ms']:.2f} ms (2); verifications "
        f"{figures['verify_w1_server_ms']:.2f} / {figures['verify_w2_server_ms']:.2f} ms -> one "
        f"core serves ~{1000 / figures['births_w1_server_ms']:,.0f} births/s or "
        f"~{1000 / figures['verify_w1_server_ms']:,.0f} verifications/s"
    )
    print(
        f"audit chain head, one writer: {figures['audit_1']:,.0f} entries/s in 1-entry groups "
        f"(one durable commit each), {figures['audit_500']:,.0f} entries/s in 500-entry groups"
    )
    vr = figures["verify_replica"]
    print(
        f"verify unary with 1 replica ({cores} workers): {vr:,.0f}/s vs {v2:,.0f}/s without "
        f"-> ratio {vr / v2:.2f}x; primary CPU per verification "
        f"{figures['verify_replica_cpu_ms']:.2f} ms vs {figures['verify_w2_cpu_ms']:.2f} ms "
        "(the audit entries still go to the primary)"
    )
    return figures


if __name__ == "__main__":
    main()
