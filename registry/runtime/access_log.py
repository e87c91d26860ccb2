"""The access log: one JSON line per call (agency, method, status, reason, latency).

Operational, not evidentiary (the audit log is the record of who touched whose data): lines
are built cheaply and written to stderr in batches every `interval_s`, not one write per call,
because at thousands of calls a second the logging machinery itself was a tenth of the cost of
a verification. Nothing here ever carries a token, a name or a record; PINs are not logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from typing import TextIO

LOGGER = "registry.access"


class AccessLog:
    """Collects access lines and writes them in batches."""

    def __init__(
        self, stream: TextIO | None = None, interval_s: float = 0.2, worker: int | None = None
    ):
        self._stream = stream
        # Which worker process of a supervisor served the call (registry.supervisor).
        self._worker = "" if worker is None else f'"worker": {worker}, '

        self._interval_s = interval_s
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self._task: asyncio.Task[None] | None = None
        self._logger = logging.getLogger(LOGGER)

    @property
    def enabled(self) -> bool:
        """Tell whether access lines are wanted (the registry.access logger at INFO)."""
        return self._logger.isEnabledFor(logging.INFO)

    def record(self, agency: str, method: str, status: str, reason: str, latency_ms: float) -> None:
        """Queue one line; values are ASCII identifiers, so only agency needs JSON quoting."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._lines.append(
            f'{{"time": "{self._stamp}.{int(now * 1000) % 1000:03d}+00:00", "level": "INFO", '
            f'"logger": "{LOGGER}", "msg": "rpc", {self._worker}"agency": {json.dumps(agency)}, '
            f'"method": "{method}", "status": "{status}", "reason": "{reason}", '
            f'"latency_ms": {latency_ms:.2f}}}'
        )

    def flush(self) -> None:
        """Write the queued lines."""
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        stream = self._stream or sys.stderr
        stream.write("\n".join(lines) + "\n")
        stream.flush()

    def start(self) -> None:
        """Flush periodically in the background."""
        self._task = asyncio.create_task(self._run(), name="access-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.flush()

    async def close(self) -> None:
        """Stop the background flush and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
