"""A client that waits for each answer before sending its next message is answered at once on
every bidirectional stream (ImportCitizenBatches: tests/grpc/test_import_batches.py): no
answer waits for the message after it."""

from __future__ import annotations

import threading

import pytest

from registry.v1 import citizen_pb2
from registry.v1 import identity_service_pb2 as pb
from tests.helpers import birth_request


def lockstep(call, messages):
    """Send each message only once the answer to the one before has come (10 s at most);
    return (answers, whether each wait was answered)."""
    answered = threading.Semaphore(0)
    waited: list[bool] = []

    def sender():
        for message in messages:
            yield message
            waited.append(answered.acquire(timeout=10))

    answers = []
    for answer in call(sender()):
        answers.append(answer)
        answered.release()
    return answers, waited


def claim(pin, i):
    return pb.VerifyIdentityRequest(pin=pin, sex=citizen_pb2.SEX_MALE, correlation_id=f"q{i}")


@pytest.mark.parametrize("rpc", ["BatchVerify", "VerifyIdentityBatches"])
def test_each_answer_comes_before_the_next_message_is_sent(civil, identity, agency, rpc):
    pin = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
    stub = getattr(identity, rpc)
    if rpc == "BatchVerify":
        messages = [claim(pin, i) for i in range(4)]
    else:
        messages = [pb.VerifyIdentityBatchesRequest(requests=[claim(pin, i)]) for i in range(4)]
    answers, waited = lockstep(
        lambda requests: stub(requests, metadata=agency.metadata(), timeout=60), messages
    )
    assert waited == [True] * 4
    ids = (
        [a.correlation_id for a in answers]
        if rpc == "BatchVerify"
        else [r.correlation_id for a in answers for r in a.responses]
    )
    assert ids == ["q0", "q1", "q2", "q3"]
