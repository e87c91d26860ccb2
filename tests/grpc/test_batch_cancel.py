"""A caller abandoning a BatchVerify or ImportCitizenBatches stream mid-way leaves the server
healthy."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc

from registry.v1 import citizen_pb2
from registry.v1 import identity_service_pb2 as pb
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.grpc.imports import name, record
from tests.helpers import birth_request


async def _task_count() -> int:
    return len(asyncio.all_tasks())


def test_a_cancelled_batch_stream_leaves_no_task_behind_and_the_server_serving(
    civil, identity, agency, server
):
    pin = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
    baseline = server.call(_task_count())
    keep_sending = threading.Event()
    keep_sending.set()

    def endless():
        # Far more than the server buffers, so its queue is full when we cancel.
        i = 0
        while keep_sending.is_set() and i < 200_000:
            yield pb.VerifyIdentityRequest(pin=pin, sex=citizen_pb2.SEX_MALE, correlation_id=str(i))
            i += 1

    call = identity.BatchVerify(endless(), metadata=agency.metadata())
    received = 0
    for answer in call:
        assert answer.result == pb.VERIFY_RESULT_MATCH
        received += 1
        if received == 3000:
            call.cancel()
            break
    keep_sending.clear()
    assert received == 3000
    # The stream's handler and its reader task end: nothing is left blocked on the server.
    deadline = time.monotonic() + 10
    while server.call(_task_count()) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.call(_task_count()) <= baseline, "a cancelled stream left tasks behind"

    # The server still answers a fresh stream promptly and completely.
    started = time.monotonic()
    requests = [
        pb.VerifyIdentityRequest(pin=pin, sex=citizen_pb2.SEX_MALE, correlation_id=f"n{i}")
        for i in range(100)
    ]
    answers = list(identity.BatchVerify(iter(requests), metadata=agency.metadata(), timeout=20))
    assert [a.correlation_id for a in answers] == [f"n{i}" for i in range(100)]
    assert all(a.result == pb.VERIFY_RESULT_MATCH for a in answers)
    assert time.monotonic() - started < 10
    assert call.code() == grpc.StatusCode.CANCELLED


def test_an_import_stream_abandoned_while_the_server_waits_for_its_next_batch_ends_there(
    channel, make_agency, server
):
    """The servicer reads the next batch while it writes one; a caller that goes away while
    the server waits for that batch leaves neither the read nor the handler behind."""
    importer = make_agency(scopes=("population:import",))
    population = pop_grpc.PopulationServiceStub(channel)
    baseline = server.call(_task_count())
    gone = threading.Event()

    def one_batch_then_silence():
        yield pop_pb.ImportCitizenBatchesRequest(
            import_id="abandoned",
            offset=0,
            records=[record(f"ab-{i}", full_name=name("Bỏ")) for i in range(5)],
        )
        gone.wait(20)

    call = population.ImportCitizenBatches(
        one_batch_then_silence(), metadata=importer.metadata(), timeout=30
    )
    ack = next(call)  # acknowledged at its commit, with no next batch in sight
    assert (ack.offset, ack.received, ack.created) == (0, 5, 5)
    assert server.call(_task_count()) > baseline  # the handler waits for the next batch
    call.cancel()
    gone.set()
    deadline = time.monotonic() + 10
    while server.call(_task_count()) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.call(_task_count()) <= baseline, "an abandoned import stream left tasks behind"
    assert call.code() == grpc.StatusCode.CANCELLED
    # The run continues on a new stream from the acknowledged offset.
    more = pop_pb.ImportCitizenBatchesRequest(
        import_id="abandoned",
        offset=5,
        records=[record(f"ab-{i}", full_name=name("Bỏ")) for i in range(5, 8)],
    )
    acks = list(
        population.ImportCitizenBatches(iter([more]), metadata=importer.metadata(), timeout=30)
    )
    assert [(a.offset, a.created, a.replayed) for a in acks] == [(5, 3, False)]
