"""What every benchmark needs: a database, an agency with a key, the real server process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry.cli import database_url
from registry.config import Settings
from registry.db import agencies
from registry.db.migrate import migrate
from registry.embedded import EmbeddedCluster
from registry.grpc.gate import INSTANCE_HEADER, WORKERS_HEADER
from registry.rules.tokens import SCOPES
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import identity_service_pb2_grpc as id_grpc

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def bench_database(subdir: str | None = None) -> Iterator[str]:
    """Yield the DSN of the bench database: REGISTRY_DATABASE_URL, or an embedded cluster.

    The embedded one is kept between runs under REGISTRY_BENCH_DIR (default under /var/tmp,
    which the unprivileged PostgreSQL account can reach when we run as root); ``subdir`` names
    another cluster below it (bench.sizes keeps one register per size).
    """
    with database_url(_bench_settings(subdir)) as dsn:
        _RUNTIME_DSNS[dsn] = runtime_dsn(dsn, subdir)
        yield dsn


# owner DSN -> the runtime DSN of the same bench database (server_process serves with it)
_RUNTIME_DSNS: dict[str, str] = {}


def _bench_settings(subdir: str | None = None) -> Settings:
    data_dir = Path(os.environ.get("REGISTRY_BENCH_DIR", "/var/tmp/citizen-registry-bench"))
    if subdir is not None:
        data_dir = data_dir / subdir
    return replace(Settings.from_env(), data_dir=data_dir)


def runtime_dsn(owner_dsn: str, subdir: str | None = None) -> str:
    """The DSN the server serves with for the bench database whose owner DSN is owner_dsn:
    REGISTRY_DATABASE_URL when configured, else the embedded cluster's runtime role."""
    if owner_dsn in _RUNTIME_DSNS:
        return _RUNTIME_DSNS[owner_dsn]
    settings = _bench_settings(subdir)
    if settings.database_url is not None:
        return settings.database_url
    return EmbeddedCluster(settings.data_dir, settings.pg_bin_dir).runtime_dsn


async def prepare(dsn: str) -> tuple[str, str, ec.EllipticCurvePrivateKey]:
    """Migrate and register a fresh agency holding every scope; return (id, kid, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    agency_id = f"bench-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await agencies.add(
            conn,
            agency_id=agency_id,
            name="Benchmark agency",
            kind="OTHER",
            scopes=list(SCOPES),
            fields=[],
            # A load generator: the default rate limit (100 calls/s) would be what is measured.
            rate_limit=1_000_000,
            # A data-cleaning campaign: many NO_MATCH answers are its point, not an attack.
            miss_budget=10_000_000,
            kid="k1",
            algorithm="ES256",
            public_key_pem=pem,
        )
    finally:
        await conn.close()
    return agency_id, "k1", key


def token(agency_id: str, kid: str, key: ec.EllipticCurvePrivateKey, lifetime: int = 900) -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": agency_id, "aud": "citizen-registry", "iat": now, "exp": now + lifetime},
        key,
        algorithm="ES256",
        headers={"kid": kid},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# Channels to one target share one connection unless each keeps its own subchannel pool; the
# registry's workers take whole connections, so a client spreads its load over several.
CHANNELS = 8
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def open_channels(target: str, count: int = CHANNELS) -> list[grpc.aio.Channel]:
    """Open `count` channels, each its own connection (to spread over the server's workers)."""
    return [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(count)]


async def spread_channels(
    target: str, count: int, md: tuple[tuple[str, str], ...], tries: int = 64
) -> list[grpc.aio.Channel]:
    """`count` channels, each its own connection, spread evenly over the server's workers.

    The kernel gives each connection to a worker by chance (with 8 workers and 16 connections
    some get none, some four), which would measure the busiest worker, not the server. Each
    connection is asked which process serves it (x-registry-instance, x-registry-workers: the
    rule of `registry-client batch-verify --streams`); one reaching a worker that holds more
    of them than another is replaced, up to `tries` extra connections. With `count` a multiple
    of the workers every worker gets the same share.
    """
    channels: list[grpc.aio.Channel] = []
    used: dict[str, int] = {}
    workers = 1
    while len(channels) < count:
        channel = grpc.aio.insecure_channel(target, options=OWN_CONNECTION)
        call = id_grpc.IdentityServiceStub(channel).GetSigningKeys(
            id_pb.GetSigningKeysRequest(), metadata=md, timeout=30
        )
        await call
        headers = dict(await call.trailing_metadata() or ())
        instance = str(headers.get(INSTANCE_HEADER, ""))
        workers = max(workers, int(headers.get(WORKERS_HEADER, "1")))
        fewest = min(used.values()) if len(used) >= workers else 0
        if used.get(instance, 0) > fewest and tries > 0:
            tries -= 1
            await channel.close()
            continue
        used[instance] = used.get(instance, 0) + 1
        channels.append(channel)
    return channels


@dataclass
class ServerProcess:
    target: str
    process: subprocess.Popen[str]


@contextmanager
def server_process(dsn: str, **env_overrides: str) -> Iterator[ServerProcess]:
    """Run `python server.py` on the bench database (owner DSN dsn) until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "REGISTRY_DATABASE_URL": runtime_dsn(dsn),
        "REGISTRY_OWNER_DATABASE_URL": dsn,
        "REGISTRY_LISTEN": f"127.0.0.1:{port}",
        "GRPC_VERBOSITY": "ERROR",
        **env_overrides,
    }
    # The server's JSON logs go to a scratch file: the bench prints figures only.
    with tempfile.TemporaryFile(prefix="bench-server-", suffix=".log") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            text=True,
        )
        target = f"127.0.0.1:{port}"
        try:
            wait_serving(target, proc)
            yield ServerProcess(target, proc)
        finally:
            proc.terminate()
            proc.wait(30)


def wait_serving(target: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{target} not serving")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


async def closed_loop(
    call: Callable[[int, int], Awaitable[object]],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 2.0,
) -> tuple[int, list[float], int]:
    """Run `concurrency` callers back to back; return (completed, latencies, errors) measured."""
    latencies: list[float] = []
    errors = 0
    completed = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup_s
    end = measure_from + duration_s

    async def caller(i: int) -> None:
        nonlocal errors, completed
        n = 0
        while True:
            t0 = loop.time()
            if t0 >= end:
                return
            try:
                await call(i, n)
                ok = True
            except grpc.aio.AioRpcError:
                ok = False
            t1 = loop.time()
            n += 1
            if t0 >= measure_from and t1 <= end:
                if ok:
                    completed += 1
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    latencies.sort()
    return completed, latencies, errors


def report(
    name: str,
    what: str,
    setup: str,
    measured: tuple[int, list[float], int],
    duration_s: float,
    target_per_s: float,
) -> dict[str, float]:
    """Print one benchmark line (rate, p50/p99, errors, ratio to target); return the figures."""
    completed, latencies, errors = measured
    rate = completed / duration_s
    p50 = percentile(latencies, 0.50) * 1000
    p99 = percentile(latencies, 0.99) * 1000
    print(
        f"{name}: {rate:,.0f} {what}/s durable ({setup}), "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {errors}; "
        f"target {target_per_s:.0f}/s -> ratio {rate / target_per_s:.2f}x "
        f"({'MET' if rate >= target_per_s else 'NOT MET'})"
    )
    return {"per_s": rate, "p50_ms": p50, "p99_ms": p99, "errors": errors}
