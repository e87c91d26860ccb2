"""Failover without loss: the primary dies mid-load, its synchronous standby is promoted.

The server is given both hosts in one DSN with target_session_attrs=read-write, as it would be
behind Patroni; nobody tells it about the failover. Callers retry UNAVAILABLE with the same
request_id (as registry_client does). Afterwards every acknowledged birth is on the new
primary, no PIN was issued twice, no audit entry is missing and health is SERVING again.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import grpc
import pytest

from registry.embedded import EmbeddedCluster
from registry.v1 import civil_registration_service_pb2_grpc as civil_grpc
from tests.conftest import (
    DB,
    ServerThread,
    make_agency_factory,
    migrate_cluster,
    new_cluster,
    run,
    server_settings,
    wait_serving,
)
from tests.helpers import birth_request
from tests.replicas import ReplicaCluster, run_sql
from tests.runtime.audit_chain import _walk

THREADS = 4
BEFORE_KILL = 40
AFTER_PROMOTION = 40


@pytest.fixture
def pair() -> Iterator[tuple[EmbeddedCluster, ReplicaCluster]]:
    primary = new_cluster("registry-failover-")
    standby: ReplicaCluster | None = None
    try:
        migrate_cluster(primary)
        standby = ReplicaCluster.of(primary, name="standby")
        run_sql(primary.dsn, "ALTER SYSTEM SET synchronous_standby_names = 'standby'")
        run_sql(primary.dsn, "SELECT pg_reload_conf()")
        deadline = time.monotonic() + 60
        while (
            DB(primary.dsn).fetchval(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'"
            )
            != "sync"
        ):
            assert time.monotonic() < deadline, "the standby did not become synchronous"
            time.sleep(0.05)
        yield primary, standby
    finally:
        if standby is not None:
            standby.remove()
        primary.stop("immediate")
        shutil.rmtree(primary.data_dir, ignore_errors=True)


def _both_hosts(primary: EmbeddedCluster, standby: ReplicaCluster) -> str:
    password = quote(primary._read_role_password("registry_runtime"), safe="")
    hosts = f"127.0.0.1:{primary._read_state().port},127.0.0.1:{standby.port}"
    return (
        f"postgresql://registry_runtime:{password}@{hosts}/registry?target_session_attrs=read-write"
    )


def test_losing_the_primary_loses_no_acknowledged_birth(pair) -> None:
    primary, standby = pair
    agency = make_agency_factory(primary.dsn)(scopes=("birth:register",))
    server = ServerThread(server_settings(), _both_hosts(primary, standby)).start()
    acknowledged: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    promoted = threading.Event()
    channels = [
        grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(THREADS)
    ]

    def births(index: int) -> None:
        stub = civil_grpc.CivilRegistrationServiceStub(channels[index])
        after = 0
        while after < AFTER_PROMOTION // THREADS:
            request = birth_request()
            deadline = time.monotonic() + 120
            while True:  # a caller's retry: the same request_id until acknowledged
                try:
                    answer = stub.RegisterBirth(request, metadata=agency.metadata(), timeout=30)
                    break
                except grpc.RpcError as exc:
                    if exc.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        with lock:
                            errors.append(f"{exc.code()}: {exc.details()}")
                    assert time.monotonic() < deadline, "no recovery within 120 s"
                    time.sleep(0.1)
            with lock:
                acknowledged[request.request_id] = answer.citizen.pin
            if promoted.is_set():
                after += 1

    try:
        wait_serving(server.target)
        with ThreadPoolExecutor(THREADS) as pool:
            loads = [pool.submit(births, i) for i in range(THREADS)]
            deadline = time.monotonic() + 60
            while len(acknowledged) < BEFORE_KILL:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            primary.stop("immediate")  # mid-load: births are in flight
            standby.promote()
            promoted.set()
            for load in loads:
                load.result(300)
        wait_serving(server.target, timeout=60)  # SERVING again, unaided
    finally:
        for channel in channels:
            channel.close()
        server.stop()
    assert errors == [], errors[:5]
    new_primary = DB(standby.dsn)
    # The birth's idempotency key names the PIN it gave (written in the birth's transaction).
    stored = {
        r["request_id"]: r["pin"]
        for r in new_primary.fetch(
            "SELECT k.request_id, c.pin FROM idempotency_keys k"
            " JOIN citizens c ON c.pin = k.result_key WHERE k.agency_id = $1",
            agency.id,
        )
    }
    for request_id, pin in acknowledged.items():
        assert stored.get(request_id) == pin, f"acknowledged birth {pin} lost"
    pins = list(stored.values())
    assert len(set(pins)) == len(pins), "a PIN was issued twice"
    audited = {
        p
        for (p,) in new_primary.fetch(
            "SELECT unnest(pins) FROM audit_log WHERE agency_id = $1 AND outcome = 'OK'",
            agency.id,
        )
    }
    assert set(acknowledged.values()) <= audited, "an acknowledged birth has no audit entry"
    walk = run(_walk(standby.dsn))
    assert walk.intact, walk.problem
