"""What needs no token (health, reflection), and a client-streaming RPC gated like the others."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from registry.v1 import (
    population_service_pb2,
    population_service_pb2_grpc,
)
from tests.grpc.auth.tokens import (
    DOMAIN,
    assert_no_trace,
)
from tests.helpers import call_error

# -- public services ----------------------------------------------------------------------------


def test_health_check_needs_no_token(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    assert (
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    named = stub.Check(
        health_pb2.HealthCheckRequest(service="registry.v1.CivilRegistrationService"), timeout=5
    )
    assert named.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_api_without_a_token(channel):
    reflection_db = ProtoReflectionDescriptorDatabase(channel)
    services = set(reflection_db.get_services())
    assert {
        "registry.v1.CivilRegistrationService",
        "registry.v1.CardService",
        "registry.v1.IdentityService",
        "registry.v1.PopulationService",
        "registry.v1.AuditService",
        "grpc.health.v1.Health",
    } <= services
    proto = reflection_db.FindFileContainingSymbol("registry.v1.CivilRegistrationService")
    service = next(s for s in proto.service if s.name == "CivilRegistrationService")
    assert {"RegisterBirth", "RegisterDeath"} <= {m.name for m in service.method}


# -- a client-streaming RPC is gated like the others -------------------------------------------


@pytest.fixture(scope="module")
def population(channel):
    return population_service_pb2_grpc.PopulationServiceStub(channel)


def _import_requests():
    yield population_service_pb2.ImportCitizensRequest(source_id="s1")


def test_client_streaming_rpc_without_a_token_is_unauthenticated(population):
    err = call_error(population.ImportCitizens, _import_requests())
    assert (err.code, err.domain, err.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        DOMAIN,
        "TOKEN_MISSING",
    )
    assert_no_trace(err)


def test_client_streaming_rpc_checks_the_scope(population, new_agency):
    a = new_agency(scopes=("birth:register",))
    err = call_error(population.ImportCitizens, _import_requests(), metadata=a.metadata())
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    assert err.metadata.get("required_scope") == "population:import"
