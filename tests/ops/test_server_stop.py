"""Faults under load: the server is stopped (SIGTERM) in the middle of births; it drains, and a
restart completes what was left unanswered.

Each test runs on its own cluster and its own `python server.py` process (never the session
database), driven as in test_faults.py (tests/ops/faults.py).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import make_agency_factory
from tests.ops.faults import (
    CANCELLED,
    DRAIN_GRACE_S,
    OK,
    REGISTER_BIRTH,
    RETRYABLE,
    SERVING,
    UNAVAILABLE,
    BirthLoad,
    ServerProcess,
    audit_verify,
    check_register,
    health,
    private_database,
    summary,
    wait_for,
)

pytestmark = pytest.mark.slow


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
