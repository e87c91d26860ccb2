"""Helpers for the IdentityService tests: constants, request builders, attestation checks, the
BatchVerify population and campaigns, and a private database whose commits can be counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import code_pb2, error_details_pb2
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from registry.db.migrate import migrate
from registry.v1 import (
    card_pb2,
    citizen_pb2,
)
from registry.v1 import identity_service_pb2 as pb
from tests.conftest import (
    DB,
    ServerThread,
    run,
    server_settings,
    wait_serving,
)
from tests.conftest import (
    TestAgency as Agency,
)
from tests.grpc.cards import (
    NOBODY,
    issue,
    person,
    revoke,
    today,
)
from tests.helpers import DEFAULT_BIRTH, date

MATCH = pb.VERIFY_RESULT_MATCH
NO_MATCH = pb.VERIFY_RESULT_NO_MATCH
NOT_FOUND = pb.VERIFY_RESULT_NOT_FOUND
UNSPECIFIED = pb.VERIFY_RESULT_UNSPECIFIED
ALIVE = citizen_pb2.CITIZEN_STATUS_ALIVE
DECEASED = citizen_pb2.CITIZEN_STATUS_DECEASED
MALE = citizen_pb2.SEX_MALE
FEMALE = citizen_pb2.SEX_FEMALE
ACTIVE = card_pb2.CARD_STATE_ACTIVE
SUPERSEDED = card_pb2.CARD_STATE_SUPERSEDED
REVOKED = card_pb2.CARD_STATE_REVOKED
WITHHELD = card_pb2.CARD_STATE_WITHHELD
EXPIRED = card_pb2.CARD_STATE_EXPIRED
EXCHANGE = card_pb2.CARD_KIND_EXCHANGE

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED

NAME = DEFAULT_BIRTH["full_name"]  # "Nguyễn Văn An"
DOB = (2000, 5, 10)
REGISTRY = Path(sys.executable).parent / "registry"
RESPONSE_FIELDS = {
    "result",
    "field_matches",
    "citizen_status",
    "card_state",
    "correlation_id",
    "attestation",
}
CLAIM_FIELDS = {"full_name", "date_of_birth", "sex", "card_serial"}


# -- helpers ------------------------------------------------------------------------------------


def vreq(pin: str, **fields: Any) -> pb.VerifyIdentityRequest:
    """A VerifyIdentityRequest; date_of_birth may be given as a tuple."""
    dob = fields.pop("date_of_birth", None)
    if isinstance(dob, tuple):
        fields["date_of_birth"] = date(*dob)
    elif dob is not None:
        fields["date_of_birth"] = dob
    return pb.VerifyIdentityRequest(pin=pin, **fields)


def verify(identity: Any, agency: Agency, pin: str, **fields: Any) -> pb.VerifyIdentityResponse:
    return identity.VerifyIdentity(vreq(pin, **fields), metadata=agency.metadata())


def batch(identity: Any, agency: Agency, requests: list[pb.VerifyIdentityRequest]) -> list[Any]:
    return list(identity.BatchVerify(iter(requests), metadata=agency.metadata(), timeout=60))


def jwks_of(identity: Any, agency: Agency) -> str:
    return identity.GetSigningKeys(pb.GetSigningKeysRequest(), metadata=agency.metadata()).jwks_json


def verify_attestation(token: str, jwks: str) -> jose_jwt.Token:
    """Verify a compact JWS with joserfc and the published key set alone."""
    keys = KeySet.import_key_set(json.loads(jwks))
    return jose_jwt.decode(token, keys, algorithms=["ES256", "EdDSA"])


def get_citizen(identity: Any, agency: Agency, pin: str, *paths: str) -> Any:
    request = pb.GetCitizenRequest(pin=pin, read_mask=field_mask_pb2.FieldMask(paths=paths))
    return identity.GetCitizen(request, metadata=agency.metadata())


def set_fields(message: Any) -> set[str]:
    return {field.name for field, _ in message.ListFields()}


def bad_request_fields(status: Any) -> list[str]:
    names = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            names += [v.field for v in bad.field_violations]
    return names


def next_second_after(created: float) -> None:
    """Sleep until the wall-clock second after `created`.

    Keys created within one second are ordered by their random suffix, so the newest may not
    sign (tests/runtime/test_attestation.py::test_rotations_within_one_second_*): rotations here
    step past that to test what they are about.
    """
    wait = int(created) + 1.05 - time.time()
    if wait > 0:
        time.sleep(wait)


async def _fetch_one(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def population(civil: Any, cards: Any, agency: Agency) -> list[dict[str, Any]]:
    """Citizens for the streams: name, dob, sex, and an active and a revoked card each."""
    people = []
    for i, (name, sex, dob) in enumerate(
        [
            ("Nguyễn Văn An", MALE, (1980, 1, 2)),
            ("Trần Thị Bích", FEMALE, (1975,)),
            ("Lê Văn Cường", MALE, (1992, 12, 31)),
            ("Phạm Thị Dung", FEMALE, (2001, 7)),
            ("Hoàng Văn Em", MALE, (1968, 3, 4)),
        ]
    ):
        citizen = person(civil, agency, dob=dob, full_name=name, sex=sex)
        revoked = issue(cards, agency, citizen.pin, issued=(2025, 1, 1 + i)).card
        revoke(cards, agency, revoked.serial)
        active = issue(cards, agency, citizen.pin, kind=EXCHANGE, issued=today()).card
        full_dob = (dob[0], dob[1] if len(dob) > 1 else 6, dob[2] if len(dob) > 2 else 15)
        people.append(
            {
                "pin": citizen.pin,
                "name": name,
                "sex": sex,
                "dob": full_dob,
                "active": active.serial,
                "revoked": revoked.serial,
            }
        )
    return people


def strangers(dsn: str, count: int) -> list[dict[str, Any]]:
    """Create `count` citizens with one statement (male, born 1980): the NO_MATCH cases of
    a campaign, one per person, so no citizen reaches the per-citizen failure limit."""
    block = f"{random.randrange(10**5):05d}"
    DB(dsn).execute(
        "INSERT INTO citizens (pin, full_name, birth_year, sex, registration_province_code, "
        "created_by) SELECT '7' || $1 || lpad(n::text, 6, '0'), 'Người Lạ ' || n, 1980, 1, "
        "'001', 'test' FROM generate_series(1, $2) AS n",
        block,
        count,
    )
    return [{"pin": f"7{block}{n:06d}"} for n in range(1, count + 1)]


def stream_case(
    i: int, people: list[dict[str, Any]], others: list[dict[str, Any]]
) -> tuple[pb.VerifyIdentityRequest, int]:
    """The i-th request of a mixed campaign and the result it must get (NO_MATCH cases about
    a different one of `others` each: 3 in 6 requests)."""
    p = people[i % len(people)]
    cid = f"row-{i:05d}"
    kind = i % 6
    if kind in (1, 4, 5):
        stranger = others[(i // 6) * 3 + (1, 4, 5).index(kind)]["pin"]
    if kind == 0:
        return vreq(
            p["pin"], full_name=p["name"].upper(), date_of_birth=p["dob"], correlation_id=cid
        ), MATCH
    if kind == 1:
        return vreq(stranger, full_name="Người Khác", sex=FEMALE, correlation_id=cid), NO_MATCH
    if kind == 2:
        return vreq(NOBODY, full_name=p["name"], correlation_id=cid), NOT_FOUND
    if kind == 3:
        return vreq(p["pin"], sex=p["sex"], card_serial=p["active"], correlation_id=cid), MATCH
    if kind == 4:
        return vreq(stranger, sex=MALE, card_serial=p["revoked"], correlation_id=cid), NO_MATCH
    return vreq(stranger, date_of_birth=(1981, 0, 0), correlation_id=cid), NO_MATCH


def campaign(
    people: list[dict[str, Any]], others: list[dict[str, Any]], n: int, bad: int
) -> tuple[list[Any], dict[str, int]]:
    requests, expected = [], {}
    for i in range(n):
        request, result = stream_case(i, people, others)
        if i == bad:
            request = vreq(
                "12345", full_name="Nguyễn Văn An", correlation_id=request.correlation_id
            )
            result = UNSPECIFIED
        requests.append(request)
        expected[request.correlation_id] = result
    return requests, expected


def check_answers(answers: list[Any], expected: dict[str, int], bad_id: str) -> None:
    by_id = {a.correlation_id: a for a in answers}
    assert len(answers) == len(expected)
    assert set(by_id) == set(expected)
    wrong = {cid: a.result for cid, a in by_id.items() if a.result != expected[cid]}
    assert wrong == {}
    for cid, answer in by_id.items():
        if cid == bad_id:
            continue
        assert not answer.HasField("error"), cid
        if answer.result == NOT_FOUND:
            assert dict(answer.field_matches) == {}
        else:
            assert answer.field_matches, cid
            assert answer.citizen_status == ALIVE
    failed = by_id[bad_id]
    assert failed.HasField("error")
    assert failed.error.code == code_pb2.INVALID_ARGUMENT == 3
    assert bad_request_fields(failed.error) == ["pin"]
    assert failed.result == UNSPECIFIED
    assert dict(failed.field_matches) == {}


@pytest.fixture(scope="module")
def private_dsn(dsn: str) -> Iterator[str]:
    """A database of its own in the test cluster, so commits counted there are ours alone."""
    name = f"batch_{uuid.uuid4().hex[:10]}"

    async def create() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        private = f"{dsn.rsplit('/', 1)[0]}/{name}"
        conn = await asyncpg.connect(private)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return private

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    private = run(create())
    try:
        yield private
    finally:
        run(drop())


def commits(dsn: str) -> int:
    """Committed transactions of this database, once every other session of it has ended."""

    async def go() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            # A session's statistics are flushed for sure when it ends: wait for that.
            deadline = time.monotonic() + 20
            while await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ):
                assert time.monotonic() < deadline, "sessions of the database did not end"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            return int(
                await conn.fetchval(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                )
            )
        finally:
            await conn.close()

    return run(go())


def commits_while_serving(dsn: str) -> int:
    """Committed transactions as the statistics show them now (other sessions still open)."""
    sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    return int(run(_fetch_one(dsn, sql)))


def start_server(dsn: str) -> ServerThread:
    srv = ServerThread(server_settings(), dsn).start()
    wait_serving(srv.target)
    return srv


RATE = 500.0
"""Requests per second of the measured campaign: a client feeding rows as it reads them."""


def paced(requests: list[Any], rate: float) -> Iterator[Any]:
    """Yield the requests at a steady rate."""
    start = time.monotonic()
    for i, request in enumerate(requests):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield request
