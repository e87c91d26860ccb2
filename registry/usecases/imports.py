"""Import runs (ImportCitizens, `registry import`): batches written while the next are validated.

The rules of a record are in rules/imports.py, its SQL in db/imports.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from registry.rules.imports import BATCH, ImportRecord


class BatchPipeline:
    """Gathers valid records into batches of BATCH and has `write` store each, one batch at a
    time and in order (parents before their children), while the caller goes on reading and
    validating the next: the database's work and ours overlap.

    Call `finish()` after the last record, and `close()` in any case (it stops a write still
    running when the import is abandoned). A failed write raises from the next `add()` or
    from `finish()`.
    """

    def __init__(self, write: Callable[[list[ImportRecord]], Coroutine[Any, Any, None]]):
        self._write = write
        self._batch: list[ImportRecord] = []
        self._writing: asyncio.Task[None] | None = None

    async def add(self, record: ImportRecord) -> None:
        self._batch.append(record)
        if len(self._batch) % 50 == 0:
            # A caller reading a file never waits otherwise; the writer needs the loop to
            # exchange its statements with the database.
            await asyncio.sleep(0)
        if len(self._batch) >= BATCH:
            await self._hand_over()

    async def finish(self) -> None:
        """Write what is left and wait until every batch is stored."""
        if self._batch:
            await self._hand_over()
        if self._writing is not None:
            await self._writing

    async def close(self) -> None:
        if self._writing is not None and not self._writing.done():
            self._writing.cancel()
            with contextlib.suppress(BaseException):
                await self._writing

    async def _hand_over(self) -> None:
        if self._writing is not None:
            await self._writing  # one batch in flight at a time
        self._writing = asyncio.create_task(self._write(self._batch))
        self._batch = []
