"""Several server processes append to one audit chain: no entry lost, the chain stays whole."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from registry.v1 import identity_service_pb2 as pb
from registry.v1 import identity_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, run, server_settings, wait_serving
from tests.runtime.audit_chain import _walk


def test_two_servers_interleave_their_groups_into_one_whole_chain(server, dsn, db, make_agency):
    other = ServerThread(server_settings(), server.dsn).start()
    try:
        wait_serving(other.target)
        verifier = make_agency(miss_budget=10_000)
        before = int(db.fetchval("SELECT seq FROM audit_head"))
        pins = [f"0010999{i:05d}" for i in range(200)]

        def verify(args: tuple[str, str]) -> None:
            target, pin = args
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.IdentityServiceStub(channel)
                stub.VerifyIdentity(
                    pb.VerifyIdentityRequest(pin=pin, full_name="An"),
                    metadata=verifier.metadata(),
                    timeout=30,  # a writer that never acknowledges fails the test, not hangs it
                )

        targets = [server.target, other.target]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(verify, [(targets[i % 2], pin) for i, pin in enumerate(pins)]))
    finally:
        other.stop()
    recorded = db.fetch(
        "SELECT pins[1] AS pin FROM audit_log WHERE agency_id = $1 AND seq > $2",
        verifier.id,
        before,
    )
    assert sorted(r["pin"] for r in recorded) == sorted(pins)
    result = run(_walk(dsn))
    assert result.intact, result.problem
