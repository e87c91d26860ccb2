"""SQL of the audit log (migrations/0004_audit.sql): append a group, read a citizen's history,
walk the chain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from registry.rules.audit import Entry, link

# One statement, one round trip: move the head from the link this writer last saw to the new
# last link and, only if that worked, insert the entries. If another server process appended
# meanwhile, the UPDATE (after waiting for that process's commit) finds no row at the old
# link, nothing is inserted, and the writer re-reads the head and chains again.
_APPEND = """
WITH moved AS (
    UPDATE audit_head SET seq = $10, hash = $11
    WHERE seq = $12 AND hash = $13
    RETURNING 1
)
INSERT INTO audit_log (seq, time, agency_id, method, pins, outcome, purpose, request_id, hash)
SELECT s, t, a, m, string_to_array(p, ' '), o, pu, r, h
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::bytea[]) AS u(s, t, a, m, p, o, pu, r, h)
WHERE EXISTS (SELECT 1 FROM moved)
"""


async def append(
    conn: asyncpg.Connection, entries: Sequence[Entry], last: tuple[int, bytes] | None
) -> tuple[int, bytes]:
    """Append entries to the chain durably; return the new last link (position, hash).

    `last` is the last link this writer knows (None: read it). The statement commits on its
    own with synchronous_commit on, so when this returns every entry is on disk.
    """
    while True:
        if last is None:
            last = await head(conn)
        seq, previous = last
        columns: tuple[list[object], ...] = ([], [], [], [], [], [], [], [], [])
        for entry in entries:
            seq += 1
            previous = link(previous, seq, entry)
            for column, value in zip(
                columns,
                (
                    seq,
                    entry.time,
                    entry.agency_id,
                    entry.method,
                    " ".join(entry.pins),
                    entry.outcome,
                    entry.purpose,
                    entry.request_id,
                    previous,
                ),
                strict=True,
            ):
                column.append(value)
        status = await conn.execute(_APPEND, *columns, seq, previous, last[0], last[1])
        if status == f"INSERT 0 {len(entries)}":
            return seq, previous
        last = None  # another process appended: chain onto its head


@dataclass(frozen=True)
class HistoryItem:
    """One entry of a citizen's access history, with the agency's registered name."""

    seq: int
    time: datetime
    agency_id: str
    agency_name: str
    method: str
    purpose: str
    outcome: str
    confidential: bool
    """The agency is registered as confidential (SPEC §6)."""


async def history(
    pool: asyncpg.Pool, pin: str, before_seq: int | None, limit: int
) -> list[HistoryItem]:
    """Return up to `limit` entries naming `pin`, newest first, older than `before_seq`."""
    rows = await pool.fetch(
        "SELECT l.seq, l.time, l.agency_id, coalesce(a.name, '') AS agency_name, l.method, "
        "l.purpose, l.outcome, coalesce(a.confidential, false) AS confidential "
        "FROM audit_log l LEFT JOIN agencies a ON a.id = l.agency_id "
        "WHERE l.pins @> ARRAY[$1::text] AND ($2::bigint IS NULL OR l.seq < $2) "
        "ORDER BY l.seq DESC LIMIT $3",
        pin,
        before_seq,
        limit,
    )
    return [HistoryItem(**dict(r)) for r in rows]


async def head(conn: asyncpg.Connection) -> tuple[int, bytes]:
    """Return the chain's recorded last link (position, hash)."""
    row = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    return row["seq"], row["hash"]


async def entries(
    conn: asyncpg.Connection, prefetch: int = 10_000
) -> AsyncIterator[tuple[int, Entry, bytes]]:
    """Yield every entry in chain order (needs an open transaction for the cursor)."""
    async for r in conn.cursor(
        "SELECT seq, time, agency_id, method, pins, outcome, purpose, request_id, hash "
        "FROM audit_log ORDER BY seq",
        prefetch=prefetch,
    ):
        yield (
            r["seq"],
            Entry(
                r["time"],
                r["agency_id"],
                r["method"],
                tuple(r["pins"]),
                r["outcome"],
                r["purpose"],
                r["request_id"],
            ),
            r["hash"],
        )


# -- signed checkpoints (migrations/0013_audit_checkpoints.sql) ---------------------------------

# Held for one checkpointing transaction: one signer at a time among the server processes
# sharing the database (the primary key on seq would also refuse a second row for a head).
_CHECKPOINT_LOCK = 7_217_420_250_013


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint row, as stored (its signature not yet checked)."""

    seq: int
    head_hash: bytes
    time: datetime
    jws: str


async def lock_checkpointing(conn: asyncpg.Connection) -> bool:
    """Take the checkpoint signer's lock for this transaction; False when another holds it."""
    taken: bool = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _CHECKPOINT_LOCK)
    return taken


async def latest_checkpoints(conn: asyncpg.Connection, limit: int) -> list[StoredCheckpoint]:
    """Return up to `limit` checkpoints, highest position first."""
    rows = await conn.fetch(
        "SELECT seq, head_hash, time, jws FROM audit_checkpoints ORDER BY seq DESC LIMIT $1",
        limit,
    )
    return [StoredCheckpoint(**dict(r)) for r in rows]


async def checkpoint_tokens(conn: asyncpg.Connection) -> list[str]:
    """Return every stored checkpoint's JWS, by position."""
    return [r["jws"] for r in await conn.fetch("SELECT jws FROM audit_checkpoints ORDER BY seq")]


async def hash_at(conn: asyncpg.Connection, seq: int) -> bytes | None:
    """Return the stored hash of entry `seq`, or None when there is no such entry."""
    found: bytes | None = await conn.fetchval("SELECT hash FROM audit_log WHERE seq = $1", seq)
    return found


async def add_checkpoint(
    conn: asyncpg.Connection, seq: int, head_hash: bytes, time: datetime, jws: str
) -> bool:
    """Store a signed checkpoint; False when one for this position exists already."""
    status = await conn.execute(
        "INSERT INTO audit_checkpoints (seq, head_hash, time, jws) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT ON CONSTRAINT audit_checkpoints_pkey DO NOTHING",
        seq,
        head_hash,
        time,
        jws,
    )
    return bool(status == "INSERT 0 1")
