"""Guards of the call gate that gRPC would not give for free.

- Clock skew: exactly 30 s of leeway for callers' clocks (SPEC §6 tokens), either side.
- Signing keys: a server re-reads its key directory, so `registry keys rotate` run by an
  operator beside it is signing within the reload period, without a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import identity_service_pb2_grpc
from tests.conftest import (
    ServerThread,
    server_settings,
    wait_serving,
)
from tests.grpc.cards import person
from tests.helpers import call_error

REGISTRY = Path(sys.executable).parent / "registry"


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _keys(identity: Any, agency: Any, token: str) -> Any:
    return identity.GetSigningKeys(id_pb.GetSigningKeysRequest(), metadata=agency.metadata(token))


# -- clock skew ---------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-20, 20])
def test_a_token_within_30_s_of_the_servers_clock_is_accepted(identity, agency, skew):
    # A caller's clock `skew` seconds off: its iat and exp are off by as much.
    assert _keys(identity, agency, agency.token(iat_offset=skew)).jwks_json
    expired_by = 20 if skew < 0 else 0
    if expired_by:
        late = agency.token(iat_offset=-300 - expired_by, lifetime=300)
        assert _keys(identity, agency, late).jwks_json


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iat_offset": 40}, "TOKEN_NOT_YET_VALID"),  # issued 40 s in our future
        ({"iat_offset": -340, "lifetime": 300}, "TOKEN_EXPIRED"),  # expired 40 s ago
    ],
)
def test_a_token_40_s_off_the_servers_clock_is_refused(identity, agency, claims, reason):
    error = call_error(_keys, identity, agency, agency.token(**claims))
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)


# -- signing keys reloaded from disk ------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_reload_server(runtime_dsn: str) -> Iterator[ServerThread]:
    settings = replace(server_settings(), signing_key_reload_s=0.2)
    srv = ServerThread(settings, runtime_dsn).start()
    wait_serving(srv.target)
    try:
        yield srv
    finally:
        srv.stop()


def test_a_key_rotated_by_the_cli_signs_without_a_restart(quick_reload_server, agency, civil):
    srv = quick_reload_server
    directory = srv.settings.signing_keys_path
    citizen = person(civil, agency, dob=(1980, 2, 2))
    with grpc.insecure_channel(srv.target) as channel:
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)

        def attestation_kid() -> str:
            answer = identity.VerifyIdentity(
                id_pb.VerifyIdentityRequest(pin=citizen.pin, sex=1, want_attestation=True),
                metadata=agency.metadata(),
            )
            return str(jwt.get_unverified_header(answer.attestation)["kid"])

        [before] = [p.stem for p in directory.glob("*.pem")]
        assert attestation_kid() == before
        # Keys created within one second are ordered by a random suffix: step past it.
        newest = max(p.stat().st_mtime for p in directory.glob("*.pem"))
        time.sleep(max(0.0, int(newest) + 1.05 - time.time()))
        env = {**os.environ, "REGISTRY_SIGNING_KEY_DIR": str(directory)}
        env["REGISTRY_DATA_DIR"] = str(directory.parent)
        done = subprocess.run(
            [str(REGISTRY), "keys", "rotate"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        [after] = [p.stem for p in directory.glob("*.pem") if p.stem != before]

        def published() -> set[str]:
            jwks = identity.GetSigningKeys(
                id_pb.GetSigningKeysRequest(), metadata=agency.metadata()
            ).jwks_json
            return {k["kid"] for k in json.loads(jwks)["keys"]}

        _wait(lambda: after in published(), 10, "the rotated key to be published")
        assert published() == {before, after}
        assert attestation_kid() == after
