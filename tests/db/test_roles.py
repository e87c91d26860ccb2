"""Two database roles (SPEC §7, issue 12): the server's credentials cannot change the past.

The server serves as the runtime role; migrations and operator commands run as the owner.
These tests connect with the server's own credentials and try what an attacker holding them
would try.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from registry.db.migrate import migrate
from registry.embedded import OWNER_ROLE, RUNTIME_ROLE
from tests.conftest import new_cluster, run
from tests.db.conftest import connected

ROOT = Path(__file__).resolve().parents[2]

# Each statement must be refused with the runtime role's credentials.
ATTACKS = {
    "update an audit entry": "UPDATE audit_log SET purpose = 'rewritten'",
    "delete audit entries": "DELETE FROM audit_log",
    "truncate the audit log": "TRUNCATE audit_log",
    "truncate the audit head": "TRUNCATE audit_head",
    "forge a checkpoint in place": "UPDATE audit_checkpoints SET jws = 'x'",
    "delete checkpoints": "DELETE FROM audit_checkpoints",
    "delete the audit head": "DELETE FROM audit_head",
    "disable the append-only trigger": "ALTER TABLE audit_log DISABLE TRIGGER USER",
    "switch triggers off": "SET session_replication_role = replica",
    "run a program": "COPY audit_log FROM PROGRAM 'id'",
    "run a program (to)": "COPY (SELECT 1) TO PROGRAM 'id'",
    "read a server file": "SELECT pg_read_file('postgresql.conf')",
    "create a function": "CREATE FUNCTION evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "create a temporary function": (
        "CREATE FUNCTION pg_temp.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    ),
    "create a table": "CREATE TABLE evil (x int)",
    "create a temporary table": "CREATE TEMP TABLE evil (x int)",
    "drop a table": "DROP TABLE citizens",
    "drop the audit log": "DROP TABLE audit_log",
    "read password hashes": "SELECT rolpassword FROM pg_authid",
    "change an agency's key": "UPDATE agency_keys SET revoked_at = NULL",
    "enable an agency": "UPDATE agencies SET enabled = true",
    "register an agency": (
        "INSERT INTO agencies (id, name, kind, scopes) VALUES ('x', 'x', 'OTHER', '{}')"
    ),
    "delete a citizen": "DELETE FROM citizens",
    "delete change events": "DELETE FROM change_events",
    "prune recent change events": "SELECT prune_change_events(interval '1 hour', 1000)",
    "move the feed horizon": "UPDATE change_feed_horizon SET pruned_through = 0",
    "rewrite history": "DELETE FROM citizen_history",
    "rewind the audit head": "UPDATE audit_head SET seq = 0, hash = '\\x00'::bytea",
    # GRANT without the grant option only warns ("no privileges were granted"): try the DELETE.
    "grant itself more": "GRANT DELETE ON audit_log TO registry_runtime; DELETE FROM audit_log",
    "become the owner": f"SET ROLE {OWNER_ROLE}",
    "create a role": "CREATE ROLE evil LOGIN SUPERUSER",
}


async def _refused(dsn: str, sql: str) -> str | None:
    """Run sql in a transaction that is rolled back; return the error, None if it worked."""
    async with connected(dsn) as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await tx.rollback()
        return None


@pytest.fixture(scope="module")
def audited(server, agency, civil, db) -> None:
    """A few audit entries (a birth through the server) so that refusals are not vacuous."""
    from tests.helpers import birth_request

    civil.RegisterBirth(birth_request(), metadata=agency.metadata())
    assert db.fetchval("SELECT count(*) FROM audit_log") > 0


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_the_servers_credentials_cannot_change_the_past(attack, runtime_dsn, audited):
    error = run(_refused(runtime_dsn, ATTACKS[attack]))
    assert error is not None, f"{attack}: allowed with the server's credentials"


def test_the_superuser_can_do_what_the_runtime_role_cannot(dsn, audited):
    # The attacks are refused for want of privilege, not because they are malformed.
    assert run(_refused(dsn, "SET session_replication_role = replica")) is None
    assert run(_refused(dsn, ATTACKS["update an audit entry"])) is not None  # trigger
    assert run(_refused(dsn, ATTACKS["create a table"])) is None
    assert run(_refused(dsn, ATTACKS["read password hashes"])) is None


def test_runtime_role_is_unprivileged_and_owns_nothing(runtime_dsn):
    async def go() -> asyncpg.Record:
        async with connected(runtime_dsn) as conn:
            return await conn.fetchrow(
                """
                SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
                       r.rolbypassrls,
                       (SELECT count(*) FROM pg_class c
                        WHERE c.relowner = r.oid) AS relations,
                       (SELECT count(*) FROM pg_proc p WHERE p.proowner = r.oid) AS functions,
                       (SELECT count(*) FROM pg_database d WHERE d.datdba = r.oid) AS databases
                FROM pg_roles r WHERE r.rolname = current_user
                """
            )

    row = run(go())
    assert dict(row) == {
        "rolsuper": False,
        "rolcreaterole": False,
        "rolcreatedb": False,
        "rolreplication": False,
        "rolbypassrls": False,
        "relations": 0,
        "functions": 0,
        "databases": 0,
    }


# What the runtime role may do on each table: the grants of migration 0014 and later ones.
# A new table without a line here fails the test below: decide its grants deliberately.
EXPECTED_GRANTS = {
    "agencies": {"SELECT"},
    "agency_keys": {"SELECT"},
    "agency_miss_budgets": {"SELECT", "INSERT", "UPDATE"},
    "audit_checkpoints": {"SELECT", "INSERT"},
    "audit_head": {"SELECT", "UPDATE"},
    "audit_log": {"SELECT", "INSERT"},
    "cards": {"SELECT", "INSERT", "UPDATE"},
    "change_events": {"SELECT", "INSERT", "UPDATE"},
    "change_feed_horizon": {"SELECT"},
    "citizen_history": {"SELECT", "INSERT"},
    "citizens": {"SELECT", "INSERT", "UPDATE"},
    "idempotency_keys": {"SELECT", "INSERT", "UPDATE"},
    "import_batches": {"SELECT", "INSERT", "UPDATE"},
    "import_locks": {"SELECT", "UPDATE"},
    "import_sources": {"SELECT", "INSERT", "UPDATE"},
    "legacy_ids": {"SELECT", "INSERT", "UPDATE"},
    "pin_buckets": {"SELECT", "INSERT", "UPDATE"},
    "pin_key_secret": {"SELECT", "INSERT"},
    "pin_prefixes": {"SELECT"},
    "schema_migrations": {"SELECT"},
    "verification_failures": {"SELECT", "INSERT", "UPDATE"},
}


def test_every_table_grants_the_runtime_role_exactly_its_privileges(db):
    rows = db.fetch(
        """
        SELECT c.relname,
               array_remove(ARRAY[
                   CASE WHEN has_table_privilege($1, c.oid, 'SELECT') THEN 'SELECT' END,
                   CASE WHEN has_table_privilege($1, c.oid, 'INSERT') THEN 'INSERT' END,
                   CASE WHEN has_table_privilege($1, c.oid, 'UPDATE') THEN 'UPDATE' END,
                   CASE WHEN has_table_privilege($1, c.oid, 'DELETE') THEN 'DELETE' END,
                   CASE WHEN has_table_privilege($1, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END,
                   CASE WHEN has_table_privilege($1, c.oid, 'REFERENCES') THEN 'REFERENCES' END,
                   CASE WHEN has_table_privilege($1, c.oid, 'TRIGGER') THEN 'TRIGGER' END
               ], NULL) AS privileges
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
        """,
        RUNTIME_ROLE,
    )
    granted = {r["relname"]: set(r["privileges"]) for r in rows}
    assert granted == EXPECTED_GRANTS


def test_role_credentials_are_separate_private_files(cluster):
    files = {
        name: cluster.data_dir / name for name in ("db.json", "db-owner.json", "db-runtime.json")
    }
    passwords = set()
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        passwords.add(json.loads(path.read_text())["password"])
    assert len(passwords) == 3
    assert OWNER_ROLE in cluster.owner_dsn and RUNTIME_ROLE in cluster.runtime_dsn


def _serve_exit(env_overrides: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(REGISTRY_LISTEN="127.0.0.1:0", REGISTRY_DATA_DIR=str(tmp), **env_overrides)
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_server_refuses_to_serve_as_a_superuser_or_owner(cluster, dsn, tmp_path):
    for privileged in (dsn, cluster.owner_dsn):
        done = _serve_exit({"REGISTRY_DATABASE_URL": privileged}, tmp_path)
        assert done.returncode == 2, done.stderr
        assert "runtime role" in done.stderr and "Traceback" not in done.stderr
        assert "password" not in done.stderr.lower()


def test_server_refuses_a_schema_behind_its_code_without_owner_credentials(tmp_path):
    fresh = new_cluster("registry-roles-")
    try:
        done = _serve_exit({"REGISTRY_DATABASE_URL": fresh.runtime_dsn}, tmp_path)
        assert done.returncode == 2, done.stderr
        assert "registry migrate" in done.stderr and "Traceback" not in done.stderr
    finally:
        fresh.stop("immediate")
        shutil.rmtree(fresh.data_dir, ignore_errors=True)


def test_a_cluster_made_before_the_roles_is_handed_to_the_owner(tmp_path):
    """Data directories from before this change: everything was the superuser's."""
    old = new_cluster("registry-roles-old-")
    try:

        async def as_superuser() -> None:
            async with connected(old.dsn) as conn:
                await conn.execute("ALTER DATABASE registry OWNER TO registry")
                await migrate(conn)  # the old way: objects owned by the superuser

        run(as_superuser())
        for name in ("db-owner.json", "db-runtime.json"):
            (old.data_dir / name).unlink()
        old.ensure_running()  # what `make run` does on the old data directory

        async def owners() -> set[str]:
            async with connected(old.dsn) as conn:
                rows = await conn.fetch(
                    "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'i')"
                )
                return {r[0] for r in rows}

        assert run(owners()) == {OWNER_ROLE}
        error = run(_refused(old.runtime_dsn, ATTACKS["update an audit entry"]))
        assert error is not None and "permission denied" in error
    finally:
        old.stop("immediate")
        shutil.rmtree(old.data_dir, ignore_errors=True)
