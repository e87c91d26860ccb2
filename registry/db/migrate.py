"""Forward-only, checksummed SQL migrations applied under an advisory lock.

Files are `migrations/NNNN_name.sql`. Each is applied once, in order, in its own transaction,
and recorded with the SHA-256 of its text; a recorded migration whose file has changed since
is refused loudly, because the database no longer matches what the code was written for.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Any constant will do: every registry process takes the same lock before migrating, so two
# servers starting at once apply each migration exactly once.
_LOCK_KEY = 7_217_420_250_001
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree, or one failed."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the migration files of a directory, in version order."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} not found")
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_RE.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations share version {version:04d}")
        text = path.read_text(encoding="utf-8")
        found[version] = Migration(
            version=version,
            name=match.group(2),
            sql=text,
            checksum=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


async def migrate(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply the pending migrations; return those applied by this call."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     integer NOT NULL,
                name        text NOT NULL,
                checksum    text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now(),
                CONSTRAINT schema_migrations_pkey PRIMARY KEY (version)
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        on_disk = {m.version for m in migrations}
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None and row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was changed after it "
                    f"was applied (recorded sha256 {row['checksum'][:12]}…, file "
                    f"{migration.checksum[:12]}…); migrations are forward-only: restore the "
                    "file and put the change in a new migration"
                )
        unknown = sorted(set(applied) - on_disk)
        if unknown:
            log.warning(
                "database has migrations this code does not know: %s (newer code ran here?)",
                ", ".join(f"{v:04d}" for v in unknown),
            )
        done: list[Migration] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            log.info("applying migration %04d_%s", migration.version, migration.name)
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            done.append(migration)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
