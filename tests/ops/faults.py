"""Helpers for the fault tests: private clusters, `python server.py` processes, a birth load of
several client threads retrying as a civil status system does, and its checks.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from registry.db.migrate import migrate
from registry.embedded import EmbeddedCluster
from registry.v1 import civil_registration_service_pb2 as civil_pb
from registry.v1 import civil_registration_service_pb2_grpc
from tests.conftest import DB, new_cluster, run
from tests.helpers import birth_request, decode

if TYPE_CHECKING:
    from tests.conftest import TestAgency


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


def summary(attempts: list[Attempt]) -> dict[str, int]:
    return dict(Counter(f"{a.code.name}/{a.reason}" for a in attempts))
