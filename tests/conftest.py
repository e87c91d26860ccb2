"""Test base: a private PostgreSQL cluster, the real server on a real port, real agency keys.

Nothing is mocked. The session starts one embedded cluster (the same code `make run` uses)
in a temporary directory, migrates it, and runs the gRPC server in a thread with its own
event loop, so tests call it through real channels exactly as an agency's system would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from registry.app import RegistryServer, build_server
from registry.cli import new_event_loop
from registry.config import Settings
from registry.db import agencies
from registry.db.migrate import migrate
from registry.db.pool import Database
from registry.embedded import EmbeddedCluster
from registry.rules.model import CHANGE_TYPES, CITIZEN_FIELDS
from registry.rules.tokens import SCOPES
from registry.runtime import pin_secret
from registry.v1 import (
    card_service_pb2_grpc,
    civil_registration_service_pb2_grpc,
    identity_service_pb2_grpc,
)

T = TypeVar("T")
AUDIENCE = "citizen-registry"


def new_cluster(prefix: str = "registry-test-") -> EmbeddedCluster:
    """Create and start a private cluster in a fresh temporary directory."""
    # Not pytest's tmp_path: that lives under a 0700 directory the unprivileged PostgreSQL
    # account (used when tests run as root) cannot traverse.
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    data_dir.chmod(0o755)
    cluster = EmbeddedCluster(data_dir)
    cluster.ensure_running()
    return cluster


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine to completion from synchronous test code."""
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    c = new_cluster()
    try:
        yield c
    finally:
        c.stop("immediate")
        shutil.rmtree(c.data_dir, ignore_errors=True)


def migrate_cluster(cluster: EmbeddedCluster) -> None:
    """Apply the migrations as the owner role, as `registry migrate` does."""

    async def go() -> None:
        conn = await asyncpg.connect(cluster.owner_dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    run(go())


@pytest.fixture(scope="session")
def dsn(cluster: EmbeddedCluster) -> str:
    """The cluster superuser's DSN of the migrated test database: for setting up and checking
    state behind the server's back (the server itself serves as the runtime role)."""
    migrate_cluster(cluster)
    return cluster.dsn


@pytest.fixture(scope="session")
def runtime_dsn(cluster: EmbeddedCluster, dsn: str) -> str:
    """The runtime role's DSN: what the server serves as (SPEC §7)."""
    return cluster.runtime_dsn


class DB:
    """Synchronous access to the test database for setting up and checking state."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return run(_fetch(self.dsn, sql, *args))

    def fetchval(self, sql: str, *args: Any) -> Any:
        rows = self.fetch(sql, *args)
        return rows[0][0] if rows else None

    def execute(self, sql: str, *args: Any) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(sql, *args)
            finally:
                await conn.close()

        run(go())

    def counts(self) -> dict[str, int]:
        """Row counts of the tables a refused call must not touch."""
        tables = ("citizens", "idempotency_keys", "pin_buckets")
        return {t: int(self.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}

    def issued(self) -> int:
        return int(self.fetchval("SELECT coalesce(sum(issued), 0) FROM pin_buckets"))


@pytest.fixture(scope="session")
def db(dsn: str) -> DB:
    return DB(dsn)


class ServerThread:
    """The registry server running in its own thread and event loop."""

    def __init__(self, settings: Settings, dsn: str):
        self.settings = settings
        self.dsn = dsn
        # The loop production serves on (registry.cli.new_event_loop), so tests cover it.
        self.loop = new_event_loop()
        self.app: RegistryServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        db = await Database.connect(self.dsn, min_size=2, max_size=12)
        self.app = await build_server(self.settings, db)
        await self.app.start()

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        assert self.app is not None
        return self.app.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Awaitable[T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop (to inspect or poke the running app)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self.app is not None
            await self.app.stop(grace=1)
            await self.app.db.close()

        if self.app is not None:
            self.call(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# One key ring for every test server, as servers sharing a database share their signing keys in
# production: each signs audit checkpoints into the same table, and `registry audit verify`
# checks them all with these keys. The PIN secret beside them is shared for the same reason:
# the session database refuses a server holding another (registry.db.pins.check_secret).
SIGNING_KEY_DIR = Path(tempfile.mkdtemp(prefix="registry-keys-"))
SESSION_PIN_SECRET = os.urandom(32)
(SIGNING_KEY_DIR / pin_secret.FILE_NAME).write_text(SESSION_PIN_SECRET.hex() + "\n")
(SIGNING_KEY_DIR / pin_secret.FILE_NAME).chmod(0o600)


def server_settings(**overrides: Any) -> Settings:
    base = Settings(
        listen="127.0.0.1:0",
        agency_refresh_s=1.0,
        health_check_s=0.2,
        signing_key_dir=SIGNING_KEY_DIR,
        # The audit checkpoint file goes here, not into the working directory's var/.
        data_dir=Path(tempfile.mkdtemp(prefix="registry-data-")),
    )
    return replace(base, **overrides)


@pytest.fixture(scope="session")
def server(runtime_dsn: str) -> Iterator[ServerThread]:
    srv = ServerThread(server_settings(), runtime_dsn).start()
    wait_serving(srv.target)
    try:
        yield srv
    finally:
        srv.stop()


def wait_serving(target: str, timeout: float = 20.0) -> None:
    """Wait until the server's health service says SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} did not become SERVING")
            time.sleep(0.1)


# -- agencies and tokens ------------------------------------------------------------------------


def new_private_key(kind: str = "ES256") -> Any:
    if kind == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(kind)


def public_pem(private_key: Any) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def private_pem(private_key: Any) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class TestAgency:
    """A registered agency whose private key the test holds."""

    id: str
    kid: str
    algorithm: str
    private_key: Any
    scopes: tuple[str, ...]
    fields: tuple[str, ...] = ()
    extra_keys: dict[str, Any] = field(default_factory=dict)

    def token(
        self,
        *,
        lifetime: int = 300,
        iat_offset: int = 0,
        scope: str | None = None,
        audience: str = AUDIENCE,
        kid: str | None = None,
        key: Any = None,
        algorithm: str | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time()) + iat_offset
        payload: dict[str, Any] = {
            "iss": self.id,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
        }
        if scope is not None:
            payload["scope"] = scope
        payload.update(claims)
        return jwt.encode(
            payload,
            key if key is not None else self.private_key,
            algorithm=algorithm or self.algorithm,
            headers={"kid": kid or self.kid},
        )

    def metadata(
        self, token: str | None = None, purpose: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = [("authorization", f"Bearer {token or self.token()}")]
        if purpose is not None:
            md.append(("x-purpose", purpose))
        return tuple(md)


AgencyFactory = Callable[..., TestAgency]


def make_agency_factory(dsn: str) -> AgencyFactory:
    """Return a function that registers agencies (with fresh keys) in the database at dsn.

    For convenience they may watch every change type unless told otherwise (a registration
    without --watch-types may watch none)."""

    def factory(
        *,
        scopes: tuple[str, ...] = SCOPES,
        fields: tuple[str, ...] = (),
        algorithm: str = "ES256",
        kind: str = "JUSTICE",
        rate_limit: int | None = 1_000_000,
        miss_budget: int | None = None,
        watch_types: tuple[str, ...] = tuple(CHANGE_TYPES),
        confidential: bool = False,
        name: str | None = None,
    ) -> TestAgency:
        """Register an agency. Tests call as fast as they can: their agencies are registered
        with a limit no test reaches, unless a test asks for another (None: the default)."""
        agency_id = f"test-{uuid.uuid4().hex[:12]}"
        private_key = new_private_key(algorithm)

        async def go() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await agencies.add(
                    conn,
                    agency_id=agency_id,
                    name=name or f"Test agency {agency_id}",
                    kind=kind,
                    scopes=list(scopes),
                    fields=list(fields),
                    rate_limit=rate_limit,
                    miss_budget=miss_budget,
                    watch_types=list(watch_types),
                    confidential=confidential,
                    kid="k1",
                    algorithm=algorithm,
                    public_key_pem=public_pem(private_key),
                )
            finally:
                await conn.close()

        run(go())
        return TestAgency(agency_id, "k1", algorithm, private_key, scopes, fields)

    return factory


@pytest.fixture(scope="session")
def make_agency(dsn: str) -> AgencyFactory:
    return make_agency_factory(dsn)


@pytest.fixture(scope="session")
def agency(make_agency: AgencyFactory) -> TestAgency:
    """An agency holding every scope and registered to read every field (so that answers
    carry whole records), with a miss budget for verification campaigns. Tests of the field
    policy (SPEC §6) register agencies that may read less."""
    return make_agency(miss_budget=1_000_000, fields=CITIZEN_FIELDS)


# -- channels and stubs -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture(scope="session")
def civil(
    channel: grpc.Channel,
) -> civil_registration_service_pb2_grpc.CivilRegistrationServiceStub:
    return civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)


@pytest.fixture(scope="session")
def cards(channel: grpc.Channel) -> card_service_pb2_grpc.CardServiceStub:
    return card_service_pb2_grpc.CardServiceStub(channel)


@pytest.fixture(scope="session")
def identity(channel: grpc.Channel) -> identity_service_pb2_grpc.IdentityServiceStub:
    return identity_service_pb2_grpc.IdentityServiceStub(channel)


os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


# -- the client package (clients/python) --------------------------------------------------------

CLIENT_PACKAGE = Path(__file__).resolve().parents[1] / "clients" / "python"


@pytest.fixture(scope="session")
def registry_client() -> Any:
    """The registry_client package, imported from clients/python/src after generating its
    protobuf modules (once per session)."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, str(CLIENT_PACKAGE / "generate.py")], check=True, capture_output=True
    )
    src = str(CLIENT_PACKAGE / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    import registry_client as package

    return package
