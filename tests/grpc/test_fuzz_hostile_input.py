"""Fuzzing through a real channel with hostile input: raw bodies that are not protobuf or carry
invalid UTF-8, tokens with any header or claim, oversized metadata. Every call must end with
a code the contract documents (tests/grpc/fuzz_contract.py) and the server must stay up.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from hypothesis import event, example, given
from hypothesis import strategies as st

from tests import fuzz_strategies as fs
from tests.grpc.fuzz_calls import (
    Checker,
    ServerLog,
    assert_still_serving,
    check_status_details,
    error_reason,
    fuzz,
    invoke,
    short,
)
from tests.grpc.fuzz_contract import (
    CALL_TIMEOUT_S,
    RPCS,
    WATCH_TIMEOUT_S,
    C,
    Tables,
    changed,
)
from tests.grpc.fuzz_world import (
    World,
    seeds,
)
from tests.helpers import birth_request, signed_jwt


@pytest.mark.parametrize("rpc", sorted(RPCS))
def test_malformed_bodies_are_refused_cleanly(
    rpc: str, channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    """Bodies that are not protobuf, or carry invalid UTF-8 in string fields."""
    checker = Checker(tables, server_log, world.sentinels)
    seed = (seeds(world)[rpc] or [message_factory.GetMessageClass(RPCS[rpc].request)()])[0]
    valid = seed.SerializeToString()
    info = RPCS[rpc]
    timeout = WATCH_TIMEOUT_S if info.server_streaming and not info.client_streaming else None

    @fuzz(12)
    @given(body=fs.raw_bodies(info.request, valid), data=st.data())
    def run(body: bytes, data: st.DataObject) -> None:
        checker.start()
        bodies = [body]
        if info.client_streaming:
            # Garbage among good messages: each good one must still be answered or counted.
            bodies = data.draw(st.permutations([body, *[valid] * data.draw(st.integers(0, 2))]))
        outcome = invoke(channel, rpc, bodies, world.metadata(), timeout or CALL_TIMEOUT_S)
        what = {"bodies": bodies}
        # Batches acknowledged before a chunked import's stream ended stay written.
        written = rpc == "PopulationService/ImportCitizenBatches" and bool(outcome.responses)
        checker.check(
            rpc, outcome, auth=fs.VALID, what=what, raw=True, unchanged=False if written else None
        )
        if outcome.code == C.OK and info.client_streaming:
            context = f"\nRPC {rpc}: OK\ninput: {short(what)}"
            cls = message_factory.GetMessageClass(info.response)
            if info.server_streaming:
                answered = len(outcome.responses)
                assert answered == len(bodies), f"{answered} answers to {len(bodies)}{context}"
            else:
                received = cls.FromString(outcome.responses[0]).received
                assert received == len(bodies), f"{received} of {len(bodies)} counted{context}"

    run()
    assert_still_serving(channel, world.agency)


def test_tokens_with_any_header_or_claim_value_are_refused_cleanly(
    channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    """Header parameters and claims set to any JSON value (NUL, control characters, 10 kB
    strings, floats, NaN, booleans, huge integers, nested lists and objects), signed with the
    agency's registered key or not signed at all: never a server error, never a traceback.

    The probe is a RegisterBirth without a name: a token that is refused gets UNAUTHENTICATED
    with an ErrorInfo reason; one that happens to be valid after all is admitted and answered
    INVALID_ARGUMENT (or PERMISSION_DENIED, its scope claim narrowed), so nothing is written.
    """
    agency = world.agency
    rpc = "CivilRegistrationService/RegisterBirth"
    body = birth_request(full_name="").SerializeToString()
    before = tables.snapshot()
    server_log.setLevel(logging.WARNING)  # a traceback logged as a warning counts too

    def base() -> tuple[dict[str, Any], dict[str, Any]]:
        now = int(time.time())
        header = {"alg": agency.algorithm, "typ": "JWT", "kid": agency.kid}
        claims = {"iss": agency.id, "aud": "citizen-registry", "iat": now, "exp": now + 300}
        return header, claims

    @fuzz(150)
    @given(contents=st.deferred(lambda: fs.token_contents(*base())), signed=st.booleans())
    @example(contents=({"alg": "ES256", "kid": "k1\x00"}, base()[1]), signed=True)
    @example(contents=(base()[0], {**base()[1], "iss": f"{agency.id}\x00"}), signed=True)
    @example(contents=(base()[0], {**base()[1], "iat": str(int(time.time()))}), signed=True)
    @example(contents=(base()[0], {**base()[1], "exp": "soon"}), signed=False)
    @example(contents=(base()[0], {**base()[1], "kid": "x" * 10_000}), signed=True)
    def run(contents: tuple[Any, Any], signed: bool) -> None:
        header, claims = contents
        key = agency.private_key if signed else None
        token = signed_jwt(header if isinstance(header, dict) else {}, claims, key)
        if not isinstance(header, dict):  # a header that is not an object at all
            token = f"{_b64_any(header)}.{token.split('.', 1)[1]}"
        outcome = invoke(channel, rpc, [body], (("authorization", f"Bearer {token}"),))
        context = (
            f"\nheader: {short(header)}\nclaims: {short(claims)}\nsigned: {signed}"
            f"\n{outcome.code.name} {outcome.details!r}\nserver log:\n{server_log.text()}"
        )
        event(f"{outcome.code.name} {error_reason(outcome.trailing)}")
        assert outcome.code not in (C.INTERNAL, C.UNKNOWN), f"server error{context}"
        admitted = {C.INVALID_ARGUMENT, C.PERMISSION_DENIED}
        assert outcome.code == C.UNAUTHENTICATED or (signed and outcome.code in admitted), (
            f"unexpected answer{context}"
        )
        check_status_details(outcome.code, outcome.trailing, context)
        assert not server_log.records, f"the server logged{context}"

    run()
    assert changed(before, tables.snapshot()) == []
    assert_still_serving(channel, agency)


def _b64_any(value: Any) -> str:
    text = json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


@pytest.mark.parametrize("size", [9 * 1024, 20 * 1024])
def test_oversized_metadata_is_refused_and_the_server_stays_up(
    size: int, channel: grpc.Channel, world: World, tables: Tables, server_log: ServerLog
) -> None:
    """Beyond gRPC's metadata limits the transport refuses the call before the registry sees
    it (RESOURCE_EXHAUSTED without google.rpc details): then nothing may happen either."""
    garbage_token = (("authorization", "Bearer " + "A" * size),)
    cases: list[tuple[tuple[tuple[str, Any], ...], set[grpc.StatusCode]]] = [
        (garbage_token, {C.UNAUTHENTICATED, C.RESOURCE_EXHAUSTED}),
        ((*world.metadata(), ("x-purpose", "p" * size)), {C.OK, C.RESOURCE_EXHAUSTED}),
        ((*world.metadata(), ("x-purpose-bin", b"\xff" * size)), {C.OK, C.RESOURCE_EXHAUSTED}),
    ]
    for pairs, expected in cases:
        before = tables.snapshot()
        body = birth_request().SerializeToString()
        outcome = invoke(channel, "CivilRegistrationService/RegisterBirth", [body], pairs)
        assert outcome.code in expected, (outcome.code, outcome.details)
        if outcome.code == C.UNAUTHENTICATED:
            check_status_details(outcome.code, outcome.trailing, f" ({outcome.details})")
        if outcome.code != C.OK:
            assert changed(before, tables.snapshot()) == []
    assert_still_serving(channel, world.agency)
