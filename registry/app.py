"""Assembly of the gRPC server: servicers, the call gate, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from registry.config import ConfigError, Settings
from registry.db import gauges as gauges_db
from registry.db.pool import Database
from registry.grpc import tracing
from registry.grpc.audit import AuditServicer
from registry.grpc.cards import CardServicer
from registry.grpc.civil_registration import CivilRegistrationServicer
from registry.grpc.gate import BATCH_MAX_BYTES, SERVICE_NAMES, CallGate
from registry.grpc.identity import IdentityServicer
from registry.grpc.metrics import MetricsInterceptor
from registry.grpc.population import PopulationServicer
from registry.rules.tokens import TokenVerifier
from registry.runtime import metrics, pin_secret
from registry.runtime.access_log import AccessLog
from registry.runtime.attestation import SigningKeys
from registry.runtime.audit_writer import AuditWriter
from registry.runtime.caches import AgencyDirectory, PrefixCache
from registry.runtime.checkpointer import Checkpointer
from registry.runtime.feed import ChangeFeed
from registry.usecases.budgets import Budgets
from registry.v1 import (
    audit_service_pb2_grpc,
    card_service_pb2_grpc,
    civil_registration_service_pb2_grpc,
    identity_service_pb2_grpc,
    population_service_pb2_grpc,
)

log = logging.getLogger(__name__)

# Request metadata, all of it: above gRPC's default (8 KiB, refused at random up to 16 KiB)
# an oversized token was refused by the transport with a detail-less RESOURCE_EXHAUSTED.
# With one fixed limit a token of a few kilobytes too many reaches the gate and is answered
# UNAUTHENTICATED with its reason (registry.rules.tokens.MAX_TOKEN_CHARS), and beyond 16 KiB the
# transport refuses every time, never at random.
MAX_METADATA_BYTES = 16 * 1024
# A batch of the chunked RPCs may hold 4 MiB (gate.BATCH_MAX_BYTES). The transport takes up to
# twice that so that a slightly larger batch is answered INVALID_ARGUMENT naming the limit (the
# gate refuses it unparsed); beyond it gRPC itself answers RESOURCE_EXHAUSTED. Answers may be
# larger than requests (10,000 attestations of ~600 bytes): 16 MiB out.
MAX_RECEIVE_BYTES = 2 * BATCH_MAX_BYTES
MAX_SEND_BYTES = 16 * 1024 * 1024


@dataclass
class RegistryServer:
    """A built server and the background work that keeps it honest."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    db: Database
    directory: AgencyDirectory
    prefixes: PrefixCache
    settings: Settings
    keys: SigningKeys
    access: AccessLog
    audit: AuditWriter
    feed: ChangeFeed
    checkpointer: Checkpointer
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_server: Any = None
    """The Prometheus endpoint's HTTP server (REGISTRY_METRICS_LISTEN), when this process
    serves it (not in multiprocess mode, where the supervisor does)."""
    stop_tracing: Any = None
    """Flushes the spans not yet exported (OTEL_EXPORTER_OTLP_ENDPOINT), when tracing is on."""

    async def start(self) -> None:
        """Start serving; health turns SERVING once the database answers."""
        self.audit.start()
        self.checkpointer.start()
        self.feed.start()
        await self.server.start()
        self.access.start()
        self._tasks.append(asyncio.create_task(self._watch_database(), name="db-health"))
        self._tasks.append(asyncio.create_task(self._reload_keys(), name="signing-keys"))
        prune = self.feed.prune_forever(
            self.settings.change_retention_days, self.settings.change_prune_s
        )
        self._tasks.append(asyncio.create_task(prune, name="change-retention"))
        if self.settings.metrics_listen is not None:
            self._tasks.append(asyncio.create_task(self._sample_gauges(), name="metrics"))
            if metrics.multiprocess_dir() is None:
                host, port = self.settings.metrics_listen.rsplit(":", 1)
                self.metrics_server = metrics.serve(host.strip("[]"), int(port))
        if self.db.replicas is not None:
            replicas = self.db.replicas.run(self.db.pool)
            self._tasks.append(asyncio.create_task(replicas, name="replicas"))
        log.info("registry serving on port %d", self.port)

    async def _sample_gauges(self) -> None:
        """Sample what no call reports: pool use, audit queue, feed lag, bucket fill."""
        while True:
            try:
                pool = self.db.pool
                metrics.DB_POOL_SIZE.set(pool.get_size())
                metrics.DB_POOL_IN_USE.set(pool.get_size() - pool.get_idle_size())
                metrics.AUDIT_QUEUE.set(self.audit.pending_entries)
                lag, checkpoint_age, fullest = await gauges_db.sample(self.db.pool)
                metrics.FEED_LAG.set(lag)
                if checkpoint_age is not None:
                    metrics.CHECKPOINT_AGE.set(checkpoint_age)
                for bucket, ratio in fullest:
                    metrics.BUCKET_FILL.labels(bucket).set(ratio)
                if self.db.replicas is not None:
                    for replica in self.db.replicas.replicas:
                        metrics.REPLICA_SERVING.labels(replica.address).set(replica.healthy)
                        if replica.lag_s is not None:
                            metrics.REPLICA_LAG.labels(replica.address).set(replica.lag_s)
            except Exception as exc:  # a failed sample must not stop the next one
                log.warning("metrics sample failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.metrics_sample_s)

    async def _watch_database(self) -> None:
        serving: bool | None = None
        while True:
            ok = await self.db.ping(within_s=max(self.settings.health_check_s, 1.0))
            if ok != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", *SERVICE_NAMES):
                    await self.health.set(name, status)
                if serving is not None:
                    log.warning(
                        "database %s", "is back: SERVING" if ok else "unreachable: NOT_SERVING"
                    )
                serving = ok
            await asyncio.sleep(self.settings.health_check_s)

    async def _reload_keys(self) -> None:
        # Picks up `registry keys rotate` (or keys deployed by configuration management).
        while True:
            await asyncio.sleep(self.settings.signing_key_reload_s)
            try:
                await asyncio.to_thread(self.keys.reload)
            except Exception as exc:
                log.error("signing keys reload failed, keeping the previous ones: %s", exc)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, finish in-flight calls within grace, then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        # After the drain: calls still finishing were waiting for their audit entries; the
        # last checkpoint covers every entry written.
        await self.audit.close()
        await self.checkpointer.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.feed.close()
        await self.directory.close()
        await self.prefixes.close()
        await self.access.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.stop_tracing is not None:
            await asyncio.to_thread(self.stop_tracing)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_enabled:
        return None
    assert settings.tls_cert is not None and settings.tls_key is not None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def build_server(settings: Settings, db: Database) -> RegistryServer:
    """Build (not start) the server on a migrated database."""
    try:  # first: it may refuse to start
        traced, stop_tracing = tracing.interceptors(settings.worker_index)
    except tracing.TracingNotInstalled as exc:
        raise ConfigError(str(exc)) from None
    directory = AgencyDirectory(db, refresh_s=settings.agency_refresh_s)
    prefixes = PrefixCache(db)
    await directory.start()
    await prefixes.start()
    verifier = TokenVerifier(
        settings.jwt_audience,
        max_lifetime_s=settings.token_max_lifetime_s,
        leeway_s=settings.clock_skew_s,
    )
    if settings.replica_urls:
        db.use_replicas(settings.replica_urls, settings.replica_max_lag_s, settings.pool_max_size)
    access = AccessLog(worker=settings.worker_index)
    audit = AuditWriter(db)
    feed = ChangeFeed(db)
    gate = CallGate(
        directory,
        verifier,
        access,
        audit,
        bind_client_certificates=settings.tls_client_ca is not None,
        on_change=feed.kick,
        limit_shares=settings.limit_shares,
        workers=settings.workers if settings.worker_index is not None else 1,
    )
    # Outermost, so they see every call's final status; neither installed without an endpoint.
    counting = [MetricsInterceptor()] if settings.metrics_listen is not None else []
    server = grpc.aio.server(
        interceptors=[*traced, *counting, gate],
        options=[
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            # Workers of one supervisor (registry.supervisor) bind the same port and the kernel
            # spreads connections over them; a lone server keeps the port to itself.
            ("grpc.so_reuseport", 1 if settings.worker_index is not None else 0),
        ],
    )
    civil_registration_service_pb2_grpc.add_CivilRegistrationServiceServicer_to_server(
        CivilRegistrationServicer(db, prefixes), server
    )
    # Declared services whose RPCs later work implements: the generated base classes answer
    # UNIMPLEMENTED (after authentication, like every call).
    budgets = Budgets(db)
    card_service_pb2_grpc.add_CardServiceServicer_to_server(CardServicer(db, budgets), server)
    keys = SigningKeys.open(settings.signing_keys_path, settings.attestation_lifetime_s)
    await db.use_pin_secret(pin_secret.load_or_create(settings.signing_keys_path))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(db, keys, settings.checkpoint_file, settings.audit_checkpoint_s)
    identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
        IdentityServicer(db, keys, budgets), server
    )
    population_service_pb2_grpc.add_PopulationServiceServicer_to_server(
        PopulationServicer(db, feed, prefixes), server
    )
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(db, checkpointer), server
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = _credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, credentials)
    if port == 0:
        raise RuntimeError(f"could not bind {settings.listen}")
    return RegistryServer(
        server,
        port,
        health,
        db,
        directory,
        prefixes,
        settings,
        keys,
        access,
        audit,
        feed,
        checkpointer,
        stop_tracing=stop_tracing if traced else None,
    )
