"""Messages gRPC cannot parse, and purposes beyond ASCII, through the real channel."""

from __future__ import annotations

import grpc

from registry.v1 import identity_service_pb2 as pb
from tests.helpers import birth_request, decode

GET_CITIZEN = "/registry.v1.IdentityService/GetCitizen"
BATCH_VERIFY = "/registry.v1.IdentityService/BatchVerify"


def _raw_unary(channel, method):
    return channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def test_a_corrupt_message_is_invalid_argument_after_authentication(channel, agency):
    call = _raw_unary(channel, GET_CITIZEN)
    for body in (b"\x00", b"\x0a\x03\xff\xfe\xfd"):  # bad wire format; bad UTF-8 in `pin`
        try:
            call(body, metadata=agency.metadata())
            raise AssertionError("a corrupt message was accepted")
        except grpc.RpcError as exc:
            details = decode(exc)
        assert (details.code, details.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELDS",
        )
        assert details.bad_fields == ["request"]
    # Without a token the caller learns nothing about its message.
    try:
        call(b"\x00")
        raise AssertionError("accepted without a token")
    except grpc.RpcError as exc:
        assert decode(exc).code == grpc.StatusCode.UNAUTHENTICATED


def test_batch_verify_answers_what_came_before_a_corrupt_message_then_ends(channel, civil, agency):
    citizen = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    good = pb.VerifyIdentityRequest(
        pin=citizen.pin, full_name=citizen.full_name, correlation_id="before"
    ).SerializeToString()
    after = pb.VerifyIdentityRequest(
        pin=citizen.pin, full_name=citizen.full_name, correlation_id="after"
    ).SerializeToString()
    stream = channel.stream_stream(
        BATCH_VERIFY,
        request_serializer=lambda b: b,
        response_deserializer=pb.VerifyIdentityResponse.FromString,
    )
    answers = []
    try:
        for answer in stream(iter([good, b"\x00", after]), metadata=agency.metadata()):
            answers.append(answer)
        raise AssertionError("the stream ended normally after a corrupt message")
    except grpc.RpcError as exc:
        details = decode(exc)
    assert (details.code, details.bad_fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["request"])
    assert [(a.correlation_id, a.result) for a in answers] == [("before", pb.VERIFY_RESULT_MATCH)]


def test_a_purpose_in_vietnamese_travels_as_utf8_bytes_and_is_recorded(identity, agency, db):
    citizen_pin = "001099999998"
    purpose = "Xác minh khách hàng mở tài khoản"
    metadata = (*agency.metadata(), ("x-purpose-bin", purpose.encode()))
    identity.VerifyIdentity(
        pb.VerifyIdentityRequest(pin=citizen_pin, full_name="An"), metadata=metadata
    )
    recorded = db.fetchval(
        "SELECT purpose FROM audit_log WHERE agency_id = $1 AND pins = ARRAY[$2] "
        "ORDER BY seq DESC LIMIT 1",
        agency.id,
        citizen_pin,
    )
    assert recorded == purpose
