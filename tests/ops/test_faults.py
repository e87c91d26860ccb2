"""Faults under load: PostgreSQL crashes in the middle of births.

Each test runs on its own cluster and its own `python server.py` process (never the session
database), drives it with several client threads that register births the way a real civil
status system does (tests/ops/faults.py), and checks that no acknowledged birth is lost.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import make_agency_factory
from tests.ops.faults import (
    CLIENT_THREADS,
    DEADLINE_EXCEEDED,
    NOT_SERVING,
    OK,
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
