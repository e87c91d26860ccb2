"""Faults under load: PostgreSQL crashes, and the server is stopped, in the middle of births.

Each test runs on its own cluster and its own `python server.py` process (never the session
database), drives it with several client threads that register births the way a real civil
status system does (a unique request_id per birth; on UNAVAILABLE, DEADLINE_EXCEEDED or ABORTED
the same request is sent again with backoff until it is answered), and then checks the
register against what the clients were told: every acknowledged birth is stored with the PIN
its caller got, has its audit entry, no PIN or request produced two citizens, and
`registry audit verify` finds the chain whole.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from registry.db.migrate import migrate
from registry.embedded import EmbeddedCluster
from registry.v1 import civil_registration_service_pb2 as civil_pb
from registry.v1 import civil_registration_service_pb2_grpc
from tests.conftest import DB, make_agency_factory, new_cluster, run
from tests.helpers import birth_request, decode

if TYPE_CHECKING:
    from tests.conftest import TestAgency

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "registry"
REGISTER_BIRTH = "/registry.v1.CivilRegistrationService/RegisterBirth"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
ABORTED = grpc.StatusCode.ABORTED
CANCELLED = grpc.StatusCode.CANCELLED
# What a client retries under the same request_id.
RETRYABLE = frozenset({UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED})
# The server's drain on SIGTERM (Settings.shutdown_grace_s; not configurable by environment).
DRAIN_GRACE_S = 10.0
CLIENT_THREADS = 6


# -- helpers ------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll predicate until it holds; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def health(target: str) -> int | None:
    """The server's overall health status, or None if the Check call itself failed."""
    with grpc.insecure_channel(target) as channel:
        try:
            return int(
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=2)
                .status
            )
        except grpc.RpcError:
            return None


def private_database() -> tuple[EmbeddedCluster, str]:
    """Start a migrated cluster of this test's own; return it and its DSN."""
    cluster = new_cluster("registry-faults-")

    async def prepare() -> None:
        conn = await asyncpg.connect(cluster.owner_dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    try:
        run(prepare())
    except BaseException:
        cluster.stop("immediate")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
        raise
    return cluster, cluster.dsn


class ServerProcess:
    """`python server.py` on a given database, its stderr (JSON log lines) kept in a file."""

    def __init__(self, dsn: str, work_dir: Path, name: str):
        self.log_path = work_dir / f"{name}.stderr"
        out_path = work_dir / f"{name}.stdout"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(
            REGISTRY_DATABASE_URL=dsn,
            REGISTRY_LISTEN="127.0.0.1:0",
            REGISTRY_DATA_DIR=str(work_dir),  # signing keys; the database is dsn
            GRPC_VERBOSITY="ERROR",
        )
        # Files, not pipes: a pipe nobody reads during the load would block the server's log.
        with out_path.open("w") as out, self.log_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "server.py")],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        found: list[str] = []

        def listening() -> bool:
            match = re.search(r"listening on (\S+)", out_path.read_text())
            if match:
                found.append(match.group(1))
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            return False

        try:
            wait_for(listening, 60, f"{name} to listen")
        except BaseException:
            self.kill()
            raise
        self.target = found[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def problems(self) -> list[str]:
        """What the server logged at ERROR level or above (an internal error's stack trace)."""
        return [
            json.dumps(r, ensure_ascii=False)
            for r in self.records()
            if r.get("level") in ("ERROR", "CRITICAL")
        ]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass(frozen=True)
class Attempt:
    """One RegisterBirth call as its client saw it (monotonic times)."""

    request_id: str
    started: float
    ended: float
    code: grpc.StatusCode
    pin: str = ""
    replayed: bool = False
    reason: str = ""
    retry_delay_s: float | None = None
    message: str = ""


def failed_attempt(request_id: str, started: float, error: grpc.RpcError) -> Attempt:
    call: Any = error
    reason, delay = "", None
    try:
        has_details = rpc_status.from_call(call) is not None
    except ValueError:
        has_details = False
    if has_details:
        details = decode(error)
        reason, delay = details.reason, details.retry_delay_s
    return Attempt(
        request_id,
        started,
        time.monotonic(),
        call.code(),
        reason=reason,
        retry_delay_s=delay,
        message=call.details() or "",
    )


class BirthLoad:
    """Client threads registering births; each request is retried until it is answered."""

    def __init__(
        self,
        target: str,
        agency: TestAgency,
        *,
        threads: int = CLIENT_THREADS,
        call_timeout_s: float = 5.0,
        give_up_s: float = 40.0,
    ):
        self._channel = grpc.insecure_channel(target)
        self._stub = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(self._channel)
        self._metadata = agency.metadata(agency.token(lifetime=600), purpose="birth registration")
        self._call_timeout_s = call_timeout_s
        self._give_up_s = give_up_s
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._worker, name=f"births-{i}", daemon=True)
            for i in range(threads)
        ]
        self.requests: dict[str, civil_pb.RegisterBirthRequest] = {}
        self.attempts: list[Attempt] = []
        self.acknowledged: dict[str, Attempt] = {}
        self.unanswered: dict[str, Attempt] = {}
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        """No new births: each thread finishes the one it is carrying out."""
        self.abandon = threading.Event()
        """Stop retrying: a request failing from now on is left unanswered."""

    def start(self) -> BirthLoad:
        for thread in self._threads:
            thread.start()
        return self

    def _worker(self) -> None:
        try:
            while not self.stopping.is_set():
                if not self.carry_out(birth_request()) and self.abandon.is_set():
                    return
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def carry_out(self, request: civil_pb.RegisterBirthRequest) -> bool:
        """Send request until answered (retrying retryable codes); tell whether it got OK."""
        request_id = request.request_id
        with self._lock:
            self.requests[request_id] = request
        delay = 0.05
        give_up = time.monotonic() + self._give_up_s
        while True:
            started = time.monotonic()
            try:
                response = self._stub.RegisterBirth(
                    request, metadata=self._metadata, timeout=self._call_timeout_s
                )
            except grpc.RpcError as exc:
                attempt = failed_attempt(request_id, started, exc)
                with self._lock:
                    self.attempts.append(attempt)
                if (
                    attempt.code not in RETRYABLE
                    or self.abandon.is_set()
                    or time.monotonic() > give_up
                ):
                    with self._lock:
                        self.unanswered[request_id] = attempt
                    return False
                self.abandon.wait(delay * random.uniform(0.5, 1.5))  # backoff
                delay = min(delay * 2, 0.5)
                continue
            attempt = Attempt(
                request_id, started, time.monotonic(), OK, response.citizen.pin, response.replayed
            )
            with self._lock:
                self.attempts.append(attempt)
                self.acknowledged[request_id] = attempt
                self.unanswered.pop(request_id, None)
            return True

    def acknowledged_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for a in self.acknowledged.values() if a.started >= moment)

    def finish(self, timeout: float) -> None:
        """Stop taking new births and wait for the threads (which may still be retrying)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"client threads still retrying after {timeout:.0f}s: {alive}"

    def close(self) -> None:
        self.abandon.set()
        self.stopping.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(15)
        self._channel.close()

    def pins(self) -> dict[str, str]:
        return {rid: a.pin for rid, a in self.acknowledged.items()}


def check_register(
    dsn: str, agency_id: str, acknowledged: dict[str, str], sent: set[str]
) -> dict[str, str]:
    """Check the register against what the clients were told; return it (request → PIN)."""
    db = DB(dsn)
    stored = {
        r["request_id"]: r["result_key"]
        for r in db.fetch(
            "SELECT request_id, result_key FROM idempotency_keys "
            "WHERE agency_id = $1 AND method = 'RegisterBirth'",
            agency_id,
        )
    }
    citizens = [r["pin"] for r in db.fetch("SELECT pin FROM citizens")]

    told = Counter(acknowledged.values())
    assert not [p for p, n in told.items() if n > 1], (
        f"one PIN was given for several births: {[p for p, n in told.items() if n > 1]}"
    )
    held = set(citizens)
    lost = {
        rid: (pin, stored.get(rid))
        for rid, pin in acknowledged.items()
        if stored.get(rid) != pin or pin not in held
    }
    assert not lost, (
        f"{len(lost)} acknowledged births are not in the register with the PIN the caller got "
        f"(request_id: (PIN told, PIN stored)): {dict(list(lost.items())[:10])}"
    )
    # Every citizen is the result of exactly one request, and every request of one citizen.
    assert sorted(citizens) == sorted(stored.values()), (
        f"citizens without a request: {sorted(held - set(stored.values()))[:10]}; "
        f"PINs stored for several requests: "
        f"{[p for p, n in Counter(stored.values()).items() if n > 1][:10]}"
    )
    assert set(stored) <= sent, f"births nobody asked for: {sorted(set(stored) - sent)[:10]}"

    audit = db.fetch(
        "SELECT seq, request_id, pins, outcome FROM audit_log "
        "WHERE agency_id = $1 AND method = $2 ORDER BY seq",
        agency_id,
        REGISTER_BIRTH,
    )
    audited_ok = {
        (r["request_id"], pin) for r in audit if r["outcome"] == "OK" for pin in r["pins"]
    }
    unaudited = {rid: pin for rid, pin in acknowledged.items() if (rid, pin) not in audited_ok}
    assert not unaudited, (
        f"{len(unaudited)} acknowledged births have no OK audit entry naming their PIN "
        f"(request_id: PIN): {dict(list(unaudited.items())[:10])}"
    )
    return stored


def audit_verify(dsn: str, work_dir: Path) -> str:
    """Run `registry audit verify` on dsn; it must find the chain intact."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(REGISTRY_DATABASE_URL=dsn, REGISTRY_DATA_DIR=str(work_dir))
    result = subprocess.run(
        [str(CLI), "audit", "verify"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"audit verify exit {result.returncode}: {result.stdout}"
    assert "audit log intact" in result.stdout, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def work_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="registry-faults-work-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def summary(attempts: list[Attempt]) -> dict[str, int]:
    return dict(Counter(f"{a.code.name}/{a.reason}" for a in attempts))


# -- the database crashes -----------------------------------------------------------------------


def test_database_crash_mid_load_loses_no_acknowledged_birth(work_dir: Path) -> None:
    cluster, dsn = private_database()
    server: ServerProcess | None = None
    load: BirthLoad | None = None
    try:
        agency = make_agency_factory(dsn)()
        server = ServerProcess(cluster.runtime_dsn, work_dir, "crash")
        target = server.target
        wait_for(lambda: health(target) == SERVING, 20, "SERVING at start")
        load = BirthLoad(target, agency).start()
        wait_for(lambda: len(load.acknowledged) >= 60, 30, "60 births before the crash")

        # PostgreSQL crashes (immediate stop: no checkpoint, crash recovery at the restart).
        cluster.stop("immediate")
        crashed = time.monotonic()
        assert not cluster.is_running()

        def refused_since_crash() -> int:
            return sum(1 for a in list(load.attempts) if a.started >= crashed and a.code != OK)

        wait_for(lambda: health(target) == NOT_SERVING, 15, "NOT_SERVING during the outage")
        wait_for(
            lambda: refused_since_crash() >= CLIENT_THREADS,
            15,
            "the clients to be refused during the outage",
        )
        restarting = time.monotonic()
        cluster.start()
        assert cluster.dsn == dsn, "the restarted cluster moved to another port"
        wait_for(lambda: health(target) == SERVING, 30, "SERVING again after the restart")
        serving_again = time.monotonic()
        wait_for(
            lambda: load.acknowledged_since(serving_again) >= 60,
            30,
            "60 births after the recovery",
        )
        load.finish(timeout=60)
        assert not load.errors, load.errors
        assert server.proc.poll() is None, "the server died during the outage"

        attempts = list(load.attempts)
        outage = [a for a in attempts if a.started >= crashed and a.ended <= restarting]
        retried_through = {
            a.request_id for a in attempts if a.code != OK and a.started >= crashed
        } & set(load.acknowledged)
        print(
            f"crash: {len(load.requests)} births, {len(outage)} calls during the outage, "
            f"{len(retried_through)} carried across it, "
            f"{sum(a.replayed for a in load.acknowledged.values())} answered by a replay; "
            f"answers {summary(attempts)}"
        )

        # The register: every acknowledged birth (replays included) is stored with the PIN
        # its caller got and has its OK audit entry; no PIN or request made two citizens.
        check_register(dsn, agency.id, load.pins(), set(load.requests))
        audit_verify(dsn, work_dir)

        # Only retryable refusals, ever; never INTERNAL or UNKNOWN.
        unexpected = [
            f"{a.code.name} {a.reason} {a.message!r} (sent {a.started - crashed:+.2f}s after "
            f"the crash; restart began at {restarting - crashed:+.2f}s, SERVING at "
            f"{serving_again - crashed:+.2f}s)"
            for a in attempts
            if a.code not in {OK, *RETRYABLE}
        ]
        assert not unexpected, (
            f"answers {summary(attempts)}; unexpected: {unexpected}; server errors:\n"
            + "\n".join(server.problems())
        )
        # Every request the clients sent was answered in the end, with OK.
        assert not load.unanswered, (
            f"{len(load.unanswered)} requests never answered OK: "
            f"{[(a.code.name, a.reason, a.message) for a in load.unanswered.values()][:10]}"
        )
        assert set(load.acknowledged) == set(load.requests)
        # While the database was down (calls sent after the crash and answered before the
        # restart began) the answers were only UNAVAILABLE / DEADLINE_EXCEEDED: nothing was
        # acknowledged without a database.
        assert outage, "no call was made during the outage"
        assert {a.code for a in outage} <= {UNAVAILABLE, DEADLINE_EXCEEDED}, summary(outage)
        # UNAVAILABLE from the server carries its reason and RetryInfo.
        unavailable = [a for a in attempts if a.code == UNAVAILABLE]
        assert unavailable, "the clients never saw the outage"
        assert all(
            a.reason in {"DATABASE_UNAVAILABLE", "AUDIT_UNAVAILABLE"}
            and a.retry_delay_s is not None
            and a.retry_delay_s > 0
            for a in unavailable
        ), summary(unavailable)
        # Some requests were carried across the outage by their clients' retries.
        assert retried_through, "no request was carried across the outage"
        assert not server.problems(), "server logged errors:\n" + "\n".join(server.problems())
    finally:
        if load is not None:
            load.close()
        if server is not None:
            server.kill()
        cluster.stop("immediate")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


# -- the server is stopped ----------------------------------------------------------------------


def test_sigterm_mid_load_drains_and_a_restart_completes_the_unanswered(work_dir: Path) -> None:
    cluster, dsn = private_database()
    servers: list[ServerProcess] = []
    loads: list[BirthLoad] = []
    try:
        agency = make_agency_factory(dsn)()
        first = ServerProcess(cluster.runtime_dsn, work_dir, "first")
        servers.append(first)
        wait_for(lambda: health(first.target) == SERVING, 20, "SERVING at start")
        load = BirthLoad(first.target, agency)
        loads.append(load.start())
        wait_for(lambda: len(load.acknowledged) >= 100, 30, "100 births before SIGTERM")

        # From the signal on, a client gives up on a request at its first failure (the server
        # is going away); it keeps sending new births until one fails, so some requests are
        # left without an answer.
        load.abandon.set()
        signalled = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        try:
            exit_code = first.proc.wait(DRAIN_GRACE_S + 5)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server still running {DRAIN_GRACE_S + 5:.0f}s after SIGTERM:\n{first.log()}"
            ) from None
        took = time.monotonic() - signalled
        assert exit_code == 0, f"exit {exit_code}:\n{first.log()}"
        assert took <= DRAIN_GRACE_S + 2, f"exit took {took:.1f}s, drain grace {DRAIN_GRACE_S}s"
        load.finish(timeout=30)
        assert not load.errors, load.errors

        attempts = list(load.attempts)
        assert set(load.acknowledged) | set(load.unanswered) == set(load.requests)
        before = [a for a in attempts if a.ended < signalled]
        after = [a for a in attempts if a.ended >= signalled]
        assert {a.code for a in before} <= {OK, *RETRYABLE}, summary(before)
        # Calls drained by the shutdown completed; the others were refused retryably.
        assert {a.code for a in after} <= {OK, UNAVAILABLE, CANCELLED}, summary(after)
        assert load.unanswered, "no request was left unanswered by the shutdown"
        # Every birth the server completed reached its caller (nothing cut off by the drain).
        served_ok = [
            r
            for r in first.records()
            if r.get("logger") == "registry.access"
            and r.get("method") == REGISTER_BIRTH
            and r.get("status") == "OK"
        ]
        answered_ok = [a for a in attempts if a.code == OK]
        assert len(served_ok) == len(answered_ok), (len(served_ok), len(answered_ok))

        sent = set(load.requests)
        stored = check_register(dsn, agency.id, load.pins(), sent)
        audit_verify(dsn, work_dir)
        assert not first.problems(), "server logged errors:\n" + "\n".join(first.problems())

        # A new server on the same database serves, and the unanswered requests sent again
        # replay what was committed or register the birth now, once.
        committed = {rid: stored[rid] for rid in load.unanswered if rid in stored}
        print(
            f"sigterm: {len(sent)} births, {len(load.unanswered)} unanswered at shutdown "
            f"({len(committed)} of them committed); answers {summary(attempts)}; "
            f"exit after {took:.1f}s"
        )
        second = ServerProcess(cluster.runtime_dsn, work_dir, "second")
        servers.append(second)
        wait_for(lambda: health(second.target) == SERVING, 20, "SERVING after the restart")
        retry = BirthLoad(second.target, agency, threads=0, give_up_s=20.0)
        loads.append(retry)
        for rid in sorted(load.unanswered):
            assert retry.carry_out(load.requests[rid]), (
                f"retry of {rid} not answered OK: {retry.unanswered.get(rid)}"
            )
        wrong: list[str] = []
        for rid, answer in retry.acknowledged.items():
            if rid in committed and not (answer.replayed and answer.pin == committed[rid]):
                wrong.append(f"{rid}: committed as {committed[rid]}, retry gave {answer}")
            if rid not in committed and answer.replayed:
                wrong.append(f"{rid}: never committed, yet the retry was a replay: {answer}")
        assert not wrong, wrong
        all_pins = {**load.pins(), **retry.pins()}
        assert len(all_pins) == len(sent)
        stored_after = check_register(dsn, agency.id, all_pins, sent)
        assert stored_after == all_pins, "every request sent is now exactly one citizen"
        audit_verify(dsn, work_dir)

        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(DRAIN_GRACE_S + 5) == 0, second.log()
        assert not second.problems(), "server logged errors:\n" + "\n".join(second.problems())
    finally:
        for each in loads:
            each.close()
        for server in servers:
            server.kill()
        cluster.stop("immediate")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
