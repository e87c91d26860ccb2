"""Messages gRPC cannot parse, and purposes beyond ASCII, through the real channel."""

from __future__ import annotations

import grpc

from registry.v1 import identity_service_pb2 as pb
from tests.helpers import birth_request, decode

GET_CITIZEN = "/registry.v1.IdentityService/GetCitizen"
BATCH_VERIFY = "/registry.v1.IdentityService/BatchVerify"
IMPORT_BATCHES = "/registry.v1.PopulationService/ImportCitizenBatches"


def _raw_unary(channel, method):
    return channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def test_a_corrupt_message_is_invalid_argument_after_authentication(channel, agency):
    call = _raw_unary(channel, GET_CITIZEN)
    for body, problem in (
        (b"\x00", "corrupt"),  # bad wire format
        (b"\x0a\x03\xff\xfe\xfd", "invalid UTF-8 in a string field"),  # bad UTF-8 in `pin`
    ):
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
        assert details.bad_descriptions == [
            f"is not a valid registry.v1.GetCitizenRequest message ({problem})"
        ]
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


LIMIT = 4 * 1024 * 1024
TOO_BIG = (
    f"is {LIMIT + 1:,} bytes; a message of this method may hold at most {LIMIT:,} bytes (4 MiB)"
)


def _one_message(channel, agency, method: str, body: bytes):
    stream = channel.stream_stream(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    try:
        list(stream(iter([body]), metadata=agency.metadata(), timeout=60))
        raise AssertionError("the message was accepted")
    except grpc.RpcError as exc:
        return decode(exc)


def test_a_stream_message_over_its_limit_is_refused_unparsed_naming_the_limit(channel, agency):
    # Any bytes: past the limit the message is answered from its length alone.
    over = _one_message(channel, agency, BATCH_VERIFY, b"\x00" * (LIMIT + 1))
    assert (over.code, over.reason, over.message, over.quota_subjects) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "MESSAGE_TOO_LARGE",
        f"the request message {TOO_BIG}",
        ["request"],
    )
    # At the limit it is parsed (and these bytes are no message).
    at = _one_message(channel, agency, BATCH_VERIFY, b"\x00" * LIMIT)
    assert (at.code, at.bad_descriptions) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["is not a valid registry.v1.VerifyIdentityRequest message (corrupt)"],
    )


def test_a_batch_over_its_limit_is_a_bad_request_naming_the_limit(channel, agency):
    over = _one_message(channel, agency, IMPORT_BATCHES, b"\x00" * (LIMIT + 1))
    assert (over.code, over.reason, over.bad_fields, over.bad_descriptions) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELDS",
        ["request"],
        [TOO_BIG],
    )
