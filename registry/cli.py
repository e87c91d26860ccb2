"""The `registry` command: serve, migrate, and manage calling agencies and their keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from registry import logs, status
from registry.config import ConfigError, Settings
from registry.db import agencies
from registry.db import audit as audit_db
from registry.db.migrate import MigrationError, migrate
from registry.db.pins import SecretMismatch
from registry.db.pool import Database
from registry.db.roles import RoleError, check_runtime_role
from registry.embedded import EmbeddedCluster, EmbeddedError
from registry.rules import audit, imports, pin
from registry.rules.agencies import KINDS, Agency
from registry.rules.errors import RegistryError
from registry.rules.limits import DEFAULT_MISS_BUDGET_PER_MIN, DEFAULT_RATE_LIMIT_PER_S
from registry.rules.model import CHANGE_TYPES
from registry.rules.tokens import MAX_KID_CHARS, SCOPES, KeyError_, load_public_key, valid_kid
from registry.runtime import checkpoints, clock, pin_secret
from registry.runtime.attestation import SigningKeys, public_keys
from registry.runtime.pin_secret import PinSecretError
from registry.supervisor import SupervisorError
from registry.v1 import citizen_pb2

log = logging.getLogger("registry")

CITIZEN_FIELDS = tuple(f.name for f in citizen_pb2.Citizen.DESCRIPTOR.fields)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Return the event loop the server runs on: uvloop (measured faster under load)."""
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """Yield the operator's DSN (the owner role): migrations and operator commands.

    REGISTRY_OWNER_DATABASE_URL, else REGISTRY_DATABASE_URL, else the embedded cluster's owner
    role (starting the cluster for the command if it is not running).
    """
    configured = settings.owner_database_url or settings.database_url
    if configured is not None:
        yield configured
        return
    with _embedded(settings) as cluster:
        yield cluster.owner_dsn


@contextlib.contextmanager
def server_database_urls(settings: Settings) -> Iterator[tuple[str, str | None]]:
    """Yield (runtime DSN, owner DSN or None) for serving."""
    if settings.database_url is not None:
        yield settings.database_url, settings.owner_database_url
        return
    with _embedded(settings) as cluster:
        yield cluster.runtime_dsn, cluster.owner_dsn


@contextlib.contextmanager
def _embedded(settings: Settings) -> Iterator[EmbeddedCluster]:
    cluster = EmbeddedCluster(settings.data_dir, settings.pg_bin_dir, install=True)
    started = cluster.ensure_running()
    try:
        yield cluster
    finally:
        if started:
            cluster.stop()


async def _connect_and_migrate(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await migrate(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


# -- serve --------------------------------------------------------------------------------------


async def _prepare(settings: Settings, dsn: str, owner_dsn: str | None) -> None:
    """Do what must happen once before serving: migrate, check the role, create the keys."""
    if owner_dsn is not None:
        conn = await _connect_and_migrate(owner_dsn)
        await conn.close()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await check_runtime_role(conn)
    finally:
        await conn.close()
    # Created here, not by several workers at once.
    pin_secret.load_or_create(settings.signing_keys_path)
    SigningKeys.open(settings.signing_keys_path, settings.attestation_lifetime_s)


async def _serve(settings: Settings, dsn: str, owner_dsn: str | None) -> None:
    from registry.app import build_server  # grpc only where serving

    await _prepare(settings, dsn, owner_dsn)
    db = await Database.wait_and_connect(
        dsn, min_size=settings.pool_min_size, max_size=settings.pool_max_size
    )
    try:
        app = await build_server(settings, db)
        await app.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if settings.worker_index is not None:
            _stop_with_supervisor(loop, stop)
        print(f"registry listening on {settings.listen_host}:{app.port}", flush=True)
        await stop.wait()
        log.info("shutting down: draining in-flight calls")
        await app.stop()
    finally:
        await db.close()
    log.info("stopped")


def _stop_with_supervisor(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Drain when the supervisor's end of our stdin closes (it died without telling us)."""
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            gone = not os.read(fd, 4096)
        except OSError:
            gone = True
        if gone:
            loop.remove_reader(fd)
            log.warning("supervisor gone: draining")
            stop.set()

    loop.add_reader(fd, readable)


async def _supervise(settings: Settings, dsn: str, owner_dsn: str | None) -> None:
    from registry.supervisor import supervise  # grpc-free: the workers are fresh processes

    await _prepare(settings, dsn, owner_dsn)
    await supervise(settings, dsn)


def cmd_serve(settings: Settings, _: argparse.Namespace) -> None:
    # The server forks only to run PostgreSQL's own tools (pg_ctl), never to continue gRPC
    # work in a child: gRPC's fork handlers are not needed, and they log noise when skipped.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    supervised = settings.workers > 1 and settings.worker_index is None
    with (
        server_database_urls(settings) as (dsn, owner_dsn),
        asyncio.Runner(loop_factory=new_event_loop) as runner,
    ):
        runner.run((_supervise if supervised else _serve)(settings, dsn, owner_dsn))


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> None:
    async def run(dsn: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            done = await migrate(conn)
        finally:
            await conn.close()
        print(
            f"applied {len(done)} migration(s)"
            + "".join(f"\n  {m.version:04d}_{m.name}" for m in done)
        )

    with database_url(settings) as dsn:
        asyncio.run(run(dsn))


# -- audit --------------------------------------------------------------------------------------


class AuditBroken(Exception):
    """`registry audit verify` found a broken link or a checkpoint that does not hold: exit 1."""


def _checkpoint_arguments(values: Sequence[str]) -> list[tuple[str, str]]:
    """Return (JWS, where it came from) for each --checkpoint: a JWS, or a file of them."""
    found: list[tuple[str, str]] = []
    for value in values:
        path = Path(value)
        try:
            is_file = path.is_file()
        except OSError:  # a JWS is longer than a file name may be
            is_file = False
        if is_file:
            try:
                lines = checkpoints.read_file(path)
            except OSError as exc:
                raise CliError(f"cannot read checkpoint file {value}: {exc.strerror}") from None
            found.extend((line, f"in {value} line {number}") for number, line in lines)
        elif value.count(".") == 2 and "/" not in value:
            found.append((value, "given with --checkpoint"))
        else:
            raise CliError(f"--checkpoint {value[:80]}: neither a file nor a compact JWS")
    return found


@dataclass(frozen=True)
class _Verified:
    walk: audit.Walk
    checkpoints: checkpoints.CheckpointReport
    from_table: int


async def _verify_audit(dsn: str, check: checkpoints.CheckpointCheck) -> _Verified:
    conn = await _connect_and_migrate(dsn)
    try:
        # One snapshot: servers may append while we walk; we check the chain up to the head
        # as it was when the walk began. The checkpoint file and the command line were read
        # before it: every checkpoint there was signed from a head this snapshot has.
        chain = audit.ChainCheck()
        hashes: dict[int, bytes] = {}
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            head = await audit_db.head(conn)
            stored = await audit_db.checkpoint_tokens(conn)
            for token in stored:
                check.add(token, "in the table")
            wanted = check.wanted
            async for seq, entry, stored_hash in audit_db.entries(conn):
                if not chain.feed(seq, entry, stored_hash):
                    break
                if seq in wanted:
                    hashes[seq] = stored_hash
    finally:
        await conn.close()
    walk = chain.finish(head)
    return _Verified(walk, check.finish(walk, hashes), len(stored))


def cmd_audit(settings: Settings, args: argparse.Namespace) -> None:
    keys = public_keys(settings.signing_keys_path)
    check = checkpoints.CheckpointCheck(keys)
    given = _checkpoint_arguments(args.checkpoint or [])
    in_file: list[tuple[int, str]] = []
    if settings.checkpoint_file.is_file():
        try:
            in_file = checkpoints.read_file(settings.checkpoint_file)
        except OSError as exc:
            raise CliError(f"cannot read {settings.checkpoint_file}: {exc.strerror}") from None
    for number, token in in_file:
        check.add(token, f"in {settings.checkpoint_file} line {number}")
    for token, source in given:
        check.add(token, source)
    with database_url(settings) as dsn:
        found = asyncio.run(_verify_audit(dsn, check))
    result, report = found.walk, found.checkpoints
    known = found.from_table + len(in_file) + len(given)
    if not result.intact:
        print(
            f"audit log BROKEN at entry {result.broken_at}: {result.problem}\n"
            f"  {result.entries} entries before it are intact "
            f"(last good entry {result.last_seq}, hash {result.last_hash.hex()})"
        )
        for failure in report.failures:
            print(f"  also: {failure.message}")
        raise AuditBroken()
    if known and not keys:
        raise CliError(
            f"no registry signing keys in {settings.signing_keys_path} "
            "(REGISTRY_SIGNING_KEY_DIR): the checkpoints cannot be checked"
        )
    if report.failures:
        first, *others = report.failures
        print(
            f"audit log BROKEN: {first.message}\n"
            f"  the chain is consistent up to its head (entry {result.last_seq}, hash "
            f"{result.last_hash.hex()}), but not with what the registry signed"
        )
        for failure in others:
            print(f"  also: {failure.message}")
        raise AuditBroken()
    print(
        f"audit log intact: {result.entries} entries, head entry {result.last_seq}, "
        f"hash {result.last_hash.hex()}\n"
        "  keep the head hash: a later verify must show this entry with this hash"
    )
    sources = (
        f"{found.from_table} in the table, {len(in_file)} in {settings.checkpoint_file}, "
        f"{len(given)} given"
    )
    if report.held:
        latest = report.held[-1]
        print(
            f"  {len(report.held)} signed checkpoint(s) hold ({sources}); the latest: "
            f"{latest.describe()}"
        )
    else:
        print(f"  no signed checkpoint to check against ({sources})")


# -- status -------------------------------------------------------------------------------------


class StatusFailed(Exception):
    """`registry status` found a failing check: exit code 1."""


async def _status_database(dsn: str, settings: Settings) -> list[status.Finding]:
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return [status.Finding("database", "fail", f"unreachable ({type(exc).__name__})")]
    try:
        found = [status.Finding("database", "ok", "answers"), *await status.database(conn)]
        if settings.replica_urls:
            found += await status.replicas(conn, settings.replica_urls, settings.replica_max_lag_s)
        return found
    finally:
        await conn.close()


def cmd_status(settings: Settings, args: argparse.Namespace) -> None:
    findings = [status.server_health(settings), status.workers(settings)]
    dsn = settings.owner_database_url or settings.database_url
    if dsn is None:
        # Never start the embedded cluster just to look at it.
        cluster = EmbeddedCluster(settings.data_dir, settings.pg_bin_dir)
        if cluster.is_running():
            dsn = cluster.owner_dsn
        else:
            findings.append(
                status.Finding("database", "fail", f"embedded cluster in {cluster.pgdata} stopped")
            )
    if dsn is not None:
        findings.extend(asyncio.run(_status_database(dsn, settings)))
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2, default=str))
    else:
        width = max(len(f.name) for f in findings)
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for f in findings:
            print(f"{marks[f.verdict]}  {f.name:<{width}}  {f.summary}")
    if any(f.verdict == "fail" for f in findings):
        raise StatusFailed()


# -- import -------------------------------------------------------------------------------------

_ENUMS = {
    "sex": {"MALE": 1, "M": 1, "NAM": 1, "FEMALE": 2, "F": 2, "NỮ": 2, "NU": 2},
    "blood_type": {"": 0, "A": 1, "B": 2, "AB": 3, "O": 4},
    "marital_status": {"": 0, "SINGLE": 1, "MARRIED": 2, "DIVORCED": 3, "WIDOWED": 4},
    "status": {"": 0, "ALIVE": 1, "DECEASED": 2, "MISSING": 3},
}


def _csv_date(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.strip().split("-")] if text.strip() else []
    if len(parts) > 3:
        raise ValueError("a date is YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = [*parts, 0, 0, 0][:3]
    return year, month, day


def csv_values(row: dict[str, str]) -> tuple[str, dict[str, object]] | tuple[str, str]:
    """Turn a CSV row into (source_id, raw values) for rules.imports, or (source_id, error)."""
    source_id = (row.get("source_id") or "").strip()
    values: dict[str, object] = {}
    try:
        for key, text in row.items():
            if key is None or key == "source_id" or text is None:
                continue
            if key in ("date_of_birth", "date_of_death"):
                values[key] = _csv_date(text)
            elif key in _ENUMS:
                word = text.strip().upper()
                values[key] = int(word) if word.isdigit() else _ENUMS[key][word]
            elif key == "other_names":
                values[key] = [n for n in text.split(";") if n.strip()]
            else:
                values[key] = text
    except (ValueError, KeyError) as exc:
        return source_id, f"unreadable value: {exc}"
    return source_id, values


class _Progress:
    """Rows done, rate and ETA: a tqdm bar on a terminal, a plain line every few seconds
    otherwise (a log file gets lines, not carriage returns)."""

    def __init__(self, total: int, done: int):
        self._total, self._done = total, done
        self._started = self._shown = time.monotonic()
        self._first = done
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=done, unit=" rows", unit_scale=True, dynamic_ncols=True
            )

    def advance(self, rows: int) -> None:
        self._done += rows
        if self._bar is not None:
            self._bar.update(rows)
            return
        now = time.monotonic()
        if now - self._shown >= 5 or self._done >= self._total:
            self._shown = now
            rate = (self._done - self._first) / max(now - self._started, 1e-6)
            eta = (self._total - self._done) / rate if rate > 0 else 0.0
            share = self._done / self._total if self._total else 1.0
            print(
                f"  {self._done:,}/{self._total:,} rows ({share:.0%}), {rate:,.0f} rows/s, "
                f"ETA {eta:,.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> float:
        """Stop; return the rows per second of this run."""
        if self._bar is not None:
            self._bar.close()
        return (self._done - self._first) / max(time.monotonic() - self._started, 1e-6)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:32]


async def _import(
    settings: Settings, args: argparse.Namespace, total: int
) -> tuple[imports.Summary, int, float]:
    """Import the file's rows in batches (the chunked import's path, straight on the
    database); return (summary, rows skipped as already acknowledged, rows/s)."""
    from registry.db import imports as imports_db  # grpc-free, but only needed here
    from registry.db import prefixes as prefixes_db
    from registry.usecases import imports as import_runs

    path = Path(args.file)
    summary = imports.Summary()
    # A run of this file is named by its content: --resume finds the newest one and continues
    # after its last acknowledged batch; without it a new run starts (rows already imported
    # count as duplicates, as they always did).
    prefix = f"csv-{_file_digest(path)}-"
    with database_url(settings) as dsn:
        conn = await _connect_and_migrate(dsn)
        try:
            if not any(a.id == args.agency for a in await agencies.list_all(conn)):
                raise CliError(f"agency {args.agency!r} is not registered")
            latest = await imports_db.latest_run(conn, args.agency, prefix)
        finally:
            await conn.close()
        import_id, skip = f"{prefix}{int(time.time() * 1000)}", 0
        if args.resume and latest is not None:
            import_id, skip = latest
        db = await Database.connect(dsn, min_size=1, max_size=2)
        await db.use_pin_secret(pin_secret.load_or_create(settings.signing_keys_path))
        audit_conn = await db.connect_one("registry-import")
        progress = _Progress(total, skip)
        run = import_runs.ChunkedRun(db, args.agency)
        try:
            table = await prefixes_db.load(db.pool)
            today = clock.today()
            last: tuple[int, bytes] | None = None

            async def acknowledge() -> None:
                nonlocal last
                try:
                    done = await run.finish()
                except import_runs.OffsetMismatch as mismatch:
                    raise CliError(
                        f"another import of this file moved on ({mismatch.expected:,} rows "
                        "acknowledged): run again with --resume once it has stopped"
                    ) from None
                if done is None:
                    return
                summary.received += done.received
                summary.add_batch(
                    done.created, done.assigned, done.duplicates, done.mismatched, done.rejects
                )
                # As ImportCitizens records them (registry.grpc.population.import_audit_entries).
                entries = [
                    audit.Entry(
                        datetime.now(UTC), args.agency, "registry import", pins, outcome,
                        audit.clean_text(f"import of {path.name}"), import_id,
                    )
                    for outcome, pins in (("OK", done.pins), ("ALREADY_EXISTS", done.matched))
                    if pins
                ]  # fmt: skip
                if entries:
                    last = await audit_db.append(audit_conn, entries, last)
                progress.advance(done.received)

            # Reading the file blocking is fine: the write in flight has the loop while we
            # validate (the awaits below hand it over once per batch).
            with path.open(encoding="utf-8", newline="") as source:  # noqa: ASYNC230
                rows = itertools.islice(csv.DictReader(source), skip, None)
                offset = skip
                while batch := list(itertools.islice(rows, imports.BATCH)):
                    records, positions, invalid = _validate_rows(batch, table, today)
                    await acknowledge()
                    run.start(import_id, offset, len(batch), records, positions, invalid)
                    offset += len(batch)
                    await asyncio.sleep(0)
                await acknowledge()
        finally:
            await run.close()
            rate = progress.close()
            await audit_conn.close()
            await db.close()
    return summary, skip, rate


def _validate_rows(
    rows: list[dict[str, str]], table: pin.PrefixTable, today: date
) -> tuple[list[imports.ImportRecord], list[int], list[tuple[int, str, str]]]:
    records: list[imports.ImportRecord] = []
    positions: list[int] = []
    invalid: list[tuple[int, str, str]] = []
    for index, row in enumerate(rows):
        source_id, values = csv_values(row)
        record = (
            values
            if isinstance(values, str)
            else imports.validate_record(source_id, values, table, today)
        )
        if isinstance(record, str):
            invalid.append((index, imports.reported_source_id(source_id), record))
        else:
            records.append(record)
            positions.append(index)
    return records, positions, invalid


def cmd_import(settings: Settings, args: argparse.Namespace) -> None:
    try:
        with Path(args.file).open(encoding="utf-8") as source:
            total = sum(1 for _ in source) - 1
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    summary, skipped, rate = asyncio.run(_import(settings, args, total))
    if skipped:
        print(f"resumed after {skipped:,} rows already imported")
    print(
        f"received {summary.received:,}: created {summary.created:,} "
        f"({summary.assigned_pins:,} with a new PIN, {summary.mismatched_pins:,} with a "
        f"mismatched PIN flagged), duplicates {summary.duplicates:,}, "
        f"rejected {summary.rejected:,}; {rate:,.0f} rows/s"
    )
    for source_id, reason in summary.rejects[:20]:
        print(f"  rejected {source_id}: {reason}")
    if summary.rejected > 20:
        print(f"  ... and {summary.rejected - 20:,} more rejected")


# -- agency -------------------------------------------------------------------------------------


def _csv(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _read_key(path: str) -> tuple[str, str]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read public key {path}: {exc.strerror}") from None
    try:
        pem = raw.decode("ascii")
        algorithm, _ = load_public_key(pem)
    except (UnicodeDecodeError, KeyError_) as exc:
        problem = exc if isinstance(exc, KeyError_) else "not a PEM public key (binary file?)"
        raise CliError(f"{path}: {problem}") from None
    return algorithm, pem


def _check_kid(kid: str) -> None:
    # Tokens name the key in their header; the server refuses kids outside these bounds
    # before any lookup, so a key registered with one could never be used.
    if not valid_kid(kid):
        raise CliError(f"--kid must be 1 to {MAX_KID_CHARS} printable characters")


def _limits(agency: Agency | argparse.Namespace) -> str:
    """The agency's rate limit and miss budget as the server applies them."""
    rate = (
        f"{agency.rate_limit} calls/s"
        if agency.rate_limit
        else f"{DEFAULT_RATE_LIMIT_PER_S} calls/s (default)"
    )
    budget = (
        f"{agency.miss_budget} per minute"
        if agency.miss_budget
        else f"{DEFAULT_MISS_BUDGET_PER_MIN} per minute (default)"
    )
    return f"  rate limit: {rate}\n  miss budget: {budget}"


async def _agency(settings: Settings, args: argparse.Namespace) -> None:
    with database_url(settings) as dsn:
        conn = await _connect_and_migrate(dsn)
        try:
            await _agency_action(conn, args)
        finally:
            await conn.close()


async def _agency_action(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    action = args.agency_command
    if action == "add":
        scopes = _csv(args.scopes)
        unknown = sorted(set(scopes) - set(SCOPES))
        if not scopes or unknown:
            problem = f"unknown scope(s): {', '.join(unknown)}" if unknown else "--scopes is empty"
            raise CliError(f"{problem} (known: {', '.join(SCOPES)})")
        fields = _csv(args.fields)
        bad_fields = sorted(set(fields) - set(CITIZEN_FIELDS))
        if bad_fields:
            raise CliError(
                f"unknown citizen field(s): {', '.join(bad_fields)} "
                f"(known: {', '.join(CITIZEN_FIELDS)})"
            )
        if args.rate_limit is not None and args.rate_limit <= 0:
            raise CliError("--rate-limit must be a positive number of calls per second")
        if args.miss_budget is not None and args.miss_budget <= 0:
            raise CliError("--miss-budget must be a positive number of answers per minute")
        _check_kid(args.kid)
        watch_types = [t.upper() for t in _csv(args.watch_types)]
        bad_types = sorted(set(watch_types) - set(CHANGE_TYPES))
        if bad_types:
            raise CliError(
                f"unknown change type(s): {', '.join(bad_types)} (known: {', '.join(CHANGE_TYPES)})"
            )
        algorithm, pem = _read_key(args.public_key)
        try:
            await agencies.add(
                conn,
                agency_id=args.id,
                name=args.name,
                kind=args.kind,
                scopes=scopes,
                fields=fields,
                rate_limit=args.rate_limit,
                kid=args.kid,
                algorithm=algorithm,
                public_key_pem=pem,
                name_matching=args.name_matching.upper().replace("-", "_"),
                miss_budget=args.miss_budget,
                watch_types=list(dict.fromkeys(watch_types)),
                confidential=args.confidential,
            )
        except asyncpg.CheckViolationError as exc:
            raise CliError(f"invalid agency: {exc.constraint_name}") from None
        print(f"agency {args.id} added with key {args.kid} ({algorithm})\n{_limits(args)}")
    elif action == "list":
        for agency in await agencies.list_all(conn):
            state = "enabled" if agency.enabled else "DISABLED"
            print(
                f"{agency.id}\t{agency.kind}\t{state}\t{agency.name}\n"
                f"  scopes: {','.join(agency.scopes) or '-'}\n"
                f"  fields: {','.join(agency.fields) or '-'}\n"
                f"{_limits(agency)}\n"
                f"  name matching: {agency.name_matching.lower().replace('_', '-')}\n"
                f"  watch types: {','.join(agency.watch_types) or '-'}\n"
                f"  confidential: {'yes' if agency.confidential else 'no'}"
            )
            if agency.enabled_at is not None:
                print(f"  enabled again: {agency.enabled_at:%Y-%m-%d %H:%M:%S%z}")
            for key in agency.keys:
                status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
                print(f"  key {key.kid}\t{key.algorithm}\t{status}")
    elif action in ("disable", "enable"):
        await agencies.set_enabled(conn, args.id, action == "enable")
        if action == "enable":
            print(f"agency {args.id} enabled; tokens it signed before now stay refused")
        else:
            print(f"agency {args.id} disabled")
    elif action == "add-key":
        _check_kid(args.kid)
        algorithm, pem = _read_key(args.public_key)
        await agencies.add_key(
            conn, agency_id=args.id, kid=args.kid, algorithm=algorithm, public_key_pem=pem
        )
        print(f"agency {args.id}: key {args.kid} ({algorithm}) added")
    elif action == "revoke-key":
        await agencies.revoke_key(conn, args.id, args.kid)
        print(f"agency {args.id}: key {args.kid} revoked")


def cmd_agency(settings: Settings, args: argparse.Namespace) -> None:
    asyncio.run(_agency(settings, args))


# -- keys ---------------------------------------------------------------------------------------


def cmd_keys(settings: Settings, args: argparse.Namespace) -> None:
    ring = SigningKeys.open(settings.signing_keys_path, settings.attestation_lifetime_s)
    if args.keys_command == "rotate":
        print(f"new signing key {ring.rotate()}; older keys stay published")
    elif args.keys_command == "prune":
        removed = ring.prune()
        print(f"pruned {len(removed)} key(s) whose attestations have all expired")
    current = ring.current.kid
    for kid in ring.kids:
        print(f"{kid}{'  (signing)' if kid == current else ''}")


# -- entry point --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry",
        description="Citizen identity registry: server and operator commands. Configuration "
        "comes from REGISTRY_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC server").set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply pending database migrations").set_defaults(
        func=cmd_migrate
    )
    keys = sub.add_parser("keys", help="the registry's attestation signing keys")
    keys.set_defaults(func=cmd_keys)
    keys_actions = keys.add_subparsers(dest="keys_command", required=True)
    keys_actions.add_parser("list", help="list published keys; the newest signs")
    keys_actions.add_parser("rotate", help="create a new signing key (older ones stay published)")
    keys_actions.add_parser("prune", help="delete retired keys whose attestations expired")
    stat = sub.add_parser(
        "status", help="health, schema, audit head, change feed, buckets: exit 1 if any check fails"
    )
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    stat.set_defaults(func=cmd_status)
    imp = sub.add_parser(
        "import", help="bulk-load existing population records from a CSV file (re-runnable)"
    )
    imp.set_defaults(func=cmd_import)
    imp.add_argument("file", help="CSV with a header: source_id, pin, full_name, date_of_birth, "
                     "sex, registration_province_code and any other Citizen field")  # fmt: skip
    imp.add_argument(
        "--agency", required=True, help="registered agency the records come from (source ids "
        "are unique per agency)",
    )  # fmt: skip
    imp.add_argument(
        "--resume", action="store_true", help="continue the last import of this same file after "
        "its last written batch (an import that was killed or lost its database)",
    )  # fmt: skip
    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit.set_defaults(func=cmd_audit)
    audit_actions = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_actions.add_parser(
        "verify",
        help="walk the whole chain and check it against every signed checkpoint known (the "
        "table, the data directory's checkpoint file, --checkpoint); exit 1 naming the first "
        "broken link or checkpoint that does not hold",
    )
    verify.add_argument(
        "--checkpoint",
        action="append",
        metavar="JWS|FILE",
        help="a checkpoint JWS (from GetAuditCheckpoint), or a file of them one per line; "
        "repeatable",
    )
    agency = sub.add_parser("agency", help="manage calling agencies and their keys")
    agency.set_defaults(func=cmd_agency)
    actions = agency.add_subparsers(dest="agency_command", required=True)
    add = actions.add_parser("add", help="register an agency with its first public key")
    add.add_argument("--id", required=True, help="agency id; tokens carry it as iss")
    add.add_argument("--name", required=True)
    add.add_argument("--kind", required=True, choices=KINDS)
    add.add_argument("--scopes", required=True, help="comma-separated: " + ",".join(SCOPES))
    add.add_argument("--fields", help="comma-separated citizen fields it may read")
    add.add_argument("--public-key", required=True, help="PEM file (ES256/P-256, Ed25519, RSA)")
    add.add_argument("--kid", required=True, help="key id that tokens name in their header")
    add.add_argument(
        "--rate-limit",
        type=int,
        help=f"calls per second (default {DEFAULT_RATE_LIMIT_PER_S}; a stream counts as one call)",
    )
    add.add_argument(
        "--miss-budget",
        type=int,
        help="NOT_FOUND/NO_MATCH verification answers per minute before the agency is "
        f"throttled (default {DEFAULT_MISS_BUDGET_PER_MIN}; raise it for data-cleaning campaigns)",
    )
    add.add_argument(
        "--name-matching",
        choices=("strict", "diacritic-insensitive"),
        default="strict",
        help="how VerifyIdentity compares its name claims (default strict; "
        "diacritic-insensitive only for systems that lost the marks)",
    )
    add.add_argument(
        "--watch-types",
        help="comma-separated change types WatchChanges may deliver to it: "
        + ",".join(CHANGE_TYPES)
        + " (default none)",
    )
    add.add_argument(
        "--confidential",
        action="store_true",
        help="its accesses are confidential (e.g. criminal investigations): access logs show "
        "them without agency or purpose except to callers with scope audit:read-confidential",
    )
    actions.add_parser("list", help="list agencies and keys")
    for name, text in (("disable", "lock an agency out"), ("enable", "let it back in")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--id", required=True)
    add_key = actions.add_parser("add-key", help="register another key (rotation)")
    add_key.add_argument("--id", required=True)
    add_key.add_argument("--public-key", required=True)
    add_key.add_argument("--kid", required=True)
    revoke = actions.add_parser("revoke-key", help="revoke a key")
    revoke.add_argument("--id", required=True)
    revoke.add_argument("--kid", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `registry` command; return its exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, worker=settings.worker_index)
        args.func(settings, args)
    except (
        CliError,
        ConfigError,
        EmbeddedError,
        MigrationError,
        RoleError,
        PinSecretError,
        SecretMismatch,
        SupervisorError,
    ) as exc:
        print(f"registry: error: {exc}", file=sys.stderr)
        return 2
    except RegistryError as exc:
        print(f"registry: error: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresConnectionError) as exc:
        print(f"registry: error: database unreachable: {exc}", file=sys.stderr)
        return 3
    except (AuditBroken, StatusFailed):
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
