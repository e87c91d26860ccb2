"""Read replicas: a real streaming replica of the test cluster serves the read-only RPCs.

Reads reach the replica (its own statistics say so), their audit entries the primary; a
caller never misses its own write even while the replica lags; a replica that lags too far or
dies is skipped without a failed call, and comes back when healthy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc
import pytest

from registry.db.replicas import Replica
from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import card_service_pb2_grpc as card_grpc
from registry.v1 import civil_registration_service_pb2_grpc as civil_grpc
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import identity_service_pb2_grpc as id_grpc
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.conftest import ServerThread, server_settings, wait_serving
from tests.helpers import birth_request
from tests.ops.metrics import scrape, value
from tests.replicas import ReplicaCluster, run_sql, wait_caught_up

MATCH = id_pb.VERIFY_RESULT_MATCH


@pytest.fixture(scope="module")
def replica(cluster: Any, dsn: str) -> Iterator[ReplicaCluster]:
    made = ReplicaCluster.of(cluster)
    try:
        wait_caught_up(dsn, made.dsn)
        yield made
    finally:
        made.remove()


def _serve(
    runtime_dsn: str, replica: ReplicaCluster, max_lag_s: float, **metrics: Any
) -> ServerThread:
    settings = replace(
        server_settings(**metrics),
        replica_urls=(replica.runtime_dsn,),
        replica_max_lag_s=max_lag_s,
    )
    srv = ServerThread(settings, runtime_dsn).start()
    wait_serving(srv.target)
    return srv


def _replica(srv: ServerThread) -> Replica:
    assert srv.app is not None and srv.app.db.replicas is not None
    return srv.app.db.replicas.replicas[0]


def _wait_health(srv: ServerThread, healthy: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _replica(srv).healthy is not healthy:
        assert time.monotonic() < deadline, f"replica still {_replica(srv).problem or 'healthy'}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def tolerant(runtime_dsn: str, replica: ReplicaCluster) -> Iterator[ServerThread]:
    """A server that keeps reading from a replica up to ten minutes behind."""
    srv = _serve(runtime_dsn, replica, max_lag_s=600)
    try:
        _wait_health(srv, True)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def strict(runtime_dsn: str, replica: ReplicaCluster) -> Iterator[ServerThread]:
    """A server that skips the replica once it is a second behind (the one process of this
    module sampling the replica gauges: prometheus-client's registry is per process)."""
    srv = _serve(
        runtime_dsn, replica, max_lag_s=1, metrics_listen="127.0.0.1:0", metrics_sample_s=0.2
    )
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def paused(replica: ReplicaCluster) -> Iterator[None]:
    """The replica's replay paused (it receives WAL and applies none: it lags)."""
    run_sql(replica.dsn, "SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        run_sql(replica.dsn, "SELECT pg_wal_replay_resume()")


def _stubs(srv: ServerThread) -> tuple[Any, Any, Any, grpc.Channel]:
    channel = grpc.insecure_channel(srv.target)
    return (
        civil_grpc.CivilRegistrationServiceStub(channel),
        id_grpc.IdentityServiceStub(channel),
        card_grpc.CardServiceStub(channel),
        channel,
    )


def _wait_metric(srv: ServerThread, name: str, replica: str, wanted: Any) -> dict[Any, Any]:
    """Scrape until the replica's series `name` satisfies wanted (gauges sampled every 0.2 s)."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(srv)
        if (name, (("replica", replica),)) in samples and wanted(
            value(samples, name, replica=replica)
        ):
            return samples
        assert time.monotonic() < deadline, f"{name} of {replica}: {value(samples, name)}"
        time.sleep(0.1)


def _citizen_reads(replica: ReplicaCluster) -> int:
    from tests.conftest import DB

    return int(
        DB(replica.dsn).fetchval(
            "SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables "
            "WHERE relname = 'citizens'"
        )
    )


def test_reads_are_served_by_the_replica_and_audited_on_the_primary(
    tolerant, replica, agency, db, dsn
) -> None:
    civil, identity, cards, channel = _stubs(tolerant)
    with channel:
        pin = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
        wait_caught_up(dsn, replica.dsn)
        scans_before = _citizen_reads(replica)
        served_before = _replica(tolerant).reads
        audited_before = int(
            db.fetchval("SELECT count(*) FROM audit_log WHERE $1 = ANY(pins)", pin)
        )
        for _ in range(20):
            answer = identity.VerifyIdentity(
                id_pb.VerifyIdentityRequest(pin=pin, full_name="Nguyễn Văn An"),
                metadata=agency.metadata(),
            )
            assert answer.result == MATCH
            identity.GetCitizen(id_pb.GetCitizenRequest(pin=pin), metadata=agency.metadata())
            cards.ListCards(card_pb.ListCardsRequest(pin=pin), metadata=agency.metadata())
    assert _replica(tolerant).reads - served_before == 60
    audited = int(db.fetchval("SELECT count(*) FROM audit_log WHERE $1 = ANY(pins)", pin))
    assert audited - audited_before == 60, "every read's audit entry is on the primary"
    # The replica's own statistics (flushed by its backends within seconds) show the scans.
    deadline = time.monotonic() + 60
    while _citizen_reads(replica) - scans_before < 40:
        assert time.monotonic() < deadline, "the replica's statistics show no reads"
        time.sleep(0.2)


def test_a_birth_verified_at_once_matches_200_times_while_the_replica_lags(
    tolerant, replica, agency, paused
) -> None:
    civil, identity, _, channel = _stubs(tolerant)
    served_before = _replica(tolerant).reads
    with channel:
        for i in range(200):
            request = birth_request(full_name="Trần Thị Bình")
            pin = civil.RegisterBirth(request, metadata=agency.metadata()).citizen.pin
            answer = identity.VerifyIdentity(
                id_pb.VerifyIdentityRequest(pin=pin, full_name=request.full_name),
                metadata=agency.metadata(),
            )
            assert answer.result == MATCH, (i, answer)
    # The replica (paused, so lacking every one of these births) was asked each time.
    assert _replica(tolerant).healthy
    assert _replica(tolerant).reads - served_before == 200


def test_the_feed_reads_the_replica_then_the_primary_without_gaps_or_repeats(
    tolerant, replica, agency, dsn, db
) -> None:
    civil, _, _, channel = _stubs(tolerant)
    population = pop_grpc.PopulationServiceStub(channel)

    def born(count: int) -> list[str]:
        pins = [
            civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
            for _ in range(count)
        ]
        deadline = time.monotonic() + 10  # the sequencer numbers them on the primary
        while (
            db.fetchval(
                "SELECT count(*) FROM change_events WHERE pin = ANY($1) AND sequence IS NOT NULL",
                pins,
            )
            < count
        ):
            assert time.monotonic() < deadline, "births never numbered in the feed"
            time.sleep(0.05)
        return pins

    with channel:
        after = int(db.fetchval("SELECT coalesce(max(sequence), 0) FROM change_events"))
        early = born(3)
        wait_caught_up(dsn, replica.dsn)
        served_before = _replica(tolerant).reads
        run_sql(replica.dsn, "SELECT pg_wal_replay_pause()")
        try:
            late = born(3)  # on the primary only
            stream = population.WatchChanges(
                pop_pb.WatchChangesRequest(after_sequence=after),
                metadata=agency.metadata(),
                timeout=20,
            )
            events = []
            for response in stream:
                events.append(response.event)
                if {e.pin for e in events} >= set(early + late):
                    break
            stream.cancel()
        finally:
            run_sql(replica.dsn, "SELECT pg_wal_replay_resume()")
    ours = [e.pin for e in events if e.pin in set(early + late)]
    assert ours == early + late  # the replica's three, then the primary's three, once each
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)) and sequences[0] > after
    assert _replica(tolerant).reads > served_before, "the backlog was not read from the replica"


def test_a_replica_behind_the_lag_limit_is_skipped_and_returns(
    strict, replica, agency, dsn, paused
) -> None:
    civil, identity, _, channel = _stubs(strict)
    with channel:
        pin = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
        _wait_health(strict, False)
        assert "behind the primary" in _replica(strict).problem
        name = _replica(strict).address
        skipped = _wait_metric(strict, "registry_replica_serving", name, lambda v: v == 0)
        assert value(skipped, "registry_replica_lag_seconds", replica=name) > 1
        served = _replica(strict).reads
        for _ in range(20):
            answer = identity.VerifyIdentity(
                id_pb.VerifyIdentityRequest(pin=pin, full_name="Nguyễn Văn An"),
                metadata=agency.metadata(),
            )
            assert answer.result == MATCH
        assert _replica(strict).reads == served, "a lagging replica served reads"
        run_sql(replica.dsn, "SELECT pg_wal_replay_resume()")
        _wait_health(strict, True)
        back = _wait_metric(strict, "registry_replica_serving", name, lambda v: v == 1)
        assert value(back, "registry_replica_lag_seconds", replica=name) <= 1
        identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pin, full_name="Nguyễn Văn An"),
            metadata=agency.metadata(),
        )
        assert _replica(strict).reads == served + 1


def test_the_replica_killed_mid_load_fails_no_call(tolerant, replica, agency, dsn) -> None:
    civil, _, _, channel = _stubs(tolerant)
    with channel:
        pin = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
    wait_caught_up(dsn, replica.dsn)
    _wait_health(tolerant, True)
    stop = threading.Event()
    done = [0]
    lock = threading.Lock()
    channels = [
        grpc.insecure_channel(tolerant.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(4)
    ]

    def load(index: int) -> list[str]:
        stub = id_grpc.IdentityServiceStub(channels[index])
        failures = []
        while not stop.is_set():
            try:
                answer = stub.VerifyIdentity(
                    id_pb.VerifyIdentityRequest(pin=pin, full_name="Nguyễn Văn An"),
                    metadata=agency.metadata(),
                    timeout=60,
                )
                assert answer.result == MATCH
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
            with lock:
                done[0] += 1
        return failures

    def wait_done(count: int) -> None:
        deadline = time.monotonic() + 60
        while done[0] < count:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    try:
        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(load, i) for i in range(4)]
            wait_done(100)
            served_before_kill = _replica(tolerant).reads
            assert served_before_kill > 0
            replica.stop("immediate")  # mid-load: in-flight reads lose their connections
            killed_at = done[0]
            wait_done(killed_at + 300)
            stop.set()
            failures = [f for w in workers for f in w.result(60)]
        assert failures == []
        assert not _replica(tolerant).healthy
        assert "read failed" in _replica(tolerant).problem or "unreachable" in (
            _replica(tolerant).problem
        )
    finally:
        stop.set()
        for ch in channels:
            ch.close()
        replica.start()
    _wait_health(tolerant, True, timeout=60)  # back once it answers and has caught up


def test_registry_status_reports_each_replica_and_its_lag(replica, dsn, server, cluster):
    """`registry status` names each replica (never its password) and says how far behind."""
    import json

    from tests.ops.cli import registry

    env = {
        "REGISTRY_LISTEN": server.target,
        "REGISTRY_REPLICA_URLS": replica.runtime_dsn,
    }
    done = registry("status", "--json", dsn=dsn, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    found = {f["name"]: f for f in json.loads(done.stdout)}
    [name] = [n for n in found if n.startswith("replica ")]
    assert f"127.0.0.1:{replica.port}/registry" in name
    password = replica.runtime_dsn.split(":")[2].split("@")[0]
    assert password not in done.stdout
    assert found[name]["details"]["bytes_behind"] >= 0
    replica.stop("immediate")
    try:
        down = registry("status", "--json", dsn=dsn, env=env)
        assert down.returncode == 0  # reads fall back to the primary: a warning, not a failure
        [entry] = [f for f in json.loads(down.stdout) if f["name"] == name]
        assert entry["verdict"] == "warn" and "unreachable" in entry["summary"]
    finally:
        replica.start()
