"""`registry serve` as an operator runs it, configured only by its environment.

One server process for the module, started with REGISTRY_JWT_AUDIENCE,
REGISTRY_ATTESTATION_LIFETIME_S, REGISTRY_POOL_MIN/MAX, REGISTRY_AGENCY_REFRESH_S (an hour, so
that only the database NOTIFY can lock a disabled agency out in time) and REGISTRY_LOG_LEVEL=DEBUG
(the most it will ever log). Every token the module sends and every PIN its calls touch is
remembered; the last test drains the server with SIGTERM while a stream is in flight and then
reads every line the process wrote: none may carry one of them.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from registry.v1 import (
    change_pb2,
    civil_registration_service_pb2_grpc,
    identity_service_pb2_grpc,
    population_service_pb2_grpc,
)
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import population_service_pb2 as pop_pb
from tests.conftest import DB, AgencyFactory, server_settings, wait_serving
from tests.conftest import TestAgency as Agency
from tests.helpers import birth_request, decode

pytestmark = pytest.mark.slow

AUDIENCE = "registry-i14.example"
ATTESTATION_LIFETIME_S = 3600
POOL_MIN = 7
REGISTRY = Path(sys.executable).parent / "registry"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _registry_backends(db: DB) -> set[int]:
    rows = db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'citizen-registry' "
        "AND datname = current_database()"
    )
    return {r["pid"] for r in rows}


class Served:
    """The server process, its stderr lines, and every secret the tests sent it."""

    def __init__(self, proc: subprocess.Popen[str], target: str, backends_before: set[int]):
        self.proc = proc
        self.target = target
        self.backends_before = backends_before
        self.lines: list[str] = []
        self.tokens: set[str] = set()
        self.pins: set[str] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.channel = grpc.insecure_channel(target)
        self.civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(self.channel)
        self.identity = identity_service_pb2_grpc.IdentityServiceStub(self.channel)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def metadata(self, agency: Agency, **claims: Any) -> tuple[tuple[str, str], ...]:
        token = agency.token(**{"audience": AUDIENCE, **claims})
        self.tokens.add(token)
        return agency.metadata(token, purpose="kiểm tra nhật ký".encode().hex())

    def birth(self, agency: Agency) -> str:
        pin: str = self.civil.RegisterBirth(
            birth_request(), metadata=self.metadata(agency), timeout=30
        ).citizen.pin
        self.pins.add(pin)
        return pin

    def wait_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no such log line within {timeout} s:\n" + "\n".join(self.lines))


@pytest.fixture(scope="module")
def served(runtime_dsn: str, db: DB) -> Iterator[Served]:
    port = _free_port()
    env = {
        **os.environ,
        "REGISTRY_LISTEN": f"127.0.0.1:{port}",
        "REGISTRY_DATABASE_URL": runtime_dsn,
        "REGISTRY_SIGNING_KEY_DIR": str(server_settings().signing_keys_path),
        "REGISTRY_JWT_AUDIENCE": AUDIENCE,
        "REGISTRY_ATTESTATION_LIFETIME_S": str(ATTESTATION_LIFETIME_S),
        "REGISTRY_POOL_MIN": str(POOL_MIN),
        "REGISTRY_POOL_MAX": str(POOL_MIN + 1),
        "REGISTRY_AGENCY_REFRESH_S": "3600",
        "REGISTRY_LOG_LEVEL": "DEBUG",
    }
    env.pop("REGISTRY_OWNER_DATABASE_URL", None)
    before = _registry_backends(db)
    proc = subprocess.Popen(
        [str(REGISTRY), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    s = Served(proc, f"127.0.0.1:{port}", before)
    try:
        wait_serving(s.target, timeout=60)
        yield s
    finally:
        s.channel.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@pytest.fixture(scope="module")
def clerk(make_agency: AgencyFactory) -> Agency:
    return make_agency(miss_budget=1_000_000)


def test_pool_min_opens_that_many_connections(served, db):
    new = _registry_backends(db) - served.backends_before
    # The pool opens min_size connections at start (the default would be 4).
    assert len(new) >= POOL_MIN, new


def test_tokens_must_carry_the_configured_audience(served, clerk):
    pin = served.birth(clerk)  # the configured audience is accepted
    default_token = clerk.token()  # aud "citizen-registry", the default
    served.tokens.add(default_token)
    with pytest.raises(grpc.RpcError) as info:
        served.identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pin, sex=1), metadata=clerk.metadata(default_token)
        )
    error = decode(info.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_AUDIENCE_INVALID")
    assert AUDIENCE in error.message


def test_attestations_live_as_long_as_configured(served, clerk):
    pin = served.birth(clerk)
    answer = served.identity.VerifyIdentity(
        id_pb.VerifyIdentityRequest(pin=pin, full_name="Nguyễn Văn An", want_attestation=True),
        metadata=served.metadata(clerk),
    )
    assert answer.result == id_pb.VERIFY_RESULT_MATCH
    claims = jwt.decode(answer.attestation, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == ATTESTATION_LIFETIME_S


def _sequence_of_birth(db: DB, pin: str) -> int:
    """The feed sequence of `pin`'s BORN event, once the sequencer has given it one."""
    deadline = time.monotonic() + 10
    while True:
        sequence = db.fetchval(
            "SELECT sequence FROM change_events WHERE pin = $1 AND type = 1", pin
        )
        if sequence is not None:
            return int(sequence)
        assert time.monotonic() < deadline, "the birth never got a feed sequence"
        time.sleep(0.05)


def _locked_out_after(served: Served, db: DB, agency: Agency, change: str, reason: str) -> float:
    """Apply `change` (SQL on the agency) and return how long until its cached token is refused."""
    token = served.metadata(agency)
    served.birth(agency)  # admitted once: the token is verified and cached
    db.execute(change, agency.id)
    changed = time.monotonic()
    while True:
        try:
            served.civil.RegisterBirth(birth_request(), metadata=token, timeout=10)
        except grpc.RpcError as exc:
            error = decode(exc)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
            return time.monotonic() - changed
        assert time.monotonic() - changed < 10, "not locked out (the reload is an hour away)"
        time.sleep(0.05)


def test_a_disabled_agency_is_locked_out_by_notify_within_two_seconds(served, db, make_agency):
    agency = make_agency(scopes=("birth:register",))
    elapsed = _locked_out_after(
        served, db, agency, "UPDATE agencies SET enabled = false WHERE id = $1", "AGENCY_DISABLED"
    )
    assert elapsed < 2.0, f"locked out after {elapsed:.1f} s"


def test_a_revoked_key_is_locked_out_by_notify_within_two_seconds(served, db, make_agency):
    agency = make_agency(scopes=("birth:register",))
    revoke = "UPDATE agency_keys SET revoked_at = now() WHERE agency_id = $1"
    elapsed = _locked_out_after(served, db, agency, revoke, "TOKEN_KEY_REVOKED")
    assert elapsed < 2.0, f"locked out after {elapsed:.1f} s"


def test_every_call_writes_one_access_line_with_its_outcome_and_latency(served, make_agency, db):
    agency = make_agency(miss_budget=1_000_000)
    start = len(served.lines)
    pin = served.birth(agency)
    with pytest.raises(grpc.RpcError):  # a token that is no token
        served.identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pin, sex=1), metadata=agency.metadata("x.y.z")
        )
    claim = id_pb.VerifyIdentityRequest(pin=pin, sex=1, correlation_id="held")
    # A stream held open half a second, then ended by the client.
    held_open = time.perf_counter()

    def slowly() -> Iterator[id_pb.VerifyIdentityRequest]:
        yield claim
        time.sleep(0.5)

    answers = list(served.identity.BatchVerify(slowly(), metadata=served.metadata(agency)))
    held_s = time.perf_counter() - held_open
    assert [a.correlation_id for a in answers] == ["held"]

    # A change-feed watch that delivers the birth above, then waits for births that do not
    # come until its client cancels it: the server is waiting for events, so it is cancelled,
    # not ended. (Reading the first event first proves the server is inside the handler: a
    # cancel that reaches the server before the call does leaves no line at all.)
    population = population_service_pb2_grpc.PopulationServiceStub(served.channel)
    born = _sequence_of_birth(db, pin)
    watch = population.WatchChanges(
        pop_pb.WatchChangesRequest(after_sequence=born - 1, types=[change_pb2.CHANGE_TYPE_BORN]),
        metadata=served.metadata(agency),
    )
    first = next(watch)
    assert (first.event.sequence, first.event.pin) == (born, pin)
    time.sleep(0.2)
    watch.cancel()

    # A verification stream whose client stops reading: the server's answers back up until
    # it waits to write one; the client then cancels. Cancelled at a write, the handler is
    # closed (GeneratorExit), not interrupted: this line said OK.
    flooded = served.identity.BatchVerify(
        iter([id_pb.VerifyIdentityRequest(pin=pin, sex=1, correlation_id="x" * 60)] * 20_000),
        metadata=served.metadata(agency),
    )
    next(flooded)
    time.sleep(1.0)
    flooded.cancel()

    def access() -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in served.lines[start:]
            if line.startswith("{") and '"registry.access"' in line
        ]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(e["agency"] == agency.id for e in access()) < 4:
        time.sleep(0.1)
    lines = access()
    mine = [
        (e["method"].rsplit("/", 1)[1], e["status"], e["reason"])
        for e in lines
        if e["agency"] == agency.id
    ]
    assert mine == [
        ("RegisterBirth", "OK", ""),
        ("BatchVerify", "OK", ""),
        ("WatchChanges", "CANCELLED", ""),
        ("BatchVerify", "CANCELLED", ""),
    ], [(e["agency"], e["method"], e["status"]) for e in lines]
    # Lines of unauthenticated calls name no agency (earlier tests' refusals appear too).
    refused = [
        (e["method"].rsplit("/", 1)[1], e["status"], e["reason"])
        for e in lines
        if e["agency"] == "-"
    ]
    assert ("VerifyIdentity", "UNAUTHENTICATED", "TOKEN_MALFORMED") in refused, refused
    latency = {
        e["method"].rsplit("/", 1)[1] + e["status"]: e["latency_ms"]
        for e in lines
        if e["agency"] == agency.id
    }
    assert 0 < latency["RegisterBirthOK"] < 30_000
    # The server's stream began after the client's call and ended before its last answer.
    assert 400 <= latency["BatchVerifyOK"] <= held_s * 1000 + 1, (latency, held_s)
    # The watch's one delivery is audited once, before it left; its cancellation while waiting
    # disclosed nothing more, so it adds no entry.
    watched = db.fetch(
        "SELECT outcome FROM audit_log WHERE agency_id = $1 AND method LIKE '%WatchChanges'",
        agency.id,
    )
    assert [r["outcome"] for r in watched] == ["OK"]


def test_sigterm_drains_a_stream_in_flight_and_no_log_line_holds_a_token_or_pin(served, clerk, db):
    pins = [served.birth(clerk) for _ in range(3)]
    unknown = "001090000001"  # a miss and a malformed claim touch PINs too
    served.pins.update([*pins, unknown])
    garbage = f"{uuid.uuid4().hex}.{uuid.uuid4().hex}.{uuid.uuid4().hex}"
    served.tokens.add(garbage)
    with pytest.raises(grpc.RpcError):
        served.identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pins[0], sex=1), metadata=clerk.metadata(garbage)
        )

    items: queue.Queue[id_pb.VerifyIdentityRequest | None] = queue.Queue()

    def requests() -> Iterator[id_pb.VerifyIdentityRequest]:
        while (item := items.get()) is not None:
            yield item

    stream = served.identity.BatchVerify(requests(), metadata=served.metadata(clerk), timeout=60)
    items.put(id_pb.VerifyIdentityRequest(pin=pins[0], sex=1, correlation_id="0"))
    answers = [next(stream)]  # the stream is in flight
    served.proc.send_signal(signal.SIGTERM)
    served.wait_line(lambda line: "draining" in line, 20)
    for i, pin in enumerate([*pins[1:], unknown], start=1):
        items.put(id_pb.VerifyIdentityRequest(pin=pin, full_name="Sai Tên", correlation_id=str(i)))
    items.put(None)
    answers += list(stream)  # raises if the drain cut the stream off (CANCELLED)
    assert stream.code() == grpc.StatusCode.OK
    assert [a.correlation_id for a in answers] == ["0", "1", "2", "3"]
    assert [a.result for a in answers] == [
        id_pb.VERIFY_RESULT_MATCH,
        id_pb.VERIFY_RESULT_NO_MATCH,
        id_pb.VERIFY_RESULT_NO_MATCH,
        id_pb.VERIFY_RESULT_NOT_FOUND,
    ]
    assert served.proc.wait(30) == 0
    served._reader.join(10)

    lines = served.lines
    assert any('"registry.access"' in line for line in lines), "no access line was logged"
    secrets = served.tokens | {part for t in served.tokens for part in t.split(".")[1:]}
    for line in lines:
        leaked = [s for s in secrets | served.pins if s in line]
        assert not leaked, f"log line carries {leaked}: {line}"
