"""Limits through the channel: per-agency rate limits and the request size limit."""

from __future__ import annotations

import time

import grpc
import pytest

from registry.v1 import identity_service_pb2 as pb
from tests.helpers import birth_request, decode


def _keys(identity, agency, token):
    return identity.GetSigningKeys(pb.GetSigningKeysRequest(), metadata=agency.metadata(token))


def test_an_agency_over_its_rate_limit_is_throttled_and_others_are_not(identity, make_agency):
    limited = make_agency(rate_limit=5)
    other = make_agency(rate_limit=5)
    limited_token, other_token = limited.token(), other.token()
    outcomes = []
    for _ in range(15):
        try:
            _keys(identity, limited, limited_token)
            outcomes.append("OK")
        except grpc.RpcError as exc:
            details = decode(exc)
            assert (details.code, details.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "RATE_LIMITED",
            )
            assert details.retry_delay_s is not None and 0 < details.retry_delay_s <= 1
            assert details.quota_subjects == [f"agency:{limited.id}"]
            outcomes.append("LIMITED")
    assert outcomes.count("OK") >= 5  # the burst
    assert outcomes.count("LIMITED") >= 5
    # The other agency's budget is its own.
    for _ in range(5):
        _keys(identity, other, other_token)
    # After the retry delay the limited agency is served again.
    time.sleep(0.5)
    _keys(identity, limited, limited_token)


def test_an_oversized_request_is_refused_and_writes_nothing(civil, agency, db):
    # Refused by gRPC's message size limit (4 MiB) before any registry code runs.
    before = db.counts()
    with pytest.raises(grpc.RpcError) as info:
        civil.RegisterBirth(
            birth_request(full_name="A" * (5 * 1024 * 1024)), metadata=agency.metadata()
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert db.counts() == before
