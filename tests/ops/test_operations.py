"""Operations: health, database outages, the real entry point and graceful shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry.embedded import EmbeddedCluster
from registry.v1 import civil_registration_service_pb2_grpc
from tests.conftest import (
    DB,
    ServerThread,
    make_agency_factory,
    new_cluster,
    public_pem,
    run,
    server_settings,
    wait_serving,
)
from tests.helpers import birth_request, decode

pytestmark = pytest.mark.slow


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=3).status


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_database_outage_is_unavailable_and_the_server_recovers_by_itself():
    cluster = new_cluster("registry-outage-")
    server = None
    try:
        import asyncpg

        from registry.db.migrate import migrate

        async def prepare() -> None:
            conn = await asyncpg.connect(cluster.dsn)
            await migrate(conn)
            await conn.close()

        run(prepare())
        server = ServerThread(server_settings(), cluster.dsn).start()
        wait_serving(server.target)
        agency = make_agency_factory(cluster.dsn)()
        channel = grpc.insecure_channel(server.target)
        stub = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
        first = stub.RegisterBirth(birth_request(), metadata=agency.metadata(), timeout=10)

        cluster.stop("fast")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterBirth(birth_request(), metadata=agency.metadata(), timeout=15)
        error = decode(info.value)
        assert error.code == grpc.StatusCode.UNAVAILABLE
        assert error.reason == "DATABASE_UNAVAILABLE"
        assert error.retry_delay_s is not None and error.retry_delay_s > 0
        assert "Traceback" not in error.message
        assert time.monotonic() - started < 10, "an outage must be answered, not hung on"
        _wait_for(
            lambda: _health(server.target) == health_pb2.HealthCheckResponse.NOT_SERVING,
            10,
            "health NOT_SERVING during the outage",
        )

        cluster.start()
        _wait_for(
            lambda: _health(server.target) == health_pb2.HealthCheckResponse.SERVING,
            20,
            "health SERVING after the database returned",
        )
        request = birth_request()
        deadline = time.monotonic() + 20
        while True:  # pooled connections broken by the outage are replaced on use
            try:
                second = stub.RegisterBirth(request, metadata=agency.metadata(), timeout=10)
                break
            except grpc.RpcError as exc:
                assert decode(exc).code == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "server did not recover"
                time.sleep(0.2)
        assert second.citizen.pin != first.citizen.pin
        assert (
            DB(cluster.dsn).fetchval(
                "SELECT count(*) FROM citizens WHERE pin = ANY($1::text[])",
                [first.citizen.pin, second.citizen.pin],
            )
            == 2
        )
        channel.close()
    finally:
        if server is not None:
            server.stop()
        cluster.stop("immediate")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_py_on_a_fresh_data_dir_serves_and_drains_on_sigterm():
    """The README path: python server.py creates the cluster, serves, and stops cleanly."""
    data_dir = Path(tempfile.mkdtemp(prefix="registry-serve-"))
    data_dir.chmod(0o755)
    port = _free_port()
    env = {**os.environ, "REGISTRY_DATA_DIR": str(data_dir), "REGISTRY_LISTEN": f"127.0.0.1:{port}"}
    env.pop("REGISTRY_DATABASE_URL", None)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, str(root / "server.py")],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line, line + (
            proc.stderr.read() if proc.poll() is not None else ""
        )
        wait_serving(f"127.0.0.1:{port}")

        # An operator registers an agency with the CLI while the server runs.
        from tests.conftest import new_private_key

        key = new_private_key()
        key_file = data_dir / "agency.pub"
        key_file.write_text(public_pem(key))
        cli = Path(sys.executable).parent / "registry"
        added = subprocess.run(
            [
                str(cli),
                "agency",
                "add",
                "--id",
                "civil-test",
                "--name",
                "Sở Tư pháp",
                "--kind",
                "JUSTICE",
                "--scopes",
                "birth:register",
                "--public-key",
                str(key_file),
                "--kid",
                "k1",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert added.returncode == 0, added.stderr
        cluster = EmbeddedCluster(data_dir)
        assert cluster.is_running(), "the CLI must not stop a cluster the server is using"

        from tests.conftest import TestAgency

        agency = TestAgency("civil-test", "k1", "ES256", key, ("birth:register",))
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
        acknowledged: list[str] = []
        refused: list[grpc.StatusCode] = []
        stop = threading.Event()

        def load() -> None:
            md = agency.metadata(agency.token(lifetime=600))
            while not stop.is_set():
                try:
                    acknowledged.append(
                        stub.RegisterBirth(birth_request(), metadata=md, timeout=10).citizen.pin
                    )
                except grpc.RpcError as exc:
                    refused.append(exc.code())
                    return

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        _wait_for(lambda: len(acknowledged) >= 20, 30, "births under load")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stop.set()
        for w in workers:
            w.join(15)
        channel.close()
        stderr = proc.stderr.read() if proc.stderr else ""
        served = [
            json.loads(line)
            for line in stderr.splitlines()
            if line.startswith("{") and '"registry.access"' in line
        ]
        births = [e for e in served if e["method"].endswith("/RegisterBirth")]
        # The drain lets every started call finish: no handler was cut off, and every call the
        # server completed reached its caller. Calls that had not started when the drain began
        # are refused with a retryable code (UNAVAILABLE, or CANCELLED from gRPC's core).
        assert all(e["status"] == "OK" for e in births), [e["status"] for e in births]
        assert len(births) == len(acknowledged)
        assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, refused
        assert not cluster.is_running(), "the server stops the cluster it started"

        # Every acknowledged birth is durable.
        cluster.ensure_running()
        try:
            stored = DB(cluster.dsn).fetchval(
                "SELECT count(*) FROM citizens WHERE pin = ANY($1::text[])", acknowledged
            )
            assert stored == len(acknowledged) == len(set(acknowledged))
        finally:
            cluster.stop()
        assert "Traceback" not in stderr
        assert agency.token() not in stderr, "tokens are never logged"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        c = EmbeddedCluster(data_dir)
        if c.is_running():
            c.stop("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)
