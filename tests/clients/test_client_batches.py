"""The Python client's chunked calls against the real server: import_citizens_batched resumes
from the last acknowledgement after UNAVAILABLE, verify_many answers in order (sync and async)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import grpc
import pytest

from registry.rules.model import CITIZEN_FIELDS
from tests.clients.failures import _LostResponse
from tests.conftest import private_pem
from tests.grpc.imports import name


@pytest.fixture(scope="module")
def rc(registry_client: Any) -> Any:
    return registry_client


@pytest.fixture(scope="module")
def importer(make_agency):
    return make_agency(fields=tuple(CITIZEN_FIELDS), miss_budget=1_000_000)


def connect(rc, server, agency, **kwargs):
    return rc.RegistryClient(
        server.target,
        agency.id,
        agency.kid,
        private_pem(agency.private_key),
        initial_backoff=0.01,
        **kwargs,
    )


def rows(n, tag="Khách"):
    return [
        (
            f"c-{uuid.uuid4().hex[:10]}",
            {
                "full_name": name(tag),
                "date_of_birth": dt.date(1970 + i % 30, 1 + i % 12, 1 + i % 28),
                "sex": 2 if i % 2 else 1,
                "registration_province_code": "001",
            },
        )
        for i in range(n)
    ]


class _Acked:
    """Wraps a response stream: after `keep` answers the connection is lost."""

    def __init__(self, call: Any, keep: int):
        self._call, self._iter, self._left = call, iter(call), keep

    def __iter__(self) -> _Acked:
        return self

    def __next__(self) -> Any:
        if self._left == 0:
            self._call.cancel()
            raise _LostResponse()
        self._left -= 1
        return next(self._iter)

    def cancel(self) -> bool:
        return self._call.cancel()


class _BreakFirstStream(grpc.StreamStreamClientInterceptor):
    """The first stream loses its connection after `keep` acknowledgements."""

    def __init__(self, keep: int):
        self.keep = keep
        self.calls = 0

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        self.calls += 1
        call = continuation(client_call_details, request_iterator)
        return _Acked(call, self.keep) if self.calls == 1 else call


def stored(db, agency, records):
    return db.fetch(
        "SELECT pin FROM import_sources WHERE agency_id = $1 AND source_id = ANY($2)",
        agency.id,
        [s for s, _ in records],
    )


def test_import_resumes_from_the_last_ack_after_unavailable(rc, server, importer, db):
    records = rows(230)
    breaker = _BreakFirstStream(keep=2)
    with connect(rc, server, importer, interceptors=[breaker]) as client:
        summary = client.import_citizens_batched(records, import_id="client-run", batch_size=50)
    assert breaker.calls == 2  # one broken stream, one resumed
    assert (summary.received, summary.created, summary.duplicates) == (230, 230, 0)
    assert summary.assigned_pins == 230
    pins = stored(db, importer, records)
    assert len(pins) == 230 and len({r["pin"] for r in pins}) == 230
    # Run again, same import: every batch is replayed with its counts, nothing written.
    before = db.fetchval("SELECT count(*) FROM citizens")
    with connect(rc, server, importer) as client:
        again = client.import_citizens_batched(records, import_id="client-run", batch_size=50)
    assert (again.received, again.created) == (230, 230)
    assert db.fetchval("SELECT count(*) FROM citizens") == before


def test_import_without_retries_raises_unavailable(rc, server, importer):
    with (
        connect(
            rc, server, importer, interceptors=[_BreakFirstStream(keep=1)], max_attempts=1
        ) as client,
        pytest.raises(rc.Unavailable),
    ):
        client.import_citizens_batched(rows(20), import_id="no-retry", batch_size=5)


def test_verify_many_answers_every_claim_in_order(rc, server, importer, db):
    records = rows(30, tag="Xác")
    with connect(rc, server, importer) as client:
        client.import_citizens_batched(records, import_id="to-verify", batch_size=30)
        pins = [  # the assigned PINs, in record order
            r["pin"]
            for r in db.fetch(
                "SELECT s.pin FROM unnest($2::text[]) WITH ORDINALITY AS u(source_id, i) "
                "JOIN import_sources s ON s.source_id = u.source_id AND s.agency_id = $1 "
                "ORDER BY u.i",
                importer.id,
                [s for s, _ in records],
            )
        ]
        claims = [
            rc.VerifyRequest(pin, full_name=fields["full_name"], correlation_id=f"k{i}")
            for i, (pin, (_, fields)) in enumerate(zip(pins, records, strict=True))
        ]
        claims.insert(7, rc.VerifyRequest("123", full_name="x", correlation_id="bad"))
        answers = list(client.verify_many(claims, batch_size=8))
    assert [a.correlation_id for a in answers] == [c.correlation_id for c in claims]
    assert all(a.result is rc.VerifyResult.MATCH for a in answers if a.correlation_id != "bad")
    assert isinstance(answers[7].error, rc.InvalidArgument)

    async def go() -> list[Any]:
        async with rc.AsyncRegistryClient(
            server.target, importer.id, importer.kid, private_pem(importer.private_key)
        ) as c:
            more = rows(12, tag="Bất")
            summary = await c.import_citizens_batched(more, import_id="async-run", batch_size=5)
            assert (summary.received, summary.created) == (12, 12)
            return [a async for a in c.verify_many(claims, batch_size=10)]

    async_answers = asyncio.run(go())
    assert [a.result for a in async_answers] == [a.result for a in answers]


def test_verify_many_resends_unanswered_batches_after_unavailable(rc, server, importer, db):
    """The stream is lost after two answers: the next stream carries the batches not answered
    yet, and every claim is answered exactly once, in order."""
    records = rows(25, tag="Lại")
    with connect(rc, server, importer) as client:
        client.import_citizens_batched(records, import_id="verify-resume", batch_size=25)
    pins = dict(
        db.fetch(
            "SELECT source_id, pin FROM import_sources WHERE agency_id = $1 "
            "AND source_id = ANY($2)",
            importer.id,
            [s for s, _ in records],
        )
    )
    claims = [
        rc.VerifyRequest(pins[source], full_name=fields["full_name"], correlation_id=f"r{i}")
        for i, (source, fields) in enumerate(records)
    ]
    breaker = _BreakFirstStream(keep=2)
    with connect(rc, server, importer, interceptors=[breaker]) as client:
        answers = list(client.verify_many(claims, batch_size=4))
    assert breaker.calls == 2
    assert [a.correlation_id for a in answers] == [c.correlation_id for c in claims]
    assert all(a.result is rc.VerifyResult.MATCH for a in answers)
    with (
        connect(
            rc, server, importer, interceptors=[_BreakFirstStream(keep=1)], max_attempts=1
        ) as client,
        pytest.raises(rc.Unavailable),
    ):
        list(client.verify_many(claims, batch_size=4))
