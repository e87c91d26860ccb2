"""Scopes are declared once, as the `(registry.v1.access)` option of each RPC in the protos
(issue 15 item 3): the gate enforces exactly what the protos declare, the API reference
prints it, and a method without the option is refused to everyone (fail closed)."""

from __future__ import annotations

import grpc
import pytest

from registry.grpc.gate import METHOD_SCOPES, READ_CONFIDENTIAL_SCOPE, SERVICE_FILES
from registry.rules.tokens import SCOPES
from registry.v1 import options_pb2
from tests.conftest import ServerThread, server_settings, wait_serving
from tests.helpers import decode

# SPEC §5's table of scopes, as the contract states it (None: any authenticated agency).
SPEC_SCOPES = {
    "CivilRegistrationService/RegisterBirth": "birth:register",
    "CivilRegistrationService/RegisterDeath": "death:register",
    "CivilRegistrationService/AnnulDeathRegistration": "death:register",
    "CardService/IssueCard": "card:issue",
    "CardService/RevokeCard": "card:revoke",
    "CardService/WithholdCard": "card:revoke",
    "CardService/ReleaseCard": "card:revoke",
    "CardService/ListCards": "card:read",
    "CardService/LinkLegacyId": "card:issue",
    "IdentityService/VerifyIdentity": "identity:verify",
    "IdentityService/BatchVerify": "identity:verify",
    "IdentityService/VerifyIdentityBatches": "identity:verify",
    "IdentityService/GetCitizen": "citizen:read",
    "IdentityService/ResolveLegacyId": "citizen:read",
    "IdentityService/GetSigningKeys": None,
    "PopulationService/ImportCitizens": "population:import",
    "PopulationService/ImportCitizenBatches": "population:import",
    "PopulationService/UpdateCitizen": "citizen:update",
    "PopulationService/WatchChanges": "changes:watch",
    "AuditService/ListAccessLog": "audit:read",
    "AuditService/GetAuditCheckpoint": None,
}


def declared() -> dict[str, str | None]:
    rules: dict[str, str | None] = {}
    for file in SERVICE_FILES:
        for service in file.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                assert options.HasExtension(options_pb2.access), f"{method.full_name}: no rule"
                access = options.Extensions[options_pb2.access]
                rule = access.WhichOneof("rule")
                assert rule is not None, f"{method.full_name}: an empty rule"
                rules[f"{service.name}/{method.name}"] = access.scope if rule == "scope" else None
    return rules


def test_every_rpc_declares_the_scope_the_contract_gives_it():
    assert declared() == SPEC_SCOPES


def test_the_gate_enforces_what_the_protos_declare():
    assert {k.removeprefix("/registry.v1."): v for k, v in METHOD_SCOPES.items()} == declared()


def test_the_known_scopes_are_the_declared_ones_and_the_widening_one():
    used = {s for s in declared().values() if s is not None}
    assert set(SCOPES) == used | {READ_CONFIDENTIAL_SCOPE}


class _Undeclared(ServerThread):
    """The registry's server with one more method, /registry.v1.IdentityService/Undeclared,
    that has no access rule (as a new RPC added without one would be)."""

    reached = False

    async def _start(self) -> None:
        from registry.app import build_server
        from registry.db.pool import Database

        def behaviour(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            _Undeclared.reached = True
            return b""

        handler = grpc.method_handlers_generic_handler(
            "registry.v1.IdentityService",
            {"Undeclared": grpc.unary_unary_rpc_method_handler(behaviour)},
        )
        db = await Database.connect(self.dsn, min_size=1, max_size=4)
        self.app = await build_server(self.settings, db)
        self.app.server.add_generic_rpc_handlers((handler,))
        await self.app.start()


@pytest.fixture(scope="module")
def undeclared_server(runtime_dsn):
    srv = _Undeclared(server_settings(), runtime_dsn).start()
    wait_serving(srv.target)
    try:
        yield srv
    finally:
        srv.stop()


def test_a_method_without_a_rule_is_refused_even_with_every_scope(undeclared_server, agency):
    with grpc.insecure_channel(undeclared_server.target) as channel:
        call = channel.unary_unary("/registry.v1.IdentityService/Undeclared")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", metadata=agency.metadata(), timeout=10)
        # A declared RPC on the same server answers the same agency.
        keys = channel.unary_unary("/registry.v1.IdentityService/GetSigningKeys")(
            b"", metadata=agency.metadata(), timeout=10
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert decode(caught.value).reason == "METHOD_NOT_ALLOWED"
    assert decode(caught.value).message == "this method is not open to agencies"
    assert not _Undeclared.reached
    assert keys  # the JWKS
