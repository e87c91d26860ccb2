"""The embedded default database: a private PostgreSQL cluster under the data directory.

Used when no REGISTRY_DATABASE_URL is configured (development, demos, tests). The cluster
listens on 127.0.0.1 only, on TCP (no Unix socket, whose path length limit breaks deep data
directories), with scram-sha-256 password authentication; the generated password lives in
`<data_dir>/db.json` readable by the owner only. PostgreSQL's `initdb` refuses to run as root,
so when we are root the cluster is owned and run by an unprivileged system user.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

SUPERUSER = "registry"
DATABASE = "registry"
# The two roles of SPEC §7: the owner runs migrations and operator commands; the server serves
# as the runtime role, which owns nothing and holds only the grants of migration 0014.
OWNER_ROLE = "registry_owner"
RUNTIME_ROLE = "registry_runtime"
_STATE_FILE = "db.json"
# Where the cluster is, when not <data_dir>/pg (see EmbeddedCluster._place_cluster).
_LOCATION_FILE = "pg.location"
_ELSEWHERE = Path("/var/lib/citizen-registry/clusters")
# Each role's password in its own file (mode 0600), so that a deployment can hand the server
# only the runtime one. db.json keeps the port and the cluster superuser's password.
_ROLE_FILES = {OWNER_ROLE: "db-owner.json", RUNTIME_ROLE: "db-runtime.json"}
_PG_DIR = "pg"
# Unprivileged accounts able to own the cluster when we are root, in order of preference.
_RUN_USERS = ("postgres", "nobody")
# util-linux's setpriv switches to that account inside the exec'd program (see _as_run_user).
_SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
_SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "200",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
    "fsync": "on",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
}


class EmbeddedError(RuntimeError):
    """The embedded cluster cannot be set up or started; the message says what to do."""


def _run_user() -> pwd.struct_passwd | None:
    """Return the account to run PostgreSQL as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in _RUN_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedError(
        "running as root, and no unprivileged account (postgres or nobody) exists to run "
        "PostgreSQL as; create one (adduser --system postgres) or run as a normal user"
    )


def find_bin_dir(configured: Path | None = None, *, install: bool = False) -> Path:
    """Locate PostgreSQL's server binaries, installing Debian's package if allowed and root."""
    if configured is not None:
        if (configured / "initdb").exists():
            return configured
        raise EmbeddedError(f"REGISTRY_PG_BIN={configured} has no initdb in it")
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        log.warning("PostgreSQL server binaries not found: installing Debian's postgresql package")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
            check=True,
            env=env,
        )
        return find_bin_dir(None, install=False)
    raise EmbeddedError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them with "
        "`sudo apt-get install postgresql` (Debian/Ubuntu), point REGISTRY_PG_BIN at their "
        "directory, or set REGISTRY_DATABASE_URL to use an existing database"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class _State:
    port: int
    password: str
    database_created: bool = False


class EmbeddedCluster:
    """A private PostgreSQL cluster living in `<data_dir>/pg`."""

    def __init__(self, data_dir: Path, bin_dir: Path | None = None, *, install: bool = False):
        self.data_dir = data_dir.resolve()
        self._bin_dir_setting = bin_dir
        self._install = install
        self._bin: Path | None = None
        self._user = _run_user()

    # -- public API -------------------------------------------------------------------------

    @property
    def pgdata(self) -> Path:
        """Return the cluster's directory: `<data_dir>/pg`, or where pg.location says."""
        location = self.data_dir / _LOCATION_FILE
        if location.exists():
            return Path(location.read_text().strip())
        return self.data_dir / _PG_DIR

    def remove(self) -> None:
        """Stop the cluster and delete it with the data directory (tests, scratch clusters)."""
        self.stop("immediate")
        pgdata = self.pgdata
        if pgdata.parent != self.data_dir:
            shutil.rmtree(pgdata.parent, ignore_errors=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def dsn(self) -> str:
        """Return the cluster superuser's URL of the registry database (setup and tests only)."""
        state = self._read_state()
        return self._url(SUPERUSER, state.password, state.port)

    @property
    def owner_dsn(self) -> str:
        """Return the owner role's URL: migrations and operator commands."""
        return self._url(OWNER_ROLE, self._read_role_password(OWNER_ROLE), self._read_state().port)

    @property
    def runtime_dsn(self) -> str:
        """Return the runtime role's URL: what the server serves as."""
        return self._url(
            RUNTIME_ROLE, self._read_role_password(RUNTIME_ROLE), self._read_state().port
        )

    @staticmethod
    def _url(user: str, password: str, port: int) -> str:
        return f"postgresql://{user}:{quote(password, safe='')}@127.0.0.1:{port}/{DATABASE}"

    def ensure_running(self) -> bool:
        """Initialise and start the cluster if needed; return True if this call started it."""
        with self._lock():
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            started = False
            if not self.is_running():
                self._start()
                started = True
            state = self._read_state()
            if not state.database_created:
                self._createdb(state)
            if not all((self.data_dir / f).exists() for f in _ROLE_FILES.values()):
                self._create_roles(state)
            return started

    def is_running(self) -> bool:
        """Tell whether the cluster's postmaster is up."""
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._pg(["pg_ctl", "status", "-D", str(self.pgdata)], check=False)
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (mode: smart, fast or immediate)."""
        if self.is_running():
            self._pg(["pg_ctl", "stop", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60"])

    def start(self) -> None:
        """Start an initialised, stopped cluster."""
        with self._lock():
            if not self.is_running():
                self._start()

    # -- internals ----------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        if self._bin is None:
            self._bin = find_bin_dir(self._bin_dir_setting, install=self._install)
        return self._bin

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two processes (the server and a CLI command) may set the cluster up at once.
        self._prepare_data_dir()
        with open(self.data_dir / ".cluster.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            # The cluster's owner must be able to traverse into data_dir; nothing else of ours
            # there (db.json is 0600) becomes readable by this.
            mode = self.data_dir.stat().st_mode
            self.data_dir.chmod(mode | 0o111)

    def _as_run_user(self, argv: list[str]) -> list[str]:
        """Return argv that runs as the cluster's account when we are root.

        The account switch is done by setpriv(1) in the exec'd program, never by subprocess's
        user=/group=/extra_groups=: those make CPython fork() and run Python-level code in the
        child, which crashes (SIGSEGV, SIGBUS) at random when the parent has gRPC or asyncpg
        threads — the server and the test process both do (issue 11). Without them, subprocess
        uses vfork and the child only execs.
        """
        if self._user is None:
            return argv
        return [
            _SETPRIV,
            f"--reuid={self._user.pw_uid}",
            f"--regid={self._user.pw_gid}",
            "--clear-groups",
            "--",
            *argv,
        ]

    def _pg(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / argv[0]), *argv[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        if self._user is not None:
            env["HOME"] = self._user.pw_dir
        result = subprocess.run(
            self._as_run_user(argv),
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
            check=False,
        )
        if check and result.returncode != 0:
            raise EmbeddedError(
                f"{argv[0]} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _reachable(self, path: Path, test: str) -> bool:
        """Tell whether the cluster's account passes `test` (-x, -w) on path."""
        argv = self._as_run_user(["test", test, str(path)])
        return subprocess.run(argv, cwd="/", check=False).returncode == 0

    def _place_cluster(self) -> None:
        """Put the cluster where its account can reach it; say where when that is elsewhere.

        As root, PostgreSQL runs as an unprivileged account, which cannot enter a private
        directory such as root's home (mode 0700): a checkout there would otherwise fail. We
        neither widen the user's directories nor guess: the cluster then lives under
        /var/lib/citizen-registry/clusters/<hash of the data directory>/pg, and
        `<data_dir>/pg.location` remembers it (credentials and keys stay in data_dir).
        """
        (self.data_dir / _LOCATION_FILE).unlink(missing_ok=True)
        if self._user is None or self._reachable(self.data_dir, "-x"):
            return
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        home = _ELSEWHERE / digest
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        for parent in (_ELSEWHERE.parent, _ELSEWHERE, home):
            parent.chmod(0o755)
        location = self.data_dir / _LOCATION_FILE
        location.write_text(f"{home / _PG_DIR}\n")
        log.warning(
            "the account %r that runs PostgreSQL cannot enter %s (a parent directory is "
            "private): the embedded cluster lives in %s",
            self._user.pw_name,
            self.data_dir,
            home / _PG_DIR,
        )

    def _initdb(self) -> None:
        self._place_cluster()
        log.info("creating the embedded PostgreSQL cluster in %s", self.pgdata)
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)  # a half-made cluster from an interrupted initdb
        self.pgdata.mkdir(mode=0o700)
        self._chown(self.pgdata)
        if self._user is not None:
            probe = self._pg(["pg_ctl", "--version"], check=False)
            if probe.returncode != 0 or not self._reachable(self.pgdata, "-w"):
                raise EmbeddedError(
                    f"the unprivileged account {self._user.pw_name!r} that must run PostgreSQL "
                    f"cannot reach {self.pgdata}; set REGISTRY_DATA_DIR to a directory whose "
                    "parents it can traverse (for example under /var/tmp or /srv)"
                )
        password = secrets.token_urlsafe(32)
        # Beside the cluster, where its account can read it (data_dir may be private).
        pwfile = self.pgdata.parent / ".initdb-pw"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            self._pg(
                [
                    "initdb",
                    "-D",
                    str(self.pgdata),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.pgdata / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\n# citizen registry embedded cluster\n")
            for key, value in _SERVER_SETTINGS.items():
                handle.write(f"{key} = {value}\n")
        self._write_state(_State(port=_free_port(), password=password))

    def _start(self) -> None:
        state = self._read_state()
        if _port_in_use(state.port):
            # Something else took our port since last time: move to a free one.
            state.port = _free_port()
            self._write_state(state)
        logfile = self.pgdata / "server.log"
        self._pg(
            [
                "pg_ctl",
                "start",
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(logfile),
                "-o",
                f"-p {state.port}",
            ]
        )
        log.info("embedded PostgreSQL started on 127.0.0.1:%d", state.port)

    def _createdb(self, state: _State) -> None:
        env = {**os.environ, "PGPASSWORD": state.password}
        argv = [
            str(self.bin_dir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(state.port),
            "-U",
            SUPERUSER,
            DATABASE,
        ]
        deadline = time.monotonic() + 30
        while True:
            result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            if result.returncode == 0 or "already exists" in result.stderr:
                break
            if time.monotonic() > deadline or not re.search(
                "starting up|could not connect|Connection refused", result.stderr
            ):
                raise EmbeddedError(f"createdb failed: {result.stderr.strip()}")
            time.sleep(0.2)
        state.database_created = True
        self._write_state(state)

    def _psql(self, state: _State, sql: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=state.password, LC_ALL="C.UTF-8")
        argv = [str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"]
        argv += ["127.0.0.1", "-p", str(state.port), "-U", SUPERUSER, "-d", DATABASE]
        result = subprocess.run(
            argv, input=sql, capture_output=True, text=True, env=env, check=False
        )
        if result.returncode != 0:
            raise EmbeddedError(f"setting up the database roles failed: {result.stderr.strip()}")

    def _create_roles(self, state: _State) -> None:
        """Create (or re-password) the owner and runtime roles; hand every object to the owner.

        Clusters made before the two roles existed had everything owned by the superuser: their
        tables and functions move to the owner here, and `registry migrate` (migration 0014)
        then grants the runtime role what it needs.
        """
        passwords = {role: secrets.token_urlsafe(32) for role in _ROLE_FILES}
        sql = _ROLES_SQL.format(
            owner=OWNER_ROLE,
            runtime=RUNTIME_ROLE,
            owner_password=passwords[OWNER_ROLE],
            runtime_password=passwords[RUNTIME_ROLE],
            database=DATABASE,
        )
        self._psql(state, sql)
        for role, password in passwords.items():
            _write_private(self.data_dir / _ROLE_FILES[role], {"user": role, "password": password})
        log.info("database roles %s (owner) and %s (runtime) ready", OWNER_ROLE, RUNTIME_ROLE)

    def _read_role_password(self, role: str) -> str:
        path = self.data_dir / _ROLE_FILES[role]
        try:
            return str(json.loads(path.read_text())["password"])
        except FileNotFoundError:
            raise EmbeddedError(f"{path} is missing: the embedded cluster is not set up") from None

    def _read_state(self) -> _State:
        path = self.data_dir / _STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise EmbeddedError(f"{path} is missing: the embedded cluster is not set up") from None
        return _State(
            port=int(raw["port"]),
            password=str(raw["password"]),
            database_created=bool(raw.get("database_created", False)),
        )

    def _write_state(self, state: _State) -> None:
        _write_private(self.data_dir / _STATE_FILE, state.__dict__)


def _write_private(path: Path, content: dict[str, object]) -> None:
    """Write JSON readable by this account only (mode 0600), atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(content, handle)
    os.replace(tmp, path)


# Run by the cluster superuser in the registry database. Idempotent: a re-run only changes the
# passwords (their files are rewritten with them).
_ROLES_SQL = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{owner}') THEN
        CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{runtime}') THEN
        CREATE ROLE {runtime} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
END $$;
ALTER ROLE {owner} PASSWORD '{owner_password}';
ALTER ROLE {runtime} PASSWORD '{runtime_password}';
ALTER DATABASE {database} OWNER TO {owner};
DO $$ DECLARE r record; BEGIN
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
               AND c.relowner <> '{owner}'::regrole LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO {owner}', r.name);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind = 'S'
               AND c.relowner <> '{owner}'::regrole LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO {owner}', r.name);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND p.proowner <> '{owner}'::regrole LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO {owner}', r.name);
    END LOOP;
END $$;
"""
