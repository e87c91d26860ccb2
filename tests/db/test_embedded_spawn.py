"""The embedded cluster is started and stopped without fork-without-exec (issue 11).

subprocess's user=/group=/extra_groups=/preexec_fn=/umask= make CPython fork() and run code in
the child before exec; in a process with gRPC or asyncpg threads (the server, the test process)
the child then crashed at random (SIGSEGV in pg_ctl's child, "Fatal Python error: Bus error").
The account switch is now done by setpriv(1) after a vfork, so the child only execs.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import shutil
import threading
from pathlib import Path

import asyncpg
import grpc

from registry.embedded import EmbeddedCluster
from registry.v1 import identity_service_pb2
from tests.conftest import new_cluster

ROOT = Path(__file__).resolve().parents[2]
# Keyword arguments of subprocess that force fork() + Python code in the child (no vfork).
_FORKING_KWARGS = {"user", "group", "extra_groups", "preexec_fn", "umask"}


def _subprocess_calls_with_forking_kwargs() -> list[str]:
    found: list[str] = []
    for folder in ("registry", "tests", "bench", "clients", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "/v1/" in str(path) or "node_modules" in str(path):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                names = {kw.arg for kw in node.keywords if kw.arg}
                # A **kwargs spread could smuggle them in: refuse it on subprocess calls too.
                spread = any(kw.arg is None for kw in node.keywords)
                func = ast.unparse(node.func)
                is_spawn = "subprocess" in func or func.endswith(("Popen", "run", "check_output"))
                if is_spawn and (names & _FORKING_KWARGS or (spread and "subprocess" in func)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {func}")
    return found


def test_no_subprocess_call_forks_without_exec():
    assert _subprocess_calls_with_forking_kwargs() == []


def test_cluster_commands_run_as_the_unprivileged_account_through_setpriv(tmp_path):
    cluster = EmbeddedCluster(tmp_path)
    argv = cluster._as_run_user(["pg_ctl", "status"])
    if os.geteuid() == 0:
        user = cluster._user
        assert user is not None
        assert argv[0].endswith("setpriv")
        assert f"--reuid={user.pw_uid}" in argv and f"--regid={user.pw_gid}" in argv
        assert "--clear-groups" in argv and argv[-2:] == ["pg_ctl", "status"]
    else:
        assert argv == ["pg_ctl", "status"]


def test_cluster_stop_and_start_survive_busy_grpc_and_asyncpg_threads(server, agency):
    """Crash and restart a cluster many times while this process has gRPC calls in flight on
    several channels and an asyncpg pool busy on another loop: the situation in which the
    full suite's fault test crashed its pg_ctl children."""
    cluster = new_cluster("registry-spawn-")
    stop = threading.Event()
    errors: list[BaseException] = []

    def grpc_load() -> None:
        from registry.v1 import identity_service_pb2_grpc

        channels = [grpc.insecure_channel(server.target) for _ in range(3)]
        try:
            stubs = [identity_service_pb2_grpc.IdentityServiceStub(c) for c in channels]
            md = agency.metadata()
            while not stop.is_set():
                for stub in stubs:
                    stub.VerifyIdentity.future(
                        identity_service_pb2.VerifyIdentityRequest(pin="001090000001"),
                        metadata=md,
                        timeout=5,
                    )
                    with contextlib.suppress(grpc.RpcError):
                        stub.VerifyIdentity(
                            identity_service_pb2.VerifyIdentityRequest(pin="001090000002"),
                            metadata=md,
                            timeout=5,
                        )
        finally:
            for c in channels:
                c.close()

    def pool_load() -> None:
        async def go() -> None:
            pool = await asyncpg.create_pool(server.dsn, min_size=2, max_size=4)
            try:
                while not stop.is_set():
                    await asyncio.gather(
                        *(pool.fetchval("SELECT pg_sleep(0.001)") for _ in range(4))
                    )
            finally:
                await pool.close()

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=grpc_load), threading.Thread(target=pool_load)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            for _ in range(10):
                assert cluster.is_running()
            cluster.stop("immediate")
            assert not cluster.is_running()
            cluster.start()
        assert cluster.is_running()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        cluster.stop("immediate")
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
    assert errors == []
