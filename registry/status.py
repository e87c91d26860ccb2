"""`registry status`: the first command an operator runs — is anything wrong, and where.

Gathers, without changing anything: the server's gRPC health, its worker processes, the schema
version, the audit log's head and the age of its last entry, the change feed's head and lag,
agencies, the fullest PIN bucket and the read replicas. Each finding carries a verdict (ok /
warn / fail); the command exits 1 when any check fails.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from registry.config import Settings
from registry.db.migrate import load_migrations
from registry.rules.pin import BUCKET_SIZE

# Thresholds of the verdicts, with why.
FEED_LAG_WARN_S = 5.0  # the sequencer numbers events at least every second
BUCKET_FILL_WARN = 0.9  # births into a full bucket are refused: plan a new prefix before then
CHECKPOINT_STALE_S = 60.0  # servers sign every <= 10 s while entries are written


@dataclass
class Finding:
    """One line of the status: what was checked, what was found, and the verdict."""

    name: str
    verdict: str  # "ok" | "warn" | "fail"
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def server_health(settings: Settings, timeout_s: float = 2.0) -> Finding:
    """Ask the server at REGISTRY_LISTEN for its overall health (grpc.health.v1)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "::", "") else settings.listen_host
    target = f"{host}:{settings.listen_port}"
    if settings.listen_port == 0:
        return Finding("server", "warn", "REGISTRY_LISTEN has port 0: no fixed address to ask")
    if settings.tls_enabled:
        assert settings.tls_cert is not None
        credentials = grpc.ssl_channel_credentials(root_certificates=settings.tls_cert.read_bytes())
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout_s
        )
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    except grpc.RpcError as exc:
        return Finding("server", "fail", f"{target} does not answer ({exc.code().name})")
    finally:
        channel.close()
    verdict = "ok" if name == "SERVING" else "fail"
    return Finding("server", verdict, f"{target} {name}", {"target": target, "health": name})


async def database(conn: asyncpg.Connection) -> list[Finding]:
    """Check the schema, the audit log, the change feed, agencies and PIN buckets."""
    found: list[Finding] = []
    known = load_migrations()
    applied: set[int] = set()
    if await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL"):
        applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    pending = [m for m in known if m.version not in applied]
    latest = max(applied, default=0)
    found.append(
        Finding(
            "schema",
            "fail" if pending else "ok",
            f"version {latest:04d}"
            + (f", {len(pending)} migration(s) pending: run `registry migrate`" if pending else ""),
            {"version": latest, "pending": [m.version for m in pending]},
        )
    )
    if len(pending) == len(known):
        return found  # not a registry database yet: nothing else to look at
    row = await conn.fetchrow(
        "SELECT h.seq, h.hash, (SELECT time FROM audit_log WHERE seq = h.seq) AS time "
        "FROM audit_head h"
    )
    age = None if row["time"] is None else time.time() - row["time"].timestamp()
    found.append(
        Finding(
            "audit",
            "ok",
            f"head entry {row['seq']:,}"
            + ("" if age is None else f", last entry {age:,.0f} s ago")
            + " (`registry audit verify` walks the chain)",
            {
                "head_seq": row["seq"],
                "head_hash": bytes(row["hash"]).hex(),
                "last_entry_age_s": age,
            },
        )
    )
    checkpoint = await conn.fetchrow(
        "SELECT seq, extract(epoch FROM clock_timestamp() - time)::float8 AS age "
        "FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
    )
    behind = row["seq"] - (checkpoint["seq"] if checkpoint else 0)
    if checkpoint is None:
        verdict, text = ("warn" if behind else "ok"), "none signed yet"
    else:
        # Signed at least every 10 s while entries are written (SPEC §7).
        stale = behind > 0 and checkpoint["age"] > CHECKPOINT_STALE_S
        verdict = "warn" if stale else "ok"
        text = f"at entry {checkpoint['seq']:,}, signed {checkpoint['age']:,.0f} s ago"
    found.append(
        Finding(
            "checkpoint",
            verdict,
            text + (f", {behind:,} entries since" if behind else ""),
            {
                "seq": checkpoint["seq"] if checkpoint else None,
                "age_s": checkpoint["age"] if checkpoint else None,
                "entries_since": behind,
            },
        )
    )
    feed = await conn.fetchrow(
        "SELECT (SELECT max(sequence) FROM change_events) AS head, "
        "(SELECT count(*) FROM change_events WHERE sequence IS NULL) AS waiting, "
        "(SELECT coalesce(extract(epoch FROM clock_timestamp() - min(time)), 0)::float8 "
        " FROM change_events WHERE sequence IS NULL) AS lag"
    )
    lag = float(feed["lag"])
    found.append(
        Finding(
            "change feed",
            "warn" if lag > FEED_LAG_WARN_S else "ok",
            f"head sequence {feed['head'] or 0:,}, {feed['waiting']:,} event(s) waiting, "
            f"lag {lag:.1f} s",
            {"head_sequence": feed["head"] or 0, "waiting": feed["waiting"], "lag_s": lag},
        )
    )
    agency = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE enabled) AS enabled, "
        "count(*) FILTER (WHERE NOT enabled) AS disabled FROM agencies"
    )
    found.append(
        Finding(
            "agencies",
            "ok" if agency["enabled"] else "warn",
            f"{agency['enabled']} enabled, {agency['disabled']} disabled",
            dict(agency),
        )
    )
    bucket = await conn.fetchrow(
        "SELECT province_code, g, yy, issued FROM pin_buckets ORDER BY issued DESC LIMIT 1"
    )
    if bucket is None:
        found.append(Finding("pin buckets", "ok", "none used yet"))
    else:
        fill = bucket["issued"] / BUCKET_SIZE
        name = f"{bucket['province_code']}-{bucket['g']}-{bucket['yy']:02d}"
        found.append(
            Finding(
                "pin buckets",
                "warn" if fill >= BUCKET_FILL_WARN else "ok",
                f"fullest {name} at {fill:.1%}",
                {"fullest": name, "fill": fill},
            )
        )
    return found


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def workers(settings: Settings) -> Finding:
    """The worker processes of the supervisor serving from this data directory (the state it
    keeps in workers.json): each one's pid, whether it serves, and its restarts."""
    from registry.supervisor import STATE_FILE  # no grpc, no asyncio work at import

    path = settings.data_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return Finding("workers", "ok", f"no supervisor here ({path} absent): one process serves")
    except (OSError, ValueError) as exc:
        return Finding("workers", "warn", f"{path} unreadable ({type(exc).__name__})")
    supervisor = state.get("supervisor_pid")
    if not _alive(supervisor):
        return Finding(
            "workers", "warn", f"stale {path}: its supervisor (pid {supervisor}) is not running"
        )
    listed = state.get("workers", [])
    serving = [w for w in listed if w.get("serving") and _alive(w.get("pid"))]
    restarts = sum(int(w.get("restarts", 0)) for w in listed)
    pids = ", ".join(str(w.get("pid")) for w in listed)
    summary = (
        f"{len(serving)} of {len(listed)} serving on port {state.get('port')} "
        f"(supervisor {supervisor}, workers {pids}), {restarts} restarts"
    )
    details = {"supervisor_pid": supervisor, "port": state.get("port"), "workers": listed}
    return Finding("workers", "ok" if len(serving) == len(listed) else "warn", summary, details)


def _where(dsn: str) -> str:
    """host:port/database of a DSN: never its user or password."""
    rest = dsn.split("@", 1)[-1]
    return rest.split("?", 1)[0]


async def replicas(
    primary: asyncpg.Connection, urls: tuple[str, ...], max_lag_s: float
) -> list[Finding]:
    """Check each configured read replica: reachable, still a standby, and its replay lag."""
    found: list[Finding] = []
    primary_lsn = await primary.fetchval("SELECT pg_current_wal_lsn()::text")
    for url in urls:
        name = f"replica {_where(url)}"
        try:
            conn = await asyncpg.connect(url, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            found.append(
                Finding(name, "warn", f"unreachable ({type(exc).__name__}): reads use the primary")
            )
            continue
        try:
            row = await conn.fetchrow(
                "SELECT pg_is_in_recovery() AS standby, "
                "pg_last_wal_replay_lsn()::text AS replayed, "
                "coalesce(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()),"
                " 0)::float8 AS since_last"
            )
        finally:
            await conn.close()
        if not row["standby"]:
            found.append(Finding(name, "warn", "not a standby (promoted?): it serves no reads"))
            continue
        behind = await primary.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::bigint",
            primary_lsn,
            row["replayed"],
        )
        behind = max(int(behind or 0), 0)
        # Bytes behind is the lag that matters; the time since its last replayed transaction
        # only means something while it is behind (a quiet primary sends nothing to replay).
        lagging = behind > 0 and row["since_last"] > max_lag_s
        found.append(
            Finding(
                name,
                "warn" if lagging else "ok",
                f"{behind:,} bytes of WAL behind"
                + (f", last replay {row['since_last']:.0f} s ago: skipped" if lagging else ""),
                {"bytes_behind": behind, "last_replay_age_s": row["since_last"]},
            )
        )
    return found
