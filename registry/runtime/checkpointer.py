"""Signs checkpoints of the audit chain while the server runs (SPEC §7, runtime.checkpoints).

Every `interval_s` (10 s at most) the checkpointer looks at the chain's head; when it moved
since the latest checkpoint it signs the new head, stores the checkpoint in audit_checkpoints,
then appends it to the checkpoint file in the data directory (fsync'd). Nothing is signed while
the log is quiet. `close` signs a last one after the server drained, so the final entries of a
run are covered too.

Several server processes may share the database: each runs a checkpointer, and an advisory lock
held for the checkpointing transaction lets one sign at a time; the others find the head
already covered. Each process appends to the file only what it signed itself.

Before signing, the checkpointer checks that the chain still passes through the latest valid
checkpoint (same hash stored at its position, head not behind it). If not, someone rewrote the
log below it: the checkpointer logs an error and refuses to sign, so the registry never blesses
a rewritten history; `registry audit verify` names the checkpoint that no longer holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import asyncpg

from registry.db import audit as audit_db
from registry.db.pool import Database, is_unavailable
from registry.runtime import checkpoints, clock
from registry.runtime.attestation import SigningKeys
from registry.runtime.checkpoints import Checkpoint, CheckpointInvalid

log = logging.getLogger(__name__)

# Rows read back to find the latest valid checkpoint past any forged ones stacked on top.
_LOOK_BACK = 16


class Checkpointer:
    """Signs the audit chain's head periodically and at shutdown; knows the latest checkpoint."""

    def __init__(self, db: Database, keys: SigningKeys, path: Path, interval_s: float):
        self._db = db
        self._keys = keys
        self._path = path
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._latest: Checkpoint | None = None
        self._reported: set[str] = set()  # forged rows already logged, by JWS
        self.signed = 0

    def start(self) -> None:
        """Start signing periodically."""
        self._task = asyncio.create_task(self._run(), name="audit-checkpoints")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._checkpoint_logged()

    async def _checkpoint_logged(self) -> None:
        try:
            await self.checkpoint()
        except Exception as exc:
            if is_unavailable(exc):
                log.warning("audit checkpoint not signed: database %s", type(exc).__name__)
            else:
                log.error("audit checkpoint not signed", exc_info=exc)

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the head if it moved since the latest checkpoint; return what was signed."""
        async with self._db.pool.acquire() as conn, conn.transaction():
            if not await audit_db.lock_checkpointing(conn):
                return None  # another process is signing right now
            seq, head = await audit_db.head(conn)
            latest = self._latest_valid(await audit_db.latest_checkpoints(conn, _LOOK_BACK))
            if latest is not None:
                if seq < latest.seq:
                    log.error(
                        "audit log cut below %s: its head is entry %d; not signing",
                        latest.describe(),
                        seq,
                    )
                    return None
                if seq == latest.seq and head == latest.head_hash:
                    return None
                if await audit_db.hash_at(conn, latest.seq) != latest.head_hash:
                    log.error(
                        "audit log rewritten below %s (the entry's hash differs); not signing",
                        latest.describe(),
                    )
                    return None
            if seq == 0:
                return None
            signed = checkpoints.sign(self._keys, seq, head, clock.now())
            if not await audit_db.add_checkpoint(conn, seq, head, signed.time, signed.jws):
                # A row nobody could validly have written (or one a forger put there first):
                # the file and the RPC still get the genuine checkpoint.
                log.error("audit checkpoint for entry %d already stored, and not valid", seq)
        await asyncio.to_thread(checkpoints.append_to_file, self._path, signed.jws)
        self._latest = signed
        self.signed += 1
        return signed

    async def latest(self) -> Checkpoint | None:
        """Return the latest valid checkpoint (any process's), or None when none was signed."""
        conn: asyncpg.Connection
        async with self._db.pool.acquire() as conn:
            rows = await audit_db.latest_checkpoints(conn, _LOOK_BACK)
        return self._latest_valid(rows)

    def _latest_valid(self, rows: list[audit_db.StoredCheckpoint]) -> Checkpoint | None:
        for row in rows:
            if self._latest is not None and row.jws == self._latest.jws:
                return self._latest
            try:
                found = checkpoints.decode(row.jws, self._keys.public_keys())
            except CheckpointInvalid as exc:
                if row.jws not in self._reported:
                    self._reported.add(row.jws)
                    log.error("audit_checkpoints row at entry %d is not genuine: %s", row.seq, exc)
                continue
            if (found.seq, found.head_hash) != (row.seq, row.head_hash):
                continue  # a genuine JWS under another row's columns
            if self._latest is None or found.seq >= self._latest.seq:
                self._latest = found
            return found
        return None

    async def close(self) -> None:
        """Stop the timer and sign a last checkpoint (after the audit writer drained)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(10):
                await self._checkpoint_logged()
        except TimeoutError:
            log.warning("audit checkpoint at shutdown not signed: the database did not answer")
        log.info("audit checkpoints: %d signed", self.signed)
