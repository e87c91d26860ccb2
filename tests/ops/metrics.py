"""Prometheus samples scraped from a server's metrics endpoint."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerThread


def scrape(srv: ServerThread) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert srv.app is not None and srv.app.metrics_server is not None
    port = srv.app.metrics_server.server_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    samples[("__text__", ())] = text  # type: ignore[assignment]
    return samples


def value(samples: dict[Any, Any], name: str, **labels: str) -> float:
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))
