"""The server's database role: checked at start-up to be the unprivileged runtime role.

SPEC §7: whoever holds the server's credentials must not be able to rewrite the audit log,
disable its triggers or run programs on the database host. That holds only if the server
connects as a role that is no superuser, owns no table and is not the database's owner; the
server refuses to start otherwise, and also on a schema behind its code (it does not migrate
with runtime credentials: the owner role does, `registry migrate`).
"""

from __future__ import annotations

import asyncpg

from registry.db.migrate import load_migrations

RUNTIME_GROUP = "registry_runtime"
"""The role migrations grant the server's privileges to; the server's login role is it or a
member of it (docs/operations.md "Database roles")."""


class RoleError(RuntimeError):
    """The server's database role is unsafe or unusable; the message says what to do."""


_PRIVILEGES = """
SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,
       pg_has_role(current_user, d.datdba, 'MEMBER') AS owns_database,
       EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND pg_has_role(current_user, c.relowner, 'MEMBER'))
           AS owns_tables,
       pg_has_role(current_user, $1, 'USAGE') AS runtime_member
FROM pg_roles r, pg_database d
WHERE r.rolname = current_user AND d.datname = current_database()
"""


async def check_runtime_role(conn: asyncpg.Connection) -> None:
    """Raise RoleError unless conn's role may serve: unprivileged, granted, schema current."""
    exists = await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL")
    applied: set[int] = set()
    if exists:
        applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    pending = [m for m in load_migrations() if m.version not in applied]
    if pending:
        first = pending[0]
        raise RoleError(
            f"the database schema is behind this code ({len(pending)} migration(s) pending, "
            f"first {first.version:04d}_{first.name}): run `registry migrate` with the owner "
            "role (REGISTRY_OWNER_DATABASE_URL), or give the server REGISTRY_OWNER_DATABASE_URL"
        )
    has_group = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", RUNTIME_GROUP)
    if not has_group:
        raise RoleError(f"role {RUNTIME_GROUP} does not exist (docs/operations.md)")
    row = await conn.fetchrow(_PRIVILEGES, RUNTIME_GROUP)
    problems = [
        text
        for flag, text in (
            ("rolsuper", "is a superuser"),
            ("rolcreaterole", "may create roles"),
            ("rolcreatedb", "may create databases"),
            ("rolbypassrls", "bypasses row security"),
            ("owns_database", "owns the database"),
            ("owns_tables", "owns tables"),
        )
        if row[flag]
    ]
    if not row["runtime_member"]:
        problems.append(f"is not a member of {RUNTIME_GROUP}")
    if problems:
        raise RoleError(
            f"the server's database role {row['rolname']!r} {', '.join(problems)}: the server "
            f"serves only as the runtime role (a member of {RUNTIME_GROUP} that owns nothing); "
            "put that role in REGISTRY_DATABASE_URL and the owner in REGISTRY_OWNER_DATABASE_URL "
            '(docs/operations.md "Database roles")'
        )
