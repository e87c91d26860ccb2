"""The supervisor of `registry serve` with REGISTRY_WORKERS > 1: N server processes, one port.

One Python process serves from one core (births cost ~1 ms of server CPU each). The
supervisor starts REGISTRY_WORKERS worker processes that each run the ordinary server with
`grpc.so_reuseport`, bound to the same port: the kernel spreads incoming connections over
them (a client's channel is one connection, so a client spreads its load by opening several).

The workers are fresh interpreters (subprocess, vfork + exec), never forks of this process:
gRPC and asyncpg threads do not survive a fork, and this process imports neither gRPC nor
keeps a database connection open while workers run. Everything that must happen once happens
here, before any worker starts: the migrations, the role check, the PIN secret and the first
signing key (two workers creating them at once would race).

A port of 0 cannot be shared (each worker would get its own), so the supervisor binds the
port first with SO_REUSEPORT and keeps that socket bound (never listening, so it receives no
connections) for its whole life: the port stays ours while a crashed worker restarts, and the
workers bind it beside that socket.

A worker that exits unasked is restarted after a backoff (0.5 s doubling to 30 s, back to
0.5 s once a worker has run a minute). SIGTERM or SIGINT is passed to every worker, which
drains as a lone server does (health NOT_SERVING, in-flight calls finish within the grace),
and the supervisor exits when all have. A worker whose supervisor died sees its stdin close
and drains too. stdout says "registry listening on HOST:PORT" once, when every worker serves.

What the workers are doing is kept in <data dir>/workers.json (rewritten atomically on every
start, readiness and exit; removed when the supervisor has drained): `registry status` reads
it to list the workers, their process ids, whether each serves and how often it restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.config import Settings

log = logging.getLogger(__name__)

READY_PREFIX = "registry listening on "
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# A worker that ran this long before exiting was healthy: its restart backoff starts over.
STABLE_AFTER_S = 60.0
# Beyond the drain grace, how long a worker may take to close its pools and exit.
EXIT_MARGIN_S = 15.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
_WORKER_MAIN = "import sys; from registry.cli import main; sys.exit(main(['serve']))"
STATE_FILE = "workers.json"


class SupervisorError(RuntimeError):
    """The workers could not be started; the message says why."""


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) host:port with SO_REUSEPORT; return the socket and the bound port."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock, int(sock.getsockname()[1])


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    failures: int = 0
    ready: asyncio.Future[None] = field(default_factory=asyncio.Future)
    serving: bool = False
    restarts: int = 0
    since: float = 0.0
    """When the current process started (epoch seconds)."""


class Supervisor:
    """Start, restart and drain the worker processes of one server."""

    def __init__(self, settings: Settings, dsn: str, port: int):
        self._settings = settings
        self._dsn = dsn
        self._port = port
        self._stopping = asyncio.Event()
        self._workers = [_Worker(i) for i in range(settings.workers)]
        self.restarts = 0
        self._state = settings.data_dir / STATE_FILE
        self._started = time.time()

    def _write_state(self) -> None:
        """Publish the workers' state for `registry status` (write, then rename: atomic)."""
        state = {
            "supervisor_pid": os.getpid(),
            "port": self._port,
            "started": self._started,
            "updated": time.time(),
            "workers": [
                {
                    "index": w.index,
                    "pid": w.process.pid if w.process is not None else None,
                    "serving": w.serving,
                    "restarts": w.restarts,
                    "since": w.since,
                }
                for w in self._workers
            ],
        }
        try:
            self._state.parent.mkdir(parents=True, exist_ok=True)
            partial = self._state.with_name(f".{STATE_FILE}.{os.getpid()}")
            partial.write_text(json.dumps(state))
            partial.replace(self._state)
        except OSError as exc:  # status loses a line; serving goes on
            log.warning("cannot write %s: %s", self._state, exc.strerror)

    def _env(self, index: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "REGISTRY_OWNER_DATABASE_URL"}
        path = env.get("PYTHONPATH")
        env.update(
            REGISTRY_DATABASE_URL=self._dsn,
            REGISTRY_LISTEN=f"{self._settings.listen_host}:{self._port}",
            REGISTRY_WORKERS=str(self._settings.workers),
            REGISTRY_WORKER_INDEX=str(index),
            # The workers run the code of this checkout, wherever they are started from.
            PYTHONPATH=f"{_PACKAGE_ROOT}{os.pathsep}{path}" if path else _PACKAGE_ROOT,
        )
        return env

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; raise SupervisorError if the workers cannot start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        keepers = [
            asyncio.create_task(self._keep(w), name=f"worker-{w.index}") for w in self._workers
        ]
        try:
            started: asyncio.Future[Any] = asyncio.gather(*(w.ready for w in self._workers))
            stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({started, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if started.done():
                started.result()  # raises if a worker died before serving
                host = self._settings.listen_host
                print(f"{READY_PREFIX}{host}:{self._port}", flush=True)
                log.info("supervising %d workers on port %d", len(self._workers), self._port)
                await self._stopping.wait()
            else:
                started.cancel()
        finally:
            self._stopping.set()
            await self._drain(keepers)
            with contextlib.suppress(OSError):
                self._state.unlink()

    async def _drain(self, keepers: list[asyncio.Task[None]]) -> None:
        log.info("stopping: draining %d workers", len(self._workers))
        for worker in self._workers:
            _signal(worker, signal.SIGTERM)
        deadline = self._settings.shutdown_grace_s + EXIT_MARGIN_S
        _, late = await asyncio.wait(keepers, timeout=deadline)
        for worker in self._workers:
            _signal(worker, signal.SIGKILL)
        if late:
            log.error("%d workers did not exit within %.0f s: killed", len(late), deadline)
            await asyncio.wait(late, timeout=5)

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker, restarting it after a backoff until the supervisor stops."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            code = await self._run_once(worker)
            if self._stopping.is_set():
                return
            if not worker.ready.done():
                worker.ready.set_exception(
                    SupervisorError(f"worker {worker.index} exited with {code} before serving")
                )
                return
            worker.failures = 0 if loop.time() - started >= STABLE_AFTER_S else worker.failures
            delay = min(BACKOFF_FIRST_S * 2**worker.failures, BACKOFF_MAX_S)
            worker.failures += 1
            log.error("worker %d exited with %s; restarting in %.1f s", worker.index, code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            self.restarts += 1
            worker.restarts += 1

    async def _run_once(self, worker: _Worker) -> int | None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER_MAIN,
            env=self._env(worker.index),
            stdin=asyncio.subprocess.PIPE,  # closes when we die: the worker then drains
            stdout=asyncio.subprocess.PIPE,
        )
        worker.process = process
        worker.since = time.time()
        self._write_state()
        if self._stopping.is_set():  # a stop arrived while it was starting
            _signal(worker, signal.SIGTERM)
        assert process.stdout is not None
        async for raw in process.stdout:
            if raw.decode(errors="replace").startswith(READY_PREFIX):
                worker.serving = True
                self._write_state()
                if not worker.ready.done():
                    worker.ready.set_result(None)
        code = await process.wait()
        worker.process = None
        worker.serving = False
        self._write_state()
        return code


def _signal(worker: _Worker, sig: signal.Signals) -> None:
    if worker.process is not None and worker.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(sig)


async def supervise(settings: Settings, dsn: str) -> None:
    """Serve with settings.workers processes on one port until SIGTERM/SIGINT."""
    try:
        reserved, port = reserve_port(settings.listen_host, settings.listen_port)
    except OSError as exc:
        raise SupervisorError(f"cannot bind {settings.listen}: {exc.strerror}") from None
    try:
        await Supervisor(settings, dsn, port).run()
    finally:
        reserved.close()
