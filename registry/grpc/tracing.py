"""OpenTelemetry traces of every RPC, only when an OTLP endpoint is configured.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, each server
process installs opentelemetry-instrumentation-grpc's aio server interceptor, outermost: one
span per call (``/registry.v1.IdentityService/VerifyIdentity``), its gRPC status, the caller's
trace context continued from the ``traceparent`` metadata, exported in batches over OTLP/gRPC
by the standard exporter, which reads the other ``OTEL_EXPORTER_OTLP_*`` variables (headers,
certificate, timeout) itself. Unset, nothing of OpenTelemetry is imported: no cost.

Spans leave the register's trust boundary (a tracing backend is run by another team), so what
they carry is an allow list: the RPC's names, its status code, the caller's address and user
agent. Status descriptions (our error messages, which may name a PIN the caller sent or a
replacement PIN) and exception events are dropped before export, whatever a later version of
the instrumentation decides to record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

SERVICE_NAME = "citizen-registry"


class TracingNotInstalled(RuntimeError):
    """An OTLP endpoint is configured but the otel extra is not installed."""


# Span attributes that may leave the process (semantic conventions, old and new names).
KEPT_ATTRIBUTES = frozenset(
    {
        "rpc.system",
        "rpc.service",
        "rpc.method",
        "rpc.grpc.status_code",
        "rpc.user_agent",
        "net.peer.ip",
        "net.peer.name",
        "net.peer.port",
        "network.peer.address",
        "network.peer.port",
        "client.address",
        "client.port",
    }
)


def endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint traces go to, or None when tracing is off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def interceptors(
    worker_index: int | None, env: Mapping[str, str] | None = None
) -> tuple[list[grpc.aio.ServerInterceptor], Callable[[], None]]:
    """The tracing interceptor and what flushes its spans at shutdown; ([], no-op) when off.

    Raises:
        TracingNotInstalled: an endpoint is set but OpenTelemetry is not installed.
    """
    if endpoint(env) is None:
        return [], lambda: None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingNotInstalled(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'citizen-registry[otel]'"
        ) from exc
    env = os.environ if env is None else env
    attributes: dict[str, Any] = {}
    if not env.get("OTEL_SERVICE_NAME", "").strip():
        attributes["service.name"] = SERVICE_NAME
    if worker_index is not None:
        attributes["service.instance.id"] = f"{os.uname().nodename}/worker-{worker_index}"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(_redacting(OTLPSpanExporter())))
    interceptor = aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return [interceptor], provider.shutdown


def _redacting(inner: Any) -> Any:
    """An exporter passing on each span with only KEPT_ATTRIBUTES, its status code without
    description, and no events."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.trace import Status

    def redacted(span: ReadableSpan) -> ReadableSpan:
        attributes = {k: v for k, v in (span.attributes or {}).items() if k in KEPT_ATTRIBUTES}
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=attributes,
            events=(),
            links=span.links,
            kind=span.kind,
            status=Status(span.status.status_code),
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    class Redacting(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            result: SpanExportResult = inner.export([redacted(span) for span in spans])
            return result

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return bool(inner.force_flush(timeout_millis))

    return Redacting()
