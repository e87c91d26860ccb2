"""No stored personal data in any error (SPEC §6, issue 13 item 2), through a real channel.

A citizen holds sentinel values (a date of birth, a name, an address, a card's issue date, a
date of death) that no request below sends; every RPC's error paths about that citizen are
driven, and no error's message or google.rpc details may contain a sentinel in any of its
textual forms.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_status import rpc_status

from registry.v1 import card_pb2, citizen_pb2
from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import civil_registration_service_pb2 as civil_pb
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.grpc.cards import legacy, link, new_serial, person, withhold
from tests.helpers import birth_request, date, death_request

NAME = "Khúc Thị Huyền Trâm"
ADDRESS = "Số 77 ngõ Quỳnh Lôi, phường Bạch Mai"
BORN = (1937, 11, 23)
CARD_ISSUED = (2001, 6, 19)
DIED = (2010, 3, 4)


def date_forms(y: int, m: int, d: int) -> set[str]:
    """The ways a date may be written into a message."""
    return {
        f"{y:04d}-{m:02d}-{d:02d}",
        f"{d:02d}/{m:02d}/{y:04d}",
        f"{d}/{m}/{y}",
        f"{d:02d}-{m:02d}-{y:04d}",
        f"{d:02d}.{m:02d}.{y:04d}",
        f"{y:04d}/{m:02d}/{d:02d}",
        f"{m:02d}/{d:02d}/{y:04d}",
        f"{y:04d}{m:02d}{d:02d}",
        f"year: {y}",
    }


def text_forms(text: str) -> set[str]:
    forms = {unicodedata.normalize(f, text) for f in ("NFC", "NFD")}
    return forms | {f.casefold() for f in forms} | {f.upper() for f in forms}


SENTINELS = (
    text_forms(NAME)
    | text_forms(ADDRESS)
    | date_forms(*BORN)
    | date_forms(*CARD_ISSUED)
    | date_forms(*DIED)
)


def error_text(error: grpc.RpcError) -> str:
    """The message and every string of the google.rpc details the caller received."""
    call: Any = error
    status = rpc_status.from_call(call)
    assert status is not None, "error without google.rpc.Status details"
    # Strings inside the details are UTF-8 in the serialised status, whatever their type.
    raw = status.SerializeToString().decode("utf-8", "ignore")
    return f"{call.details()}\n{raw}"


@pytest.fixture(scope="module")
def population(channel: grpc.Channel) -> Any:
    return pop_grpc.PopulationServiceStub(channel)


class Errors:
    """Calls that must fail; each failure's text is kept for the sentinel check."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, grpc.StatusCode, str, str]] = []

    def __call__(self, label: str, fn: Callable[..., Any], request: Any, agency: Any) -> str:
        with pytest.raises(grpc.RpcError) as info:
            fn(request, metadata=agency.metadata())
        text = error_text(info.value)
        call: Any = info.value
        self.seen.append((label, call.code(), call.details(), text))
        return text

    def leaks(self) -> Iterator[str]:
        for label, code, message, text in self.seen:
            for sentinel in SENTINELS:
                if sentinel in text:
                    yield f"{label} ({code.name}: {message!r}) repeats {sentinel!r}"


def update_request(pin: str, version: int, **fields: Any) -> pop_pb.UpdateCitizenRequest:
    return pop_pb.UpdateCitizenRequest(
        request_id=str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=pin, **fields),
        update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        expected_version=version,
    )


def issue_request(pin: str, issued: tuple[int, int, int], kind: int) -> card_pb.IssueCardRequest:
    return card_pb.IssueCardRequest(
        request_id=str(uuid.uuid4()),
        pin=pin,
        kind=kind,
        serial=new_serial(),
        issue_date=date(*issued),
        issuing_authority="Cục Cảnh sát QLHC về TTXH",
    )


def test_no_error_about_a_citizen_repeats_what_the_register_holds(
    civil, cards, identity, population, agency, make_agency
):
    md = agency.metadata()
    sentinel = person(civil, agency, dob=BORN, full_name=NAME)
    v = population.UpdateCitizen(
        update_request(sentinel.pin, 1, permanent_address=ADDRESS, current_address=ADDRESS),
        metadata=md,
    ).citizen.version
    card = cards.IssueCard(
        issue_request(sentinel.pin, CARD_ISSUED, card_pb2.CARD_KIND_FIRST_ISSUE), metadata=md
    ).card
    held_id = legacy(9)
    link(cards, agency, sentinel.pin, held_id)
    other = person(civil, agency)
    reader = make_agency(scopes=("citizen:read",), fields=("sex",))
    errors = Errors()
    first, reissue = card_pb2.CARD_KIND_FIRST_ISSUE, card_pb2.CARD_KIND_REISSUE

    # Alive.
    errors(
        "RegisterBirth: mother born after the child",
        civil.RegisterBirth,
        birth_request(mother_pin=sentinel.pin, date_of_birth=date(1930, 1, 1)),
        agency,
    )
    errors(
        "RegisterDeath: before birth",
        civil.RegisterDeath,
        death_request(sentinel.pin, date_of_death=date(1900, 1, 1)),
        agency,
    )
    errors(
        "AnnulDeathRegistration: not deceased",
        civil.AnnulDeathRegistration,
        civil_pb.AnnulDeathRegistrationRequest(
            request_id=str(uuid.uuid4()), pin=sentinel.pin, reason="x", decision_reference="y"
        ),
        agency,
    )
    errors(
        "IssueCard: before birth",
        cards.IssueCard,
        issue_request(sentinel.pin, (1900, 1, 2), reissue),
        agency,
    )
    errors(
        "IssueCard: before the latest card",
        cards.IssueCard,
        issue_request(sentinel.pin, (2001, 6, 18), reissue),
        agency,
    )
    errors(
        "IssueCard: first issue again",
        cards.IssueCard,
        issue_request(sentinel.pin, (2002, 1, 1), first),
        agency,
    )
    errors(
        "ReleaseCard: not withheld",
        cards.ReleaseCard,
        card_pb.ReleaseCardRequest(request_id=str(uuid.uuid4()), serial=card.serial, reason="x"),
        agency,
    )
    errors(
        "LinkLegacyId: number taken",
        cards.LinkLegacyId,
        card_pb.LinkLegacyIdRequest(request_id=str(uuid.uuid4()), pin=other.pin, legacy_id=held_id),
        agency,
    )
    errors(
        "UpdateCitizen: stale version",
        population.UpdateCitizen,
        update_request(sentinel.pin, 1, religion="x"),
        agency,
    )
    errors(
        "UpdateCitizen: status",
        population.UpdateCitizen,
        update_request(sentinel.pin, v, status=citizen_pb2.CITIZEN_STATUS_MISSING),
        agency,
    )
    errors(
        "UpdateCitizen: own parent",
        population.UpdateCitizen,
        update_request(sentinel.pin, v, father_pin=sentinel.pin),
        agency,
    )
    errors(
        "UpdateCitizen: unknown spouse",
        population.UpdateCitizen,
        update_request(sentinel.pin, v, spouse_pin="001099999997"),
        agency,
    )
    errors(
        "GetCitizen: fields not permitted",
        identity.GetCitizen,
        id_pb.GetCitizenRequest(
            pin=sentinel.pin,
            read_mask=field_mask_pb2.FieldMask(paths=["full_name", "date_of_birth"]),
        ),
        reader,
    )
    # Verification answers carry no personal data either (not an error, but the same rule).
    answer = identity.VerifyIdentity(
        id_pb.VerifyIdentityRequest(pin=sentinel.pin, full_name="Lê Văn Tám", card_serial="X1"),
        metadata=md,
    )
    assert not [s for s in SENTINELS if s in str(answer)]

    # Withheld, then deceased.
    withhold(cards, agency, card.serial)
    errors(
        "WithholdCard: already withheld",
        cards.WithholdCard,
        card_pb.WithholdCardRequest(request_id=str(uuid.uuid4()), serial=card.serial, reason="x"),
        agency,
    )
    civil.RegisterDeath(death_request(sentinel.pin, date_of_death=date(*DIED)), metadata=md)
    errors(
        "RegisterDeath: already deceased",
        civil.RegisterDeath,
        death_request(sentinel.pin, date_of_death=date(2011, 1, 1)),
        agency,
    )
    errors(
        "IssueCard: deceased",
        cards.IssueCard,
        issue_request(sentinel.pin, (2012, 1, 1), reissue),
        agency,
    )
    errors(
        "ReleaseCard: holder deceased",
        cards.ReleaseCard,
        card_pb.ReleaseCardRequest(request_id=str(uuid.uuid4()), serial=card.serial, reason="x"),
        agency,
    )

    # Re-established under a new PIN: the old one is cancelled.
    population.UpdateCitizen(
        update_request(
            sentinel.pin, v + 1, date_of_birth=date(1938, BORN[1], BORN[2])
        ),  # another birth year: a new PIN
        metadata=md,
    )
    for label, fn, request in (
        ("RegisterDeath", civil.RegisterDeath, death_request(sentinel.pin)),
        (
            "AnnulDeathRegistration",
            civil.AnnulDeathRegistration,
            civil_pb.AnnulDeathRegistrationRequest(
                request_id=str(uuid.uuid4()), pin=sentinel.pin, reason="x", decision_reference="y"
            ),
        ),
        ("IssueCard", cards.IssueCard, issue_request(sentinel.pin, (2012, 1, 1), reissue)),
        (
            "LinkLegacyId",
            cards.LinkLegacyId,
            card_pb.LinkLegacyIdRequest(
                request_id=str(uuid.uuid4()), pin=sentinel.pin, legacy_id=legacy(12)
            ),
        ),
        ("UpdateCitizen", population.UpdateCitizen, update_request(sentinel.pin, 1, religion="x")),
        (
            "RegisterBirth",
            civil.RegisterBirth,
            birth_request(mother_pin=sentinel.pin),
        ),
    ):
        errors(f"{label}: PIN cancelled", fn, request, agency)

    assert len(errors.seen) == 23
    assert {code for _, code, _, _ in errors.seen} >= {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
    }
    assert not list(errors.leaks()), "\n".join(errors.leaks())
