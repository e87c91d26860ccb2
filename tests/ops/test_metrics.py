"""The Prometheus endpoint (REGISTRY_METRICS_LISTEN, issue 18): counts after known calls."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry.config import ConfigError, Settings
from registry.v1 import identity_service_pb2 as pb
from registry.v1 import identity_service_pb2_grpc
from tests.conftest import ServerThread, server_settings, wait_serving
from tests.helpers import birth_request
from tests.ops.metrics import scrape, value

SERVICE = "registry.v1.IdentityService"


@pytest.fixture(scope="module")
def metered(runtime_dsn: str) -> Iterator[ServerThread]:
    settings = server_settings(metrics_listen="127.0.0.1:0", metrics_sample_s=0.2)
    srv = ServerThread(settings, runtime_dsn).start()
    wait_serving(srv.target)
    try:
        yield srv
    finally:
        srv.stop()


def test_scrape_counts_known_calls(metered, agency, civil, make_agency):
    before = scrape(metered)
    with grpc.insecure_channel(metered.target) as channel:
        stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        for _ in range(3):
            stub.VerifyIdentity(
                pb.VerifyIdentityRequest(pin="001060999991", sex=1), metadata=agency.metadata()
            )
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                stub.VerifyIdentity(pb.VerifyIdentityRequest(pin="001060999991", sex=1))
        requests = [
            pb.VerifyIdentityRequest(pin="001060999991", sex=1, correlation_id=str(i))
            for i in range(4)
        ]
        answers = list(stub.BatchVerify(iter(requests), metadata=agency.metadata()))
        assert len(answers) == 4
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    after = scrape(metered)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    unary = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "VerifyIdentity"}
    assert delta("grpc_server_started_total", **unary) == 5
    assert delta("grpc_server_handled_total", **unary, grpc_code="OK") == 3
    assert delta("grpc_server_handled_total", **unary, grpc_code="UNAUTHENTICATED") == 2
    assert delta("grpc_server_handling_seconds_count", **unary) == 5
    assert delta("grpc_server_msg_received_total", **unary) == 5
    assert delta("grpc_server_msg_sent_total", **unary) == 3
    bidi = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "BatchVerify"}
    assert delta("grpc_server_handled_total", **bidi, grpc_code="OK") == 1
    assert delta("grpc_server_msg_received_total", **bidi) == 4
    assert delta("grpc_server_msg_sent_total", **bidi) == 4
    health = {
        "grpc_type": "unary",
        "grpc_service": "grpc.health.v1.Health",
        "grpc_method": "Check",
    }
    assert delta("grpc_server_handled_total", **health, grpc_code="OK") == 1


def test_refused_calls_are_counted_per_agency(metered, make_agency):
    limited = make_agency(rate_limit=1)
    with grpc.insecure_channel(metered.target) as channel:
        wait_serving(metered.target)
        stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        codes = []
        for _ in range(6):
            try:
                stub.VerifyIdentity(
                    pb.VerifyIdentityRequest(pin="001060999991", sex=1), metadata=limited.metadata()
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert refused >= 1

    def counted() -> float:
        return sum(
            v
            for (name, labels), v in scrape(metered).items()
            if name == "registry_calls_refused_total" and ("agency", limited.id) in labels
        )

    # The gate counts a refusal as the call ends, after the status may have reached us: the
    # last one can be counted a moment later (seen once with both cores burning, 4 of 5).
    deadline = time.monotonic() + 10
    while counted() < refused and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted() == refused


def test_gauges_are_sampled_and_no_label_carries_personal_data(metered, agency, civil):
    pin = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
    token = agency.token()
    sampled = None
    for _ in range(100):  # sampled every 0.2 s
        samples = scrape(metered)
        fills = [labels for (name, labels) in samples if name == "registry_pin_bucket_fill_ratio"]
        if fills and value(samples, "registry_db_pool_connections") > 0:
            sampled = samples
            break
        time.sleep(0.1)
    assert sampled is not None, "gauges never sampled"
    for labels in fills:
        (bucket,) = (v for k, v in labels if k == "bucket")
        assert re.fullmatch(r"\d{3}-\d-\d{2}", bucket)
    assert ("registry_change_feed_lag_seconds", ()) in sampled
    assert ("registry_audit_queue_entries", ()) in sampled
    assert ("registry_audit_checkpoint_age_seconds", ()) in sampled
    text = str(sampled[("__text__", ())])
    assert pin not in text and token not in text
    assert not re.search(r'"\d{12}"', text)  # no PIN-shaped label value


def test_metrics_endpoint_is_loopback_unless_allowed():
    with pytest.raises(ConfigError, match="REGISTRY_METRICS_LISTEN"):
        Settings(metrics_listen="0.0.0.0:9100").check()
    Settings(metrics_listen="0.0.0.0:9100", allow_insecure_listen=True).check()
    assert Settings.from_env({"REGISTRY_METRICS_LISTEN": "127.0.0.1:9464"}).metrics_listen == (
        "127.0.0.1:9464"
    )
    assert Settings.from_env({}).metrics_listen is None  # off by default
