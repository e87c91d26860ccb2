"""Every gated answer names the server process that gave it (x-registry-instance) and how many
workers its host runs (x-registry-workers): a client opening several connections can tell
whether they reach different workers (tests/ops/test_workers.py shows two workers)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from registry.v1 import identity_service_pb2 as pb
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.helpers import birth_request

HEADERS = ("x-registry-instance", "x-registry-workers")


def named(metadata) -> tuple[str, str]:
    found = dict(metadata or ())
    return found.get(HEADERS[0], ""), found.get(HEADERS[1], "")


def test_answers_refusals_and_streams_name_one_instance(
    channel, civil, identity, agency, make_agency
):
    _, call = identity.GetSigningKeys.with_call(
        pb.GetSigningKeysRequest(), metadata=agency.metadata()
    )
    instance, workers = named(call.trailing_metadata())
    assert len(instance) == 12 and int(instance, 16) >= 0
    assert workers == "1"  # one server process, no supervisor
    # A mutation's answer, and a refusal (here: a scope the caller lacks).
    _, call = civil.RegisterBirth.with_call(birth_request(), metadata=agency.metadata())
    assert named(call.trailing_metadata()) == (instance, "1")
    reader = make_agency(scopes=("identity:verify",))
    with pytest.raises(grpc.RpcError) as refused:
        civil.RegisterBirth(birth_request(), metadata=reader.metadata())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert named(refused.value.trailing_metadata()) == (instance, "1")
    # A stream says it in its headers, before any answer.
    watch = pop_grpc.PopulationServiceStub(channel).WatchChanges(
        pop_pb.WatchChangesRequest(after_sequence=0), metadata=agency.metadata(), timeout=10
    )
    try:
        assert named(watch.initial_metadata()) == (instance, "1")
    finally:
        watch.cancel()


def test_the_health_service_and_unauthenticated_callers_learn_nothing(channel, identity, agency):
    """Public services are not gated and say nothing; a caller without a valid token is not
    told which process refused it (a new id would tell it that a worker restarted)."""
    _, call = health_pb2_grpc.HealthStub(channel).Check.with_call(health_pb2.HealthCheckRequest())
    assert named(call.trailing_metadata()) == ("", "")
    forged = agency.metadata()[0][1][:-4] + "AAAA"
    for metadata in ((), (("authorization", forged),)):
        with pytest.raises(grpc.RpcError) as refused:
            identity.GetSigningKeys(pb.GetSigningKeysRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert named(refused.value.trailing_metadata()) == ("", "")


def test_the_client_reads_the_instance_of_its_connection(server, agency, registry_client):
    from registry_client import RegistryClient

    from tests.conftest import private_pem

    pem = private_pem(agency.private_key).encode()
    with RegistryClient(server.target, agency.id, "k1", pem, own_connection=True) as client:
        first = client.serving_instance()
        assert first == client.serving_instance()
        assert len(first[0]) == 12 and first[1] == 1


def test_the_async_client_reads_it_too(server, agency, registry_client):
    import asyncio

    from registry_client import AsyncRegistryClient

    from tests.conftest import private_pem

    pem = private_pem(agency.private_key).encode()

    async def ask() -> list[tuple[str, int]]:
        async with AsyncRegistryClient(server.target, agency.id, "k1", pem) as client:
            return [await client.serving_instance() for _ in range(2)]

    first, again = asyncio.run(ask())
    assert first == again and len(first[0]) == 12 and first[1] == 1
