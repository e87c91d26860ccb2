"""OpenTelemetry traces (issue 18 item 3): OTLP spans of every RPC to a real collector, with
nothing personal in them, and nothing of OpenTelemetry loaded when no endpoint is set."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from registry.v1 import (
    card_service_pb2_grpc,
    civil_registration_service_pb2_grpc,
    identity_service_pb2_grpc,
)
from registry.v1 import identity_service_pb2 as identity_pb
from tests.conftest import ServerThread, server_settings, wait_serving
from tests.grpc.cards import issue_request
from tests.helpers import birth_request

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
NEVER_ISSUED = "001099999917"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every export request as received."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Any]:
        with self._lock:
            return [
                span
                for request in self.requests
                for resource in request.resource_spans
                for scope in resource.scope_spans
                for span in scope.spans
            ]

    def raw(self) -> bytes:
        with self._lock:
            return b"".join(r.SerializeToString() for r in self.requests)

    def resources(self) -> list[Any]:
        with self._lock:
            return [rs.resource for r in self.requests for rs in r.resource_spans]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(0)


@pytest.fixture(scope="module")
def traced(runtime_dsn: str, collector) -> Iterator[ServerThread]:
    _, port = collector
    with pytest.MonkeyPatch.context() as env:
        # Read when the server builds its exporter; unset again before any other server starts.
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        srv = ServerThread(server_settings(), runtime_dsn).start()
        wait_serving(srv.target)
    try:
        yield srv
    finally:
        srv.stop()


def attributes(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


def wait_for_spans(receiver: Collector, names: set[str], timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = [s for s in receiver.spans() if s.name in names]
        if {s.name for s in spans} >= names:
            return spans
        time.sleep(0.05)
    raise AssertionError(f"spans {sorted(names)} not exported within {timeout} s")


def test_each_call_is_one_span_with_its_method_and_grpc_status(traced, collector, agency):
    receiver, _ = collector
    with grpc.insecure_channel(traced.target) as channel:
        civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
        civil.RegisterBirth(birth_request(), metadata=agency.metadata())
        with pytest.raises(grpc.RpcError) as refused:
            identity.VerifyIdentity(identity_pb.VerifyIdentityRequest(pin=NEVER_ISSUED, sex=1))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    birth = "/registry.v1.CivilRegistrationService/RegisterBirth"
    verify = "/registry.v1.IdentityService/VerifyIdentity"
    spans = {s.name: s for s in wait_for_spans(receiver, {birth, verify})}
    assert attributes(spans[birth])["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert attributes(spans[birth])["rpc.method"] == "RegisterBirth"
    assert attributes(spans[verify])["rpc.grpc.status_code"] == 16  # UNAUTHENTICATED
    # (span status stays UNSET: by the semantic conventions a caller's error is no server error)
    names = {
        kv.value.string_value
        for resource in receiver.resources()
        for kv in resource.attributes
        if kv.key == "service.name"
    }
    assert names == {"citizen-registry"}


def test_a_callers_trace_continues_in_the_registry(traced, collector, agency):
    receiver, _ = collector
    parent = "00f067aa0ba902b7"
    metadata = (*agency.metadata(), ("traceparent", f"00-{TRACE_ID}-{parent}-01"))
    with grpc.insecure_channel(traced.target) as channel:
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
        identity.GetSigningKeys(identity_pb.GetSigningKeysRequest(), metadata=metadata)
    [span] = [
        s
        for s in wait_for_spans(receiver, {"/registry.v1.IdentityService/GetSigningKeys"})
        if s.trace_id.hex() == TRACE_ID
    ]
    assert span.parent_span_id.hex() == parent


def test_no_pin_token_or_error_text_leaves_in_a_span(traced, collector, agency):
    # IssueCard for a PIN nobody has: the error's message names the PIN ("no citizen has PIN
    # ..."), which the instrumentation would put in the span's status description.
    receiver, _ = collector
    metadata = agency.metadata()
    token = dict(metadata)["authorization"].removeprefix("Bearer ")
    with grpc.insecure_channel(traced.target) as channel:
        civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
        cards = card_service_pb2_grpc.CardServiceStub(channel)
        born = civil.RegisterBirth(birth_request(), metadata=metadata).citizen.pin
        with pytest.raises(grpc.RpcError) as missing:
            cards.IssueCard(issue_request(NEVER_ISSUED), metadata=metadata)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert NEVER_ISSUED in missing.value.details()  # the caller is told; the trace is not
    spans = wait_for_spans(receiver, {"/registry.v1.CardService/IssueCard"})
    assert any(attributes(s)["rpc.grpc.status_code"] == 5 for s in spans)  # NOT_FOUND
    raw = receiver.raw()
    for secret in (born, NEVER_ISSUED, token, missing.value.details()):
        assert secret.encode() not in raw
    for span in receiver.spans():
        assert not span.events and not span.status.message
        assert set(attributes(span)) <= {
            "rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "rpc.user_agent",
            "net.peer.ip", "net.peer.name", "net.peer.port",
        }  # fmt: skip


def test_without_an_endpoint_nothing_of_opentelemetry_is_loaded(tmp_path):
    probe = (
        "import sys\n"
        "from registry.grpc import tracing\n"
        "assert tracing.interceptors(None, env={})[0] == []\n"
        "assert tracing.interceptors(None, env={'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://x:4317',"
        " 'OTEL_SDK_DISABLED': 'true'})[0] == []\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_an_endpoint_without_opentelemetry_installed_stops_the_start_naming_the_fix():
    probe = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if the otel extra were not installed\n"
        "from registry.grpc import tracing\n"
        "try:\n"
        "    tracing.interceptors(None, env={'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://x:4317'})\n"
        "except tracing.TracingNotInstalled as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "citizen-registry[otel]" in out.stdout
