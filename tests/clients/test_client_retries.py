"""Every retry rule of the packaged Python client (clients/python, RegistryClient._unary).

A client interceptor answers the first attempts of a call with a chosen failure (as the
network or the server would: a status with google.rpc details) and then lets the call reach
the real server. Retried: UNAVAILABLE; RESOURCE_EXHAUSTED with RetryInfo (a rate limit);
ABORTED with reason CONCURRENT_UPDATE. Not retried: RESOURCE_EXHAUSTED without RetryInfo
(PIN_BUCKET_EXHAUSTED), any other ABORTED, any other code, a RetryInfo longer than
max_retry_delay. Every attempt of one call carries the same request_id; max_attempts bounds them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from registry.rules.model import CITIZEN_FIELDS
from tests.conftest import private_pem

GIVEN_ID = f"i14-{uuid.uuid4()}"
U, R, A = "UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED"


class _Failure(grpc.RpcError):
    def __init__(self, code: str, reason: str, retry_delay_s: float | None):
        self._code = getattr(grpc.StatusCode, code)
        self._reason = reason
        self._delay = retry_delay_s

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._reason} (simulated)"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self._reason, domain="citizen-registry"))
        details = [info]
        if self._delay is not None:
            retry = any_pb2.Any()
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self._delay * 1e9))
            retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            details.append(retry)
        status = status_pb2.Status(
            code=self._code.value[0], message=self.details(), details=details
        )
        return (("grpc-status-details-bin", status.SerializeToString()),)


class _FailFirst(grpc.UnaryUnaryClientInterceptor):
    """Fails the first `times` attempts with `failure`; records each attempt's request_id."""

    def __init__(self, failure: _Failure, times: int):
        self.failure = failure
        self.times = times
        self.request_ids: list[str] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.request_ids.append(request.request_id)
        if len(self.request_ids) <= self.times:
            raise self.failure
        return continuation(client_call_details, request)


@pytest.fixture(scope="module")
def retry_agency(make_agency):
    return make_agency(fields=tuple(CITIZEN_FIELDS), miss_budget=1_000_000)


def _register(
    registry_client: Any,
    server: Any,
    agency: Any,
    interceptor: Any,
    request_id: str | None = None,
    **options: Any,
):
    with registry_client.RegistryClient(
        server.target,
        agency.id,
        agency.kid,
        private_pem(agency.private_key),
        interceptors=[interceptor],
        initial_backoff=0.001,
        max_backoff=0.002,
        **options,
    ) as client:
        return client.register_birth(
            full_name="Phan Thị Thử",
            sex=registry_client.Sex.FEMALE,
            date_of_birth=dt.date(1992, 3, 3),
            registration_province_code="079",
            place_of_birth="Bệnh viện Từ Dũ",
            hometown="Huế",
            ethnicity="Kinh",
            registration_authority="UBND phường Bến Nghé",
            registration_number="7/1992",
            request_id=request_id,
        )


@pytest.mark.parametrize(
    ("code", "reason", "delay"),
    [
        (U, "UNAVAILABLE", None),
        (U, "AUDIT_UNAVAILABLE", 0.01),
        (R, "RATE_LIMITED", 0.01),
        (A, "CONCURRENT_UPDATE", 0.01),
        (A, "CONCURRENT_UPDATE", None),
    ],
)
def test_retried_failures_are_resent_with_the_same_request_id(
    registry_client, server, retry_agency, code, reason, delay
):
    failing = _FailFirst(_Failure(code, reason, delay), times=2)
    citizen = _register(registry_client, server, retry_agency, failing)
    assert citizen.pin and citizen.replayed is False
    assert len(failing.request_ids) == 3
    assert len(set(failing.request_ids)) == 1


@pytest.mark.parametrize(
    ("code", "reason", "delay"),
    [
        (R, "PIN_BUCKET_EXHAUSTED", None),  # no RetryInfo: retrying cannot help
        (A, "REQUEST_ID_REUSED", None),
        (A, "SOMETHING_ELSE", 0.01),
        ("INVALID_ARGUMENT", "INVALID_ARGUMENT", None),
        ("FAILED_PRECONDITION", "CITIZEN_DECEASED", None),
        ("PERMISSION_DENIED", "SCOPE_MISSING", None),
        ("UNAUTHENTICATED", "TOKEN_EXPIRED", None),
        ("INTERNAL", "INTERNAL", None),
        ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", None),
        (U, "UNAVAILABLE", 31.0),  # longer than max_retry_delay (30 s): give up at once
    ],
)
def test_other_failures_are_not_retried(registry_client, server, retry_agency, code, reason, delay):
    failing = _FailFirst(_Failure(code, reason, delay), times=1)
    with pytest.raises(registry_client.RegistryError) as info:
        _register(registry_client, server, retry_agency, failing)
    assert info.value.code == getattr(grpc.StatusCode, code)
    assert len(failing.request_ids) == 1


def test_max_attempts_bounds_the_retries(registry_client, server, retry_agency):
    failing = _FailFirst(_Failure(U, "UNAVAILABLE", None), times=10)
    with pytest.raises(registry_client.Unavailable):
        _register(registry_client, server, retry_agency, failing, max_attempts=3)
    assert len(failing.request_ids) == 3
    assert len(set(failing.request_ids)) == 1


def test_a_given_request_id_is_sent_on_every_attempt(registry_client, server, retry_agency):
    failing = _FailFirst(_Failure(U, "UNAVAILABLE", None), times=1)
    citizen = _register(registry_client, server, retry_agency, failing, request_id=GIVEN_ID)
    assert failing.request_ids == [GIVEN_ID, GIVEN_ID]
    again = _register(
        registry_client, server, retry_agency, _FailFirst(failing.failure, 0), request_id=GIVEN_ID
    )
    assert (again.pin, again.replayed) == (citizen.pin, True)
