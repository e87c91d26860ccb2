"""Fuzzing every RPC of the API through a real channel: random messages and streams.

Requests are generated from the protobuf descriptors (tests/fuzz_strategies.py): random
messages and valid requests with a few fields broken. Every call must end with a code the
contract documents for that RPC (never INTERNAL or UNKNOWN), every error must carry its
google.rpc.Status and repeat nothing the register holds about the seeded citizens (SPEC §6)
unless the request itself sent it, a refused call must change no data, and the server must
still serve afterwards (this file runs after test_fuzz_hostile_input.py).
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from hypothesis import example, given
from hypothesis import strategies as st

from registry.v1 import (
    citizen_pb2,
    identity_service_pb2,
    population_service_pb2,
)
from tests import fuzz_strategies as fs
from tests.grpc.fuzz_calls import (
    Checker,
    ServerLog,
    assert_still_serving,
    check_ok_response,
    fuzz,
    invoke,
    replayed,
    short,
)
from tests.grpc.fuzz_contract import (
    DOCUMENTED,
    NOT_YET_IMPLEMENTED,
    READ_ONLY,
    RPCS,
    UNARY,
    WATCH_TIMEOUT_S,
    C,
    Tables,
    changed,
)
from tests.grpc.fuzz_world import (
    World,
    seeds,
)
from tests.helpers import birth_request


def test_the_table_covers_every_rpc_of_the_five_services() -> None:
    assert set(RPCS) == set(DOCUMENTED)
    assert set(RPCS) >= NOT_YET_IMPLEMENTED
    assert set(RPCS) >= READ_ONLY
    assert len(RPCS) == 21
    streaming = {n for n, r in RPCS.items() if r.client_streaming or r.server_streaming}
    assert streaming == {
        "IdentityService/BatchVerify",
        "IdentityService/VerifyIdentityBatches",
        "PopulationService/ImportCitizens",
        "PopulationService/ImportCitizenBatches",
        "PopulationService/WatchChanges",
    }


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", UNARY)
def test_unary_rpc_answers_random_messages_by_the_contract(
    rpc: str,
    channel: grpc.Channel,
    world: World,
    tables: Tables,
    server_log: ServerLog,
) -> None:
    checker = Checker(tables, server_log, world.sentinels)
    request_strategy = fs.requests(RPCS[rpc].request, seeds(world)[rpc], world.hints)
    metadata_strategy = world.call_metadata()

    valid_md = fs.Metadata(world.metadata(), fs.VALID)

    @fuzz(40)
    @given(request=request_strategy, md=metadata_strategy, limited=st.integers(0, 4))
    @example(request=fs.huge_everywhere(RPCS[rpc].request), md=valid_md, limited=1)
    def run(request: Message, md: fs.Metadata, limited: int) -> None:
        checker.start()
        pairs = md.pairs
        if rpc == "IdentityService/GetCitizen" and limited == 0 and md.auth == fs.VALID:
            pairs = world.limited.metadata(world.limited.token())
        outcome = invoke(channel, rpc, [request.SerializeToString()], pairs)
        what = {"request": request, "metadata": pairs}
        if outcome.code == C.OK:
            check_ok_response(rpc, outcome, [request], f"\nRPC {rpc}\ninput: {short(what)}")
        checker.check(
            rpc,
            outcome,
            auth=md.auth,
            what=what,
            unchanged=True if replayed(outcome, rpc) else None,
        )

    for request in explicit_examples(world).get(rpc, []):
        run = example(request=request, md=valid_md, limited=1)(run)
    run()
    assert_still_serving(channel, world.agency)


def explicit_examples(w: World) -> dict[str, list[Message]]:
    """Inputs always tried first (regressions: answers whose trailers outgrew gRPC's limits,
    a field name with a NUL that the protobuf runtime's name map took for the field)."""
    many = field_mask_pb2.FieldMask(paths=[""] * 400)
    long = field_mask_pb2.FieldMask(paths=["x" * 20_000])
    nul = field_mask_pb2.FieldMask(paths=["full_name\x00", "sex\x00x"])
    return {
        "IdentityService/GetCitizen": [
            identity_service_pb2.GetCitizenRequest(pin=w.adult_pin, read_mask=mask)
            for mask in (many, long, nul)
        ],
        "PopulationService/UpdateCitizen": [
            population_service_pb2.UpdateCitizenRequest(
                request_id=str(uuid.uuid4()),
                citizen=citizen_pb2.Citizen(pin=w.other_pin),
                update_mask=mask,
                expected_version=1,
            )
            for mask in (many, long, nul)
        ],
    }


# Client-streaming and bidirectional RPCs: (examples per run, most messages in one stream).
STREAMS = {
    "IdentityService/BatchVerify": (50, 6),
    "PopulationService/ImportCitizens": (25, 5),
    "IdentityService/VerifyIdentityBatches": (25, 3),
    "PopulationService/ImportCitizenBatches": (25, 3),
}


@pytest.mark.parametrize("rpc", list(STREAMS))
def test_streaming_rpc_answers_random_streams_by_the_contract(
    rpc: str, channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    examples, longest = STREAMS[rpc]
    checker = Checker(tables, server_log, world.sentinels)
    item = fs.requests(RPCS[rpc].request, seeds(world)[rpc], world.hints)

    @fuzz(examples)
    @given(
        items=st.lists(item, max_size=longest),
        md=world.call_metadata(),
    )
    def run(items: list[Message], md: fs.Metadata) -> None:
        checker.start()
        outcome = invoke(channel, rpc, [m.SerializeToString() for m in items], md.pairs)
        what = {"requests": items, "metadata": md.pairs}
        if outcome.code == C.OK:
            check_ok_response(rpc, outcome, items, f"\nRPC {rpc}\ninput: {short(what)}")
        # Batches acknowledged before a chunked import's stream ended stay written.
        written = rpc == "PopulationService/ImportCitizenBatches" and bool(outcome.responses)
        checker.check(rpc, outcome, auth=md.auth, what=what, unchanged=False if written else None)

    run()
    assert_still_serving(channel, world.agency)


def test_watch_changes_answers_random_requests_by_the_contract(
    channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    rpc = "PopulationService/WatchChanges"
    checker = Checker(tables, server_log, world.sentinels)

    @fuzz(20)
    @given(
        request=fs.requests(RPCS[rpc].request, seeds(world)[rpc], world.hints),
        md=world.call_metadata(),
    )
    def run(request: Message, md: fs.Metadata) -> None:
        checker.start()
        outcome = invoke(
            channel, rpc, [request.SerializeToString()], md.pairs, timeout=WATCH_TIMEOUT_S
        )
        what = {"request": request, "metadata": md.pairs}
        if outcome.code == C.OK or outcome.own_deadline or outcome.cancelled_by_us:
            check_ok_response(rpc, outcome, [request], f"\nRPC {rpc}\ninput: {short(what)}")
        checker.check(rpc, outcome, auth=md.auth, what=what)

    run()
    assert_still_serving(channel, world.agency)


def test_snapshots_see_a_change(channel: grpc.Channel, world: World, tables: Tables) -> None:
    """The no-change assertions are not vacuous: a registered birth shows in the snapshot."""
    before = tables.snapshot()
    assert tables.snapshot() == before
    body = birth_request().SerializeToString()
    outcome = invoke(channel, "CivilRegistrationService/RegisterBirth", [body], world.metadata())
    assert outcome.code == C.OK, outcome.details
    diff = changed(before, tables.snapshot())
    # pin_buckets changes only when the server reserves a new range of counter values.
    assert {d.split(":")[0] for d in diff} >= {"citizens", "idempotency_keys", "change_events"}


def test_server_still_serves_after_the_fuzzing(channel: grpc.Channel, world: World) -> None:
    assert_still_serving(channel, world.agency)
