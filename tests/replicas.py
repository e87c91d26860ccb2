"""Real streaming replicas of a test cluster (pg_basebackup -R), for the replica and failover
tests. Made and run like the embedded cluster itself: PostgreSQL's binaries as the cluster's
unprivileged account when we are root (setpriv after vfork, registry.embedded)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg

from registry.embedded import _ROLE_FILES, EmbeddedCluster, _free_port, _State

_LSN = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint"
_REPLAYED = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"


class ReplicaCluster(EmbeddedCluster):
    """A hot standby of another embedded cluster, in a temporary directory of its own."""

    @classmethod
    def of(cls, primary: EmbeddedCluster, *, name: str = "replica") -> ReplicaCluster:
        """Base-backup the running primary and start the copy as its streaming standby."""
        data_dir = Path(tempfile.mkdtemp(prefix=f"registry-{name}-"))
        data_dir.chmod(0o755)
        replica = cls(data_dir)
        replica._prepare_data_dir()
        replica.pgdata.mkdir(mode=0o700)
        replica._chown(replica.pgdata)
        state = primary._read_state()
        conninfo = (
            f"host=127.0.0.1 port={state.port} user=registry password={state.password} "
            f"application_name={name}"
        )
        replica._pg(
            [
                *("pg_basebackup", "-D", str(replica.pgdata), "-R", "-X", "stream"),
                *("-c", "fast", "-d", conninfo),
            ]
        )
        # A standby promoted later must not wait for a synchronous standby of its own.
        with (replica.pgdata / "postgresql.auto.conf").open("a") as conf:
            conf.write("synchronous_standby_names = ''\n")
        for role_file in _ROLE_FILES.values():
            shutil.copy(primary.data_dir / role_file, data_dir / role_file)
        replica._write_state(_State(_free_port(), state.password, database_created=True))
        replica.start()
        return replica

    @property
    def port(self) -> int:
        return self._read_state().port

    def promote(self) -> None:
        """Make this standby a primary (what an HA manager such as Patroni does)."""
        self._pg(["pg_ctl", "promote", "-D", str(self.pgdata), "-w", "-t", "60"])

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


async def _value(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def wait_caught_up(primary_dsn: str, replica_dsn: str, timeout: float = 60.0) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    target = asyncio.run(_value(primary_dsn, _LSN))
    deadline = time.monotonic() + timeout
    while asyncio.run(_value(replica_dsn, _REPLAYED)) < target:
        if time.monotonic() > deadline:
            raise TimeoutError("the replica did not catch up")
        time.sleep(0.05)


def run_sql(dsn: str, sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())
