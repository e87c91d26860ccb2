"""Helpers shared by the API tests: valid requests, and the rich details of a failed call."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import jwt
import jwt.algorithms
import pytest
from google.rpc import error_details_pb2
from google.type import date_pb2
from grpc_status import rpc_status

from registry.runtime.clock import today
from registry.v1 import citizen_pb2
from registry.v1 import civil_registration_service_pb2 as civil_pb

DEFAULT_BIRTH: dict[str, Any] = {
    "full_name": "Nguyễn Văn An",
    "sex": citizen_pb2.SEX_MALE,
    "place_of_birth": "Bệnh viện Phụ sản Hà Nội, Đống Đa, Hà Nội",
    "registration_province_code": "001",
    "hometown": "Xã Hải Hậu, Nam Định",
    "ethnicity": "Kinh",
    "nationality": "VN",
    "registration_authority": "UBND phường Láng Hạ",
    "registration_number": "0421/2026",
}


def date(year: int, month: int = 0, day: int = 0) -> date_pb2.Date:
    return date_pb2.Date(year=year, month=month, day=day)


def birth_request(**overrides: Any) -> civil_pb.RegisterBirthRequest:
    """A valid RegisterBirthRequest (born yesterday-ish in Hà Nội) with a fresh request_id."""
    d = today()
    fields: dict[str, Any] = {
        **DEFAULT_BIRTH,
        "request_id": str(uuid.uuid4()),
        "date_of_birth": date(d.year, d.month, 1),
    }
    fields.update(overrides)
    return civil_pb.RegisterBirthRequest(**fields)


def death_request(pin: str, **overrides: Any) -> civil_pb.RegisterDeathRequest:
    d = today()
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "pin": pin,
        "date_of_death": date(d.year, d.month, d.day),
        "registration_authority": "UBND phường Láng Hạ",
        "registration_number": "0099/2026",
    }
    fields.update(overrides)
    return civil_pb.RegisterDeathRequest(**fields)


@dataclass
class ErrorDetails:
    """What a failed call told the caller, decoded from grpc-status-details-bin."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    bad_fields: list[str] = field(default_factory=list)
    bad_descriptions: list[str] = field(default_factory=list)
    preconditions: list[tuple[str, str]] = field(default_factory=list)
    quota_subjects: list[str] = field(default_factory=list)
    retry_delay_s: float | None = None


def decode(error: grpc.RpcError) -> ErrorDetails:
    call: Any = error
    out = ErrorDetails(code=call.code(), message=call.details() or "")
    status = rpc_status.from_call(call)
    assert status is not None, "error without google.rpc.Status details"
    for detail in status.details:
        for kind, handler in _HANDLERS.items():
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                handler(out, message)
    return out


def _info(out: ErrorDetails, m: Any) -> None:
    out.reason, out.domain, out.metadata = m.reason, m.domain, dict(m.metadata)


def _bad(out: ErrorDetails, m: Any) -> None:
    out.bad_fields = [v.field for v in m.field_violations]
    out.bad_descriptions = [v.description for v in m.field_violations]


def _pre(out: ErrorDetails, m: Any) -> None:
    out.preconditions = [(v.type, v.subject) for v in m.violations]


def _quota(out: ErrorDetails, m: Any) -> None:
    out.quota_subjects = [v.subject for v in m.violations]


def _retry(out: ErrorDetails, m: Any) -> None:
    out.retry_delay_s = m.retry_delay.ToNanoseconds() / 1e9


_HANDLERS: dict[Any, Callable[[ErrorDetails, Any], None]] = {
    error_details_pb2.ErrorInfo: _info,
    error_details_pb2.BadRequest: _bad,
    error_details_pb2.PreconditionFailure: _pre,
    error_details_pb2.QuotaFailure: _quota,
    error_details_pb2.RetryInfo: _retry,
}


def call_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ErrorDetails:
    """Call an RPC that must fail; return its decoded error."""
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return decode(info.value)


def signed_jwt(header: dict[str, Any], payload: object, private_key: Any = None) -> str:
    """A compact JWS of exactly this header and payload (any JSON values, unlike jwt.encode,
    which refuses a non-string kid), signed with private_key by the header's alg when it is an
    algorithm the key has; otherwise with an empty signature (an unsigned token)."""

    def part(value: object) -> str:
        text = json.dumps(value, separators=(",", ":"), allow_nan=True)
        return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(payload)}"
    alg = header.get("alg")
    algorithms = jwt.algorithms.get_default_algorithms()
    if private_key is None or not isinstance(alg, str) or alg not in algorithms:
        return f"{signing_input}."
    try:
        signature = algorithms[alg].sign(signing_input.encode(), private_key)
    except (TypeError, ValueError, AttributeError):
        return f"{signing_input}."  # the key is of another kind than alg
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
