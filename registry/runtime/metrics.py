"""Prometheus metrics: the standard gRPC server series and the registry's own.

Names follow go-grpc-prometheus (what dashboards and alerts for gRPC services expect):
`grpc_server_started_total`, `grpc_server_handled_total{grpc_code}`,
`grpc_server_handling_seconds` (histogram), `grpc_server_msg_received_total` and
`grpc_server_msg_sent_total`, labelled `grpc_type`, `grpc_service`, `grpc_method`. The
registry's own series start with `registry_`. No label ever carries personal data: the only
identifiers are method names, agency ids, status codes and PIN bucket names (province, G, YY).

The endpoint is off unless REGISTRY_METRICS_LISTEN is set. With several server processes
(prometheus-client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR set before this module is
imported) each process writes its samples to that directory and one endpoint sums them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess

log = logging.getLogger(__name__)

_GRPC = ("grpc_type", "grpc_service", "grpc_method")
# Latency buckets from 1 ms (a cached verification) to 30 s (a long stream's end).
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _GRPC)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    (*_GRPC, "grpc_code"),
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's start to its status, by method.",
    _GRPC,
    buckets=_LATENCY,
)
RECEIVED = Counter("grpc_server_msg_received_total", "Request messages received.", _GRPC)
SENT = Counter("grpc_server_msg_sent_total", "Response messages sent.", _GRPC)

REFUSED = Counter(
    "registry_calls_refused_total",
    "Calls refused by a rate limit or a budget, by agency and reason.",
    ("agency", "reason"),
)
AUDIT_QUEUE = Gauge(
    "registry_audit_queue_entries",
    "Audit entries waiting for their group commit.",
    multiprocess_mode="livesum",
)
AUDIT_COMMIT = Histogram(
    "registry_audit_group_commit_seconds",
    "Duration of one audit group commit (one transaction, one WAL flush).",
    buckets=_LATENCY,
)
DB_POOL_IN_USE = Gauge(
    "registry_db_pool_connections_in_use",
    "Database connections checked out of the main pool.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "registry_db_pool_connections",
    "Database connections open in the main pool.",
    multiprocess_mode="livesum",
)
FEED_LAG = Gauge(
    "registry_change_feed_lag_seconds",
    "Age of the oldest change event not yet numbered for WatchChanges readers.",
    multiprocess_mode="max",
)
CHECKPOINT_AGE = Gauge(
    "registry_audit_checkpoint_age_seconds",
    "Age of the newest signed audit checkpoint (signed every <= 10 s while entries are written).",
    multiprocess_mode="min",
)
REPLICA_LAG = Gauge(
    "registry_replica_lag_seconds",
    "How far each read replica's replay is behind the primary, as this process last measured.",
    ("replica",),
    multiprocess_mode="max",
)
REPLICA_SERVING = Gauge(
    "registry_replica_serving",
    "1 while a read replica serves reads, 0 while it is skipped (down, promoted or lagging).",
    ("replica",),
    multiprocess_mode="min",
)
BUCKET_FILL = Gauge(
    "registry_pin_bucket_fill_ratio",
    "Share of the 1,000,000 numbers issued in the fullest PIN buckets (PPP-G-YY).",
    ("bucket",),
    multiprocess_mode="max",
)


def multiprocess_dir() -> str | None:
    """Return prometheus-client's multiprocess directory, if this process uses one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def serve(host: str, port: int) -> Any:
    """Serve /metrics on host:port in a thread; return the HTTP server (its port is known)."""
    registry = REGISTRY
    directory = multiprocess_dir()
    if directory is not None:
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (multiprocess mode)."""
    directory = multiprocess_dir()
    if directory is not None:
        _multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
