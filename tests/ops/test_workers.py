"""REGISTRY_WORKERS=2: one supervisor, two worker processes on one port, every guarantee intact.

The server runs as operators run it (`python server.py`, a real subprocess) on the session
database. Each test reaches both workers on purpose: the fixture opens channels (one
connection each) and learns which worker serves which from the access log's `worker` field,
so no assertion depends on how the kernel happened to spread the connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry.v1 import civil_registration_service_pb2_grpc as civil_grpc
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import identity_service_pb2_grpc as id_grpc
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.conftest import (
    SIGNING_KEY_DIR,
    AgencyFactory,
    make_agency_factory,
    private_pem,
    server_settings,
    wait_serving,
)
from tests.conftest import (
    TestAgency as Agency,
)
from tests.helpers import birth_request, decode
from tests.ops.cli import registry

ROOT = Path(__file__).resolve().parents[2]
# Channels to one target share one connection unless each keeps its own subchannel pool.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
REGISTRY = Path(sys.executable).parent / "registry"
CHANNELS = 16


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


@dataclass
class Supervised:
    """`python server.py` with two workers, and channels grouped by the worker serving them."""

    process: subprocess.Popen[str]
    target: str
    log: IO[str]
    channels: dict[int, list[grpc.Channel]] = field(default_factory=dict)
    data_dir: Path = Path()

    def log_lines(self) -> list[dict[str, Any]]:
        self.log.seek(0)
        lines = []
        for raw in self.log.read().splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return lines

    def wait_log(self, predicate: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.log_lines() if predicate(line)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError("expected log line did not appear")

    def one_per_worker(self) -> list[grpc.Channel]:
        return [self.channels[0][0], self.channels[1][0]]

    def all_channels(self) -> list[grpc.Channel]:
        return [c for group in self.channels.values() for c in group]

    def workers(self) -> set[int]:
        return _children(self.process.pid)


def start_supervised(dsn: str, owner_dsn: str, log: IO[str], **env: str) -> Supervised:
    settings = server_settings()
    environment = {
        **os.environ,
        "REGISTRY_DATABASE_URL": dsn,
        "REGISTRY_OWNER_DATABASE_URL": owner_dsn,
        "REGISTRY_LISTEN": "127.0.0.1:0",
        "REGISTRY_WORKERS": "2",
        "REGISTRY_SIGNING_KEY_DIR": str(settings.signing_keys_path),
        # The audit checkpoint file goes here, not into the working directory's var/.
        "REGISTRY_DATA_DIR": str(settings.data_dir),
        # Agency changes must arrive by NOTIFY, not by the periodic reload.
        "REGISTRY_AGENCY_REFRESH_S": "3600",
        "GRPC_VERBOSITY": "ERROR",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py")],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("registry listening on 127.0.0.1:"), line
    target = line.strip().removeprefix("registry listening on ")
    wait_serving(target)
    return Supervised(process, target, log, data_dir=settings.data_dir)


def map_channels(sup: Supervised, make_agency: AgencyFactory) -> None:
    """Open channels until both workers serve some; learn which serves which from the log."""
    opened: list[tuple[grpc.Channel, Agency]] = []
    while True:
        for _ in range(CHANNELS):
            channel = grpc.insecure_channel(sup.target, options=OWN_CONNECTION)
            probe = make_agency(scopes=("citizen:verify",))
            id_grpc.IdentityServiceStub(channel).GetSigningKeys(
                id_pb.GetSigningKeysRequest(), metadata=probe.metadata(), timeout=30
            )
            opened.append((channel, probe))
        ids = {probe.id for _, probe in opened}
        lines = sup.wait_log(lambda line, ids=ids: line.get("agency") in ids and "worker" in line)
        deadline = time.monotonic() + 30
        while len({line["agency"] for line in lines}) < len(ids):
            assert time.monotonic() < deadline, "access lines missing"
            time.sleep(0.05)
            lines = [line for line in sup.log_lines() if line.get("agency") in ids]
        worker_of = {line["agency"]: line["worker"] for line in lines}
        sup.channels = {}
        for channel, probe in opened:
            sup.channels.setdefault(worker_of[probe.id], []).append(channel)
        if set(sup.channels) == {0, 1}:
            return


@pytest.fixture(scope="module")
def supervised(runtime_dsn: str, cluster: Any, make_agency: AgencyFactory) -> Iterator[Supervised]:
    with tempfile.TemporaryFile("w+", prefix="workers-", suffix=".log") as log:
        sup = start_supervised(runtime_dsn, cluster.owner_dsn, log)
        try:
            map_channels(sup, make_agency)
            yield sup
        finally:
            for channel in sup.all_channels():
                channel.close()
            if sup.process.poll() is None:
                sup.process.send_signal(signal.SIGTERM)
                sup.process.wait(60)


def test_one_listening_line_and_two_workers_serving_one_port(supervised: Supervised) -> None:
    assert len(supervised.workers()) == 2
    assert set(supervised.channels) == {0, 1}
    for channel in supervised.one_per_worker():
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def _serving(channel: grpc.Channel, agency: Agency) -> tuple[str, str]:
    """(x-registry-instance, x-registry-workers) of an answer on this connection."""
    _, call = id_grpc.IdentityServiceStub(channel).GetSigningKeys.with_call(
        id_pb.GetSigningKeysRequest(), metadata=agency.metadata(), timeout=30
    )
    headers = dict(call.trailing_metadata())
    return headers["x-registry-instance"], headers["x-registry-workers"]


def test_each_worker_names_itself_in_its_answers(supervised: Supervised, agency) -> None:
    ids = {
        worker: {_serving(channel, agency) for channel in channels[:3]}
        for worker, channels in supervised.channels.items()
    }
    # One id per worker, the same on each of its connections; two workers, two ids.
    assert all(len(named) == 1 for named in ids.values()), ids
    assert {workers for named in ids.values() for _, workers in named} == {"2"}
    assert len({instance for named in ids.values() for instance, _ in named}) == 2


def test_batch_verify_streams_reach_both_workers_every_time(
    supervised: Supervised,
    agency: Agency,
    make_agency: AgencyFactory,
    registry_client: Any,
    tmp_path: Path,
) -> None:
    """The kernel gives each connection to a worker by chance (two streams share one worker
    half the time); the client asks each connection which worker serves it and opens another
    while a worker has none of its streams."""
    from registry_client import cli

    bank = make_agency(scopes=("identity:verify",), miss_budget=1_000_000)
    key = tmp_path / "bank.pem"
    key.write_text(private_pem(bank.private_key))
    civil = civil_grpc.CivilRegistrationServiceStub(supervised.one_per_worker()[0])
    pin = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
    source = tmp_path / "customers.csv"
    source.write_text(
        "id,pin,full_name\n" + "".join(f"c{i},{pin},Ai Đó\n" for i in range(8)),
        encoding="utf-8",
    )
    connection = ["--target", supervised.target, "--agency", bank.id, "--kid", "k1"]
    for run in range(4):
        code = cli.main(
            ["batch-verify", str(source), *connection, "--key", str(key), "--streams", "2",
             "--batch-size", "2", "--out", str(tmp_path / f"results-{run}.csv"), "--json"]
        )  # fmt: skip
        assert code == 0
        lines = supervised.wait_log(
            lambda line: (
                line.get("agency") == bank.id
                and line.get("method", "").endswith("VerifyIdentityBatches")
            ),
        )
        deadline = time.monotonic() + 30
        while len(lines) < 2 * (run + 1):  # the stream's line is written when it ends
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
            lines = [
                line
                for line in supervised.log_lines()
                if line.get("agency") == bank.id
                and line.get("method", "").endswith("VerifyIdentityBatches")
            ]
        assert len(lines) == 2 * (run + 1)
        assert {line["worker"] for line in lines[-2:]} == {0, 1}, lines[-2:]


def test_births_through_both_workers_never_share_a_pin(supervised, agency, db) -> None:
    stubs = [civil_grpc.CivilRegistrationServiceStub(c) for c in supervised.all_channels()]

    def born(i: int) -> str:
        stub = stubs[i % len(stubs)]
        response = stub.RegisterBirth(birth_request(), metadata=agency.metadata(), timeout=60)
        return str(response.citizen.pin)

    with ThreadPoolExecutor(16) as pool:
        pins = list(pool.map(born, range(160)))
    assert len(set(pins)) == len(pins) == 160
    stored = db.fetchval("SELECT count(*) FROM citizens WHERE pin = ANY($1::text[])", pins)
    assert stored == 160


def test_one_request_id_sent_to_both_workers_at_once_registers_one_birth(
    supervised, agency
) -> None:
    stubs = [civil_grpc.CivilRegistrationServiceStub(c) for c in supervised.all_channels()]
    for _ in range(5):
        request = birth_request()

        def send(stub: Any, request: Any = request) -> tuple[str, bool]:
            r = stub.RegisterBirth(request, metadata=agency.metadata(), timeout=60)
            return r.citizen.pin, r.replayed

        with ThreadPoolExecutor(len(stubs)) as pool:
            answers = list(pool.map(send, stubs))
        assert len({pin for pin, _ in answers}) == 1
        assert sorted(replayed for _, replayed in answers) == [False] + [True] * (len(stubs) - 1)


def test_the_audit_chain_stays_one_whole_chain(supervised, make_agency, cluster) -> None:
    verifier = make_agency(miss_budget=100_000)
    stubs = [id_grpc.IdentityServiceStub(c) for c in supervised.all_channels()]

    def verify(i: int) -> None:
        stubs[i % len(stubs)].VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=f"0010998{i:05d}", full_name="An"),
            metadata=verifier.metadata(),
            timeout=60,
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(verify, range(200)))
    # The key ring every server of the session signs checkpoints with (tests/conftest.py).
    env = {
        **os.environ,
        "REGISTRY_OWNER_DATABASE_URL": cluster.owner_dsn,
        "REGISTRY_SIGNING_KEY_DIR": str(SIGNING_KEY_DIR),
        "REGISTRY_DATA_DIR": tempfile.mkdtemp(prefix="registry-verify-"),
    }
    result = subprocess.run(
        [str(REGISTRY), "audit", "verify"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit log intact" in result.stdout


def test_the_change_feed_keeps_its_order_and_resumes_on_the_other_worker(
    supervised, agency
) -> None:
    first, second = supervised.one_per_worker()
    watch = pop_grpc.PopulationServiceStub(first)
    stream = watch.WatchChanges(pop_pb.WatchChangesRequest(), metadata=agency.metadata())
    stubs = [civil_grpc.CivilRegistrationServiceStub(c) for c in supervised.all_channels()]

    def born(i: int) -> str:
        r = stubs[i % len(stubs)].RegisterBirth(birth_request(), metadata=agency.metadata())
        return str(r.citizen.pin)

    with ThreadPoolExecutor(8) as pool:
        pins = set(pool.map(born, range(40)))
    seen: list[tuple[int, str]] = []
    missing = set(pins)
    for response in stream:
        seen.append((response.event.sequence, response.event.pin))
        missing.discard(response.event.pin)
        if not missing:
            break
    stream.cancel()
    sequences = [s for s, _ in seen]
    assert sequences == sorted(set(sequences)), "the feed repeated or reordered events"
    ours = [(s, p) for s, p in seen if p in pins]
    assert len(ours) == 40
    # Resume from the middle on the other worker: exactly the same tail.
    middle = ours[19][0]
    resumed = pop_grpc.PopulationServiceStub(second).WatchChanges(
        pop_pb.WatchChangesRequest(after_sequence=middle), metadata=agency.metadata()
    )
    tail: list[tuple[int, str]] = []
    expected = [e for e in seen if e[0] > middle]
    for response in resumed:
        tail.append((response.event.sequence, response.event.pin))
        if len(tail) == len(expected):
            break
    resumed.cancel()
    assert tail == expected


def test_a_disabled_agency_is_refused_by_every_worker_within_a_second(
    supervised, make_agency, db
) -> None:
    victim = make_agency(scopes=("citizen:verify",))
    stubs = [id_grpc.IdentityServiceStub(c) for c in supervised.all_channels()]
    for stub in stubs:  # every worker knows the agency and lets it in
        stub.GetSigningKeys(id_pb.GetSigningKeysRequest(), metadata=victim.metadata())
    db.execute("UPDATE agencies SET enabled = false WHERE id = $1", victim.id)
    disabled_at = time.monotonic()
    pending = set(range(len(stubs)))
    refused_after: list[float] = []
    while pending and time.monotonic() - disabled_at < 10:
        for i in sorted(pending):
            try:
                stubs[i].GetSigningKeys(id_pb.GetSigningKeysRequest(), metadata=victim.metadata())
            except grpc.RpcError as exc:
                assert decode(exc).reason == "AGENCY_DISABLED", decode(exc)
                pending.discard(i)
                refused_after.append(time.monotonic() - disabled_at)
        time.sleep(0.01)
    assert not pending, "a worker still admits the disabled agency after 10 s"
    # The periodic reload is an hour away: this is the NOTIFY path on both workers.
    assert max(refused_after) < 1.0, refused_after


def test_an_agency_rate_limit_is_split_exactly_over_the_workers(supervised, make_agency) -> None:
    limited = make_agency(scopes=("citizen:verify",), rate_limit=10)
    token = limited.metadata()
    # 20 calls at each worker at once: 10 per second in all, so 10 pass (+ refill while the
    # burst runs); per-process buckets would let 10 pass at each worker.
    stubs = [
        id_grpc.IdentityServiceStub(channel)
        for worker in (0, 1)
        for channel in supervised.channels[worker][:1] * 20
    ]

    def call(stub: Any) -> bool:
        try:
            stub.GetSigningKeys(id_pb.GetSigningKeysRequest(), metadata=token, timeout=30)
            return True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return False

    started = time.monotonic()
    with ThreadPoolExecutor(40) as pool:
        admitted = sum(pool.map(call, stubs))
    elapsed = time.monotonic() - started
    assert admitted <= 10 + 10 * elapsed + 1, (admitted, elapsed)
    assert admitted >= 10, admitted


def test_a_crashed_worker_is_restarted(supervised, agency) -> None:
    before = supervised.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = supervised.workers()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"workers {supervised.workers()} after killing {victim}")
    supervised.wait_log(lambda line: "restarting" in line.get("msg", ""))
    # Fresh connections reach the port and both processes serve births.
    with ThreadPoolExecutor(8) as pool:

        def born(_: int) -> str:
            with grpc.insecure_channel(supervised.target, options=OWN_CONNECTION) as channel:
                stub = civil_grpc.CivilRegistrationServiceStub(channel)
                answer = stub.RegisterBirth(birth_request(), metadata=agency.metadata())
                return str(answer.citizen.pin)

        assert len(set(pool.map(born, range(16)))) == 16


def test_registry_status_lists_the_workers_and_their_restarts(supervised, dsn) -> None:
    # Run after test_a_crashed_worker_is_restarted: one restart, both workers serving again.
    log = supervised.log_lines()
    restarted = len([line for line in log if "restarting" in line.get("msg", "")])
    env = {"REGISTRY_DATA_DIR": str(supervised.data_dir), "REGISTRY_LISTEN": supervised.target}
    deadline = time.monotonic() + 60
    while True:  # the restarted worker counts as serving once it has said so
        done = registry("status", "--json", dsn=dsn, env=env)
        assert "Traceback" not in done.stderr
        found = {f["name"]: f for f in json.loads(done.stdout)}["workers"]
        if found["verdict"] == "ok" or time.monotonic() > deadline:
            break
        assert found["verdict"] == "warn" and "1 of 2 serving" in found["summary"], found
        time.sleep(0.5)
    assert found["verdict"] == "ok", found
    assert found["details"]["supervisor_pid"] == supervised.process.pid
    listed = found["details"]["workers"]
    assert {w["pid"] for w in listed} == supervised.workers()
    assert all(w["serving"] for w in listed)
    assert sum(w["restarts"] for w in listed) == restarted
    text = registry("status", dsn=dsn, env=env).stdout
    [line] = [line for line in text.splitlines() if line.split()[1:2] == ["workers"]]
    assert "2 of 2 serving" in line and f"{restarted} restarts" in line


def _hold_lock(dsn: str, locked: threading.Event, release: threading.Event) -> None:
    """Hold an EXCLUSIVE lock on citizens (births wait on it) until release is set."""

    async def hold() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE citizens IN EXCLUSIVE MODE")
                locked.set()
                await asyncio.to_thread(release.wait, 120)
        finally:
            await conn.close()

    asyncio.run(hold())


def _drained(sup: Supervised) -> set[int]:
    return {
        line["worker"]
        for line in sup.log_lines()
        if "draining in-flight" in line.get("msg", "") and "worker" in line
    }


def test_sigterm_drains_calls_in_flight_on_every_worker(runtime_dsn, cluster, agency, db) -> None:
    """Births waiting on a lock in both workers when SIGTERM comes still answer OK."""
    with (
        tempfile.TemporaryFile("w+", prefix="drain-", suffix=".log") as log,
        ThreadPoolExecutor(5) as pool,
    ):
        sup = start_supervised(runtime_dsn, cluster.owner_dsn, log)
        locked, release = threading.Event(), threading.Event()
        try:
            map_channels(sup, make_agency_factory(cluster.dsn))
            holder = pool.submit(_hold_lock, cluster.dsn, locked, release)
            assert locked.wait(30)
            futures = [
                pool.submit(
                    civil_grpc.CivilRegistrationServiceStub(channel).RegisterBirth,
                    birth_request(),
                    metadata=agency.metadata(),
                    timeout=60,
                )
                for worker in (0, 1)
                for channel in sup.channels[worker][:2]
            ]
            deadline = time.monotonic() + 30
            waiting = 0
            while waiting < 4 and time.monotonic() < deadline:
                waiting = int(
                    db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND application_name = 'citizen-registry'"
                    )
                )
                time.sleep(0.05)
            assert waiting == 4
            sup.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _drained(sup) != {0, 1} and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _drained(sup) == {0, 1}
            release.set()
            holder.result(30)
            pins = [f.result(60).citizen.pin for f in futures]
            assert len(set(pins)) == 4
            assert sup.process.wait(60) == 0
        finally:
            release.set()
            for channel in sup.all_channels():
                channel.close()
            if sup.process.poll() is None:
                sup.process.kill()
                sup.process.wait(30)
