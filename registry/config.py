"""Settings of the registry: the only place that reads the environment."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_AUDIENCE = "citizen-registry"


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe."""


def _split_host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"REGISTRY_LISTEN must be host:port, got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Tell whether a listen host only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Everything the server and the CLI need to know, read once at start-up."""

    listen: str = DEFAULT_LISTEN
    """host:port the gRPC server binds (port 0 picks a free port)."""

    database_url: str | None = None
    """PostgreSQL DSN the server serves with: the runtime role (SPEC §7), never a superuser
    or table owner; None runs on the embedded cluster under data_dir."""

    owner_database_url: str | None = None
    """PostgreSQL DSN of the role owning the tables: migrations and operator commands. None:
    the server does not migrate (it refuses to start on a schema behind the code) and operator
    commands use database_url."""

    replica_urls: tuple[str, ...] = ()
    """Streaming-replica DSNs (the runtime role) that serve the read-only RPCs; their audit
    entries still go to the primary."""

    replica_max_lag_s: float = 5.0
    """A replica further behind the primary than this is skipped until it catches up."""

    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Server processes sharing the listening port (SO_REUSEPORT) under one supervisor; 1
    serves from this process alone."""

    worker_index: int | None = None
    """Set by the supervisor in each worker it starts (0..workers-1); None outside workers."""

    hosts: int = 1
    """Hosts serving behind one load balancer: per-agency rate limits and miss budgets are
    split exactly over hosts x workers processes (registry.rules.limits)."""

    data_dir: Path = Path("var")
    """Where the embedded cluster, its credentials and the registry's keys live."""

    jwt_audience: str = DEFAULT_AUDIENCE
    """The `aud` every agency token must carry."""

    signing_key_dir: Path | None = None
    """The registry's attestation signing keys; None means `<data_dir>/signing-keys`."""

    attestation_lifetime_s: int = 30 * 24 * 3600
    """How long an attestation stays valid (and a retired signing key stays published)."""

    tls_cert: Path | None = None
    """PEM certificate chain served to callers; with tls_key, turns TLS on."""

    tls_key: Path | None = None
    """PEM private key of tls_cert."""

    tls_client_ca: Path | None = None
    """PEM CA bundle; when set, callers must present a client certificate it signed (mTLS)."""

    allow_insecure_listen: bool = False
    """Permit plaintext on a non-loopback address (only behind a TLS-terminating proxy)."""

    pg_bin_dir: Path | None = None
    """Directory of PostgreSQL's binaries for the embedded cluster; None = find them."""

    pool_min_size: int = 4
    """Connections the pool keeps open."""

    pool_max_size: int = 16
    """Upper bound of the connection pool."""

    token_max_lifetime_s: int = 15 * 60
    """Longest accepted exp - iat of an agency token (SPEC §6: 15 minutes)."""

    clock_skew_s: int = 30
    """Leeway for exp/iat/nbf against callers' clocks."""

    agency_refresh_s: float = 5.0
    """Full reload period of the agency/key cache (changes also arrive by NOTIFY)."""

    signing_key_reload_s: float = 30.0
    """How often the signing key directory is re-read (picks up `registry keys rotate`)."""

    health_check_s: float = 1.0
    """How often the database is probed for the health service."""

    audit_checkpoint_s: float = 10.0
    """How often the audit chain's head is signed while entries are written (SPEC §7: at
    least every 10 s); also signed at shutdown."""

    shutdown_grace_s: float = 10.0
    """How long SIGTERM waits for in-flight calls before cancelling them."""

    log_level: str = "INFO"
    """Python logging level name."""

    change_retention_days: float = 35.0
    """Change events older than this are pruned (WatchChanges from an older cursor answers
    OUT_OF_RANGE): a subscriber must catch up within it; a month and slack by default."""

    change_prune_s: float = 3600.0
    """How often the server prunes change events past their retention."""

    metrics_listen: str | None = None
    """host:port of the Prometheus endpoint (/metrics); None: no endpoint and no counting."""

    metrics_sample_s: float = 15.0
    """How often the registry's gauges (pool, feed lag, bucket fill) are sampled."""

    extra: Mapping[str, str] = field(default_factory=dict)
    """Unused settings kept for diagnostics (never secrets)."""

    @property
    def listen_host(self) -> str:
        """Return the host part of `listen`."""
        return _split_host_port(self.listen)[0]

    @property
    def listen_port(self) -> int:
        """Return the port part of `listen`."""
        return _split_host_port(self.listen)[1]

    @property
    def limit_shares(self) -> int:
        """Return how many processes share each agency's rate limit and miss budget."""
        # A process not started by the supervisor serves alone on its host.
        return self.hosts * (self.workers if self.worker_index is not None else 1)

    @property
    def signing_keys_path(self) -> Path:
        """Return the directory of the registry's signing keys."""
        return self.signing_key_dir or self.data_dir / "signing-keys"

    @property
    def checkpoint_file(self) -> Path:
        """Return the file outside the database the signed audit checkpoints are appended to."""
        return self.data_dir / "audit-checkpoints.jws"

    @property
    def tls_enabled(self) -> bool:
        """Tell whether the server terminates TLS itself."""
        return self.tls_cert is not None and self.tls_key is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from REGISTRY_* environment variables and check them."""
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = env.get(name, "").strip()
            return Path(value) if value else None

        def number(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None

        settings = cls(
            listen=env.get("REGISTRY_LISTEN", "").strip() or DEFAULT_LISTEN,
            database_url=env.get("REGISTRY_DATABASE_URL", "").strip() or None,
            owner_database_url=env.get("REGISTRY_OWNER_DATABASE_URL", "").strip() or None,
            replica_urls=tuple(
                url.strip()
                for url in env.get("REGISTRY_REPLICA_URLS", "").split(",")
                if url.strip()
            ),
            replica_max_lag_s=number("REGISTRY_REPLICA_MAX_LAG_S", 5.0),
            workers=int(number("REGISTRY_WORKERS", os.cpu_count() or 1)),
            worker_index=(
                int(number("REGISTRY_WORKER_INDEX", 0))
                if env.get("REGISTRY_WORKER_INDEX", "").strip()
                else None
            ),
            hosts=int(number("REGISTRY_HOSTS", 1)),
            data_dir=path("REGISTRY_DATA_DIR") or Path("var"),
            jwt_audience=env.get("REGISTRY_JWT_AUDIENCE", "").strip() or DEFAULT_AUDIENCE,
            signing_key_dir=path("REGISTRY_SIGNING_KEY_DIR"),
            attestation_lifetime_s=int(number("REGISTRY_ATTESTATION_LIFETIME_S", 30 * 24 * 3600)),
            tls_cert=path("REGISTRY_TLS_CERT"),
            tls_key=path("REGISTRY_TLS_KEY"),
            tls_client_ca=path("REGISTRY_TLS_CLIENT_CA"),
            allow_insecure_listen=env.get("REGISTRY_ALLOW_INSECURE_LISTEN", "").lower()
            in ("1", "true", "yes"),
            pg_bin_dir=path("REGISTRY_PG_BIN"),
            pool_min_size=int(number("REGISTRY_POOL_MIN", 4)),
            pool_max_size=int(number("REGISTRY_POOL_MAX", 16)),
            agency_refresh_s=number("REGISTRY_AGENCY_REFRESH_S", 5.0),
            audit_checkpoint_s=number("REGISTRY_AUDIT_CHECKPOINT_S", 10.0),
            log_level=env.get("REGISTRY_LOG_LEVEL", "").strip().upper() or "INFO",
            metrics_listen=env.get("REGISTRY_METRICS_LISTEN", "").strip() or None,
            change_retention_days=number("REGISTRY_CHANGE_RETENTION_DAYS", 35.0),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that are malformed or unsafe."""
        host, port = _split_host_port(self.listen)
        if not 0 <= port <= 65535:
            raise ConfigError(f"REGISTRY_LISTEN port out of range: {port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("REGISTRY_TLS_CERT and REGISTRY_TLS_KEY must be set together")
        if self.tls_client_ca is not None and not self.tls_enabled:
            raise ConfigError("REGISTRY_TLS_CLIENT_CA needs REGISTRY_TLS_CERT and REGISTRY_TLS_KEY")
        if not self.tls_enabled and not is_loopback(host) and not self.allow_insecure_listen:
            raise ConfigError(
                f"refusing to serve plaintext on non-loopback address {host!r}: "
                "configure REGISTRY_TLS_CERT/REGISTRY_TLS_KEY, or set "
                "REGISTRY_ALLOW_INSECURE_LISTEN=1 behind a TLS-terminating proxy"
            )
        if self.metrics_listen is not None:
            metrics_host, _ = _split_host_port(self.metrics_listen)
            if not is_loopback(metrics_host) and not self.allow_insecure_listen:
                raise ConfigError(
                    "REGISTRY_METRICS_LISTEN serves plain HTTP: bind it to loopback, or set "
                    "REGISTRY_ALLOW_INSECURE_LISTEN=1 on a network only Prometheus reaches"
                )
        if not 0 < self.audit_checkpoint_s <= 10:
            raise ConfigError(
                "REGISTRY_AUDIT_CHECKPOINT_S must be more than 0 and at most 10 seconds "
                f"(SPEC §7), got {self.audit_checkpoint_s}"
            )
        if self.change_retention_days < 1:
            raise ConfigError("REGISTRY_CHANGE_RETENTION_DAYS must be at least 1")
        if self.workers < 1:
            raise ConfigError("REGISTRY_WORKERS must be at least 1")
        if self.hosts < 1:
            raise ConfigError("REGISTRY_HOSTS must be at least 1")
        if self.replica_max_lag_s <= 0:
            raise ConfigError("REGISTRY_REPLICA_MAX_LAG_S must be a positive number of seconds")
        if self.pool_min_size < 1 or self.pool_max_size < self.pool_min_size:
            raise ConfigError("REGISTRY_POOL_MIN/MAX must satisfy 1 <= min <= max")
