"""Bounded work before validation (registry/grpc/bounds.py), through the channel: unary requests
over 64 KiB are refused unparsed, every list beyond its maximum count is refused naming it, and
the review's attack (megabytes of read_mask paths and WatchChanges types) neither stalls other
agencies nor grows the server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from registry.grpc.bounds import MAX_UNARY_REQUEST_BYTES
from registry.v1 import citizen_pb2
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.conftest import AgencyFactory, ServerThread
from tests.conftest import TestAgency as Agency
from tests.helpers import birth_request, call_error, decode

C = grpc.StatusCode
GET_CITIZEN = "/registry.v1.IdentityService/GetCitizen"
WATCH = "/registry.v1.PopulationService/WatchChanges"
REGISTER_BIRTH = "/registry.v1.CivilRegistrationService/RegisterBirth"


def _raw(body: bytes) -> bytes:
    return body


@pytest.fixture(scope="module")
def population(channel: grpc.Channel) -> pop_grpc.PopulationServiceStub:
    return pop_grpc.PopulationServiceStub(channel)


@pytest.fixture(scope="module")
def citizen(civil: Any, agency: Agency) -> citizen_pb2.Citizen:
    return civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen


# -- size ---------------------------------------------------------------------------------------


def test_a_unary_request_over_64_kib_is_refused_unparsed(civil, channel, agency, db):
    before = db.counts()
    body = birth_request(full_name="A" * MAX_UNARY_REQUEST_BYTES).SerializeToString()
    assert MAX_UNARY_REQUEST_BYTES < len(body) < 2 * MAX_UNARY_REQUEST_BYTES
    call = channel.unary_unary(REGISTER_BIRTH, _raw, _raw)
    with pytest.raises(grpc.RpcError) as info:
        call(body, metadata=agency.metadata(), timeout=10)
    err = decode(info.value)
    assert (err.code, err.reason) == (C.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE"), err
    assert err.quota_subjects == ["request"]
    assert err.metadata == {"max_bytes": "65536", "size_bytes": str(len(body))}
    assert err.retry_delay_s is None  # sending it again will not help
    assert db.counts() == before

    # Just under the limit the request is parsed and validated like any other.
    under = birth_request(full_name="A" * (MAX_UNARY_REQUEST_BYTES - 400))
    assert len(under.SerializeToString()) <= MAX_UNARY_REQUEST_BYTES
    err = call_error(civil.RegisterBirth, under, metadata=agency.metadata())
    assert (err.code, err.bad_fields) == (C.INVALID_ARGUMENT, ["full_name"]), err


def test_an_oversized_request_without_a_token_is_unauthenticated(channel):
    body = b"\x0a" + b"\xff\xff\x04" + b"A" * 70_000  # not even a valid message
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(REGISTER_BIRTH, _raw, _raw)(body, timeout=10)
    assert decode(info.value).reason == "TOKEN_MISSING"


def test_messages_of_request_streams_keep_the_server_wide_limit(population, agency):
    # A 200 KB record on ImportCitizens is parsed and rejected for its content, on its own.
    records = [
        pop_pb.ImportCitizensRequest(
            source_id=f"big-{uuid.uuid4().hex}",
            citizen=citizen_pb2.Citizen(full_name="Lê Văn Bình", hometown="x" * 200_000),
        ),
    ]
    response = population.ImportCitizens(iter(records), metadata=agency.metadata(), timeout=30)
    assert (response.received, response.rejected) == (1, 1)
    assert "hometown" in response.rejects[0].reason


# -- counts -------------------------------------------------------------------------------------


def test_read_mask_beyond_64_paths_is_refused_naming_it(identity, agency, citizen):
    mask = field_mask_pb2.FieldMask(paths=["pin"] * 64)
    ok = identity.GetCitizen(
        id_pb.GetCitizenRequest(pin=citizen.pin, read_mask=mask), metadata=agency.metadata()
    )
    assert ok.citizen.pin == citizen.pin
    mask.paths.append("pin")
    err = call_error(
        identity.GetCitizen,
        id_pb.GetCitizenRequest(pin=citizen.pin, read_mask=mask),
        metadata=agency.metadata(),
    )
    assert (err.code, err.reason, err.bad_fields) == (
        C.INVALID_ARGUMENT,
        "INVALID_FIELDS",
        ["read_mask.paths"],
    ), err


def test_update_citizen_lists_beyond_their_maximum_are_refused(population, agency, citizen):
    request = pop_pb.UpdateCitizenRequest(
        request_id=str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=citizen.pin, other_names=["Bình"] * 21),
        update_mask=field_mask_pb2.FieldMask(paths=["other_names"] * 65),
        expected_version=1,
    )
    err = call_error(population.UpdateCitizen, request, metadata=agency.metadata())
    assert err.code == C.INVALID_ARGUMENT
    assert err.bad_fields == ["citizen.other_names", "update_mask.paths"]


def test_watch_changes_types_beyond_16_are_refused(population, agency):
    stream = population.WatchChanges(
        pop_pb.WatchChangesRequest(types=[1] * 17), metadata=agency.metadata(), timeout=5
    )
    with pytest.raises(grpc.RpcError) as info:
        next(stream)
    err = decode(info.value)
    assert (err.code, err.bad_fields) == (C.INVALID_ARGUMENT, ["types"]), err


def test_an_imported_record_with_too_many_names_is_rejected_on_its_own(population, agency):
    def record(names: int) -> pop_pb.ImportCitizensRequest:
        return pop_pb.ImportCitizensRequest(
            source_id=f"names-{uuid.uuid4().hex}",
            citizen=citizen_pb2.Citizen(
                full_name="Đỗ Thị Lan",
                other_names=["Lan"] * names,
                date_of_birth=birth_request().date_of_birth,
                sex=citizen_pb2.SEX_FEMALE,
                registration_province_code="001",
            ),
        )

    records = [record(20), record(21)]
    response = population.ImportCitizens(iter(records), metadata=agency.metadata(), timeout=30)
    assert (response.received, response.created, response.rejected) == (2, 1, 1), response
    [reject] = response.rejects
    assert reject.source_id == records[1].source_id
    assert "citizen.other_names: at most 20 items (got 21)" in reject.reason


# -- the review's attack --------------------------------------------------------------------------

# The attacker runs in a process of its own, as the reviewer's did: what the test process then
# measures is the server (and the victim's client), not the attacker's own buffers and CPU.
ATTACKER = r"""
import json, sys, threading, grpc
from google.protobuf import field_mask_pb2
from registry.v1 import identity_service_pb2, population_service_pb2
from grpc_status import rpc_status
from google.rpc import error_details_pb2

target, token, pin = sys.argv[1:4]
md = (("authorization", "Bearer " + token),)
read = identity_service_pb2.GetCitizenRequest(
    pin=pin, read_mask=field_mask_pb2.FieldMask(paths=["abcdefg"] * 400_000)
).SerializeToString()
watch = population_service_pb2.WatchChangesRequest(types=[1] * 1_000_000).SerializeToString()
print(json.dumps({"read": len(read), "watch": len(watch)}), flush=True)
stop = threading.Event()
printing = threading.Lock()
raw = lambda b: b

def reason(error):
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""

def attack(body, method, streaming):
    with grpc.insecure_channel(target) as channel:
        call = (channel.unary_stream if streaming else channel.unary_unary)(method, raw, raw)
        while not stop.is_set():
            try:
                result = call(body, metadata=md, timeout=10)
                if streaming:
                    next(iter(result))
                answer = ("OK", "")
            except grpc.RpcError as error:
                answer = (error.code().name, reason(error))
            with printing:
                print(json.dumps(answer), flush=True)

threads = [threading.Thread(target=attack, args=(read, "{get}", False)) for _ in range(4)]
threads.append(threading.Thread(target=attack, args=(watch, "{watch}", True)))
for thread in threads:
    thread.start()
sys.stdin.read()  # until the test closes it
stop.set()
for thread in threads:
    thread.join()
""".replace("{get}", GET_CITIZEN).replace("{watch}", WATCH)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_megabytes_of_list_items_neither_stall_other_agencies_nor_grow_the_server(
    server: ServerThread, civil: Any, identity: Any, make_agency: AgencyFactory
):
    """Four concurrent 3.6 MB GetCitizen requests (400,000 read_mask paths each) and a 1 MB
    WatchChanges.types, sent again and again by one agency, while another agency verifies
    identities: its slowest of 20 verifications stays under 250 ms, and the server's process
    grows by less than 100 MB while the attack goes on. Before the bounds, the review measured
    stalls of 2.3-3.0 s and +370 MB for four such requests; here the victim's calls then miss
    their 10 s deadline.

    Memory is measured from the moment the attack is under way (10 calls answered): the first
    calls size gRPC's transport buffers and malloc's arenas for 3.6 MB messages once (+30-45 MB
    on the 2-core machine, whatever the registry does); what must not happen is growth with
    what the attacker sends."""
    attacker, victim = make_agency(), make_agency()
    person = civil.RegisterBirth(birth_request(), metadata=victim.metadata(), timeout=10).citizen
    check = id_pb.VerifyIdentityRequest(pin=person.pin, full_name=person.full_name)
    identity.VerifyIdentity(check, metadata=victim.metadata(), timeout=10)  # warm

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    process = subprocess.Popen(
        [sys.executable, "-c", ATTACKER, server.target, attacker.token(), person.pin],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    answers: list[tuple[str, str]] = []
    latencies = []
    try:
        sizes = json.loads(process.stdout.readline())
        assert sizes["read"] > 3_400_000 and sizes["watch"] > 1_000_000, sizes
        for _ in range(10):  # the attack is under way
            answers.append(tuple(json.loads(process.stdout.readline())))
        baseline = peak[0] = _rss_bytes()
        for _ in range(20):
            started = time.perf_counter()
            answer = identity.VerifyIdentity(check, metadata=victim.metadata(), timeout=10)
            latencies.append(time.perf_counter() - started)
            assert answer.result == id_pb.VERIFY_RESULT_MATCH
            time.sleep(0.02)
    finally:
        process.stdin.close()
        rest = process.stdout.read()
        process.wait(30)
        stop.set()
        sampler.join()
    answers.extend(tuple(json.loads(line)) for line in rest.splitlines())

    slowest = max(latencies)
    growth = peak[0] - baseline
    print(f"{len(answers)} attack calls; slowest verification {slowest * 1000:.0f} ms; "
          f"RSS {baseline / 2**20:.0f} -> {peak[0] / 2**20:.0f} MB")  # fmt: skip
    # The target is 250 ms (measured 67-164 ms on the quiet 2-core machine); the assertion allows
    # 1 s so that a CI box loaded by other work cannot fail it (304 ms was seen once with the
    # whole suite and two other suites running), while the unbounded server stalled 2.3-3.0 s
    # and its victims then missed a 10 s deadline: the regression still turns this red.
    assert slowest < 1.0, f"verifications took up to {slowest * 1000:.0f} ms under the attack"
    assert growth < 100 * 1024 * 1024, f"the server grew by {growth / 2**20:.0f} MB"
    assert set(answers) == {("RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE")}, set(answers)
