"""The fuzzing's world: seeded citizens whose stored values no error may repeat, agencies and
tokens, valid seed requests per RPC, and the fixtures (tests/grpc/conftest.py lists them).
"""

from __future__ import annotations

import base64
import json
import time
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

from registry.rules.model import CITIZEN_FIELDS
from registry.v1 import (
    audit_service_pb2,
    card_pb2,
    card_service_pb2,
    change_pb2,
    citizen_pb2,
    civil_registration_service_pb2,
    civil_registration_service_pb2_grpc,
    identity_service_pb2,
    population_service_pb2,
)
from tests import fuzz_strategies as fs
from tests.conftest import DB, AgencyFactory, ServerThread, new_private_key
from tests.conftest import TestAgency as Agency
from tests.grpc.fuzz_contract import (
    CALL_TIMEOUT_S,
    Tables,
    unary,
)
from tests.helpers import birth_request, date, death_request

# -- fixtures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentinel:
    """A stored value, in the textual forms an error could show it in."""

    forms: frozenset[str]
    text: str = ""  # a stored string (name, address)
    date: tuple[int, int, int] | None = None  # a stored date

    @staticmethod
    def of_text(text: str) -> Sentinel:
        forms = {unicodedata.normalize(f, text) for f in ("NFC", "NFD")}
        return Sentinel(frozenset(forms | {f.casefold() for f in forms}), text=text)

    @staticmethod
    def of_date(y: int, m: int, d: int) -> Sentinel:
        forms = {f"{y:04d}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y:04d}", f"{d}/{m}/{y}"}
        return Sentinel(frozenset(forms), date=(y, m, d))


def _sent_values(what: Any) -> tuple[str, set[tuple[int, int, int]] | None]:
    """The strings (as raw text) and dates a call's input carried; dates None if unknown."""
    messages: list[Message] = []
    raw: list[bytes] = []

    def collect(value: Any) -> None:
        if isinstance(value, Message):
            messages.append(value)
        elif isinstance(value, bytes | bytearray):
            raw.append(bytes(value))
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)
        elif isinstance(value, str):
            raw.append(value.encode("utf-8", "ignore"))

    collect(what)
    dates: set[tuple[int, int, int]] | None = set()

    def walk(message: Message) -> None:
        assert dates is not None
        if message.DESCRIPTOR.full_name == "google.type.Date":
            dates.add((message.year, message.month, message.day))  # type: ignore[attr-defined]
        for fd, value in message.ListFields():
            if fd.message_type is None:
                continue
            for item in value if fd.is_repeated else [value]:
                if isinstance(item, Message):
                    walk(item)

    for message in messages:
        raw.append(message.SerializeToString())
        walk(message)
    if raw and not messages:
        dates = None  # raw bodies: which dates they carry is not known
    text = b"\n".join(raw).decode("utf-8", "ignore")
    return unicodedata.normalize("NFC", text), dates


def check_no_stored_data(
    sentinels: Sequence[Sentinel], error_text: str, what: Any, context: str
) -> None:
    """An error repeats no stored value the request did not itself send (SPEC §6)."""
    sent_text, sent_dates = _sent_values(what)
    for sentinel in sentinels:
        shown = [f for f in sentinel.forms if f in error_text]
        if not shown:
            continue
        if sentinel.text and unicodedata.normalize("NFC", sentinel.text) in sent_text:
            continue
        if sentinel.date is not None and (sent_dates is None or sentinel.date in sent_dates):
            continue
        raise AssertionError(f"the error repeats stored data {shown[0]!r}{context}")


@dataclass
class World:
    """Real records for seeds, so that mutated requests reach the database."""

    agency: Agency
    limited: Agency  # registered to read no field (GetCitizen → PERMISSION_DENIED)
    adult_pin: str
    other_pin: str
    death_pin: str
    serial: str
    legacy_id: str
    sentinels: tuple[Sentinel, ...] = ()
    """What the register holds about the seeded citizens: no error may repeat it."""
    _tokens: fs.Tokens | None = None
    _minted: float = 0.0

    def tokens(self) -> fs.Tokens:
        """The agency's test tokens, minted again every minute (long runs outlive them)."""
        if self._tokens is None or time.monotonic() - self._minted > 60:
            self._tokens = mint_tokens(self.agency)
            self._minted = time.monotonic()
        return self._tokens

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self.agency.metadata(self.tokens().valid)

    def call_metadata(self) -> st.SearchStrategy[fs.Metadata]:
        return fs.call_metadata(self.tokens)

    @property
    def hints(self) -> tuple[str, ...]:
        """Real identifiers for random strings to hit now and then."""
        return (self.adult_pin, self.other_pin, self.death_pin, self.serial, self.legacy_id)


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def mint_tokens(agency: Agency) -> fs.Tokens:
    stranger = new_private_key()
    bad = (
        agency.token(iat_offset=-1000),  # expired
        agency.token(iat_offset=1000),  # not yet valid
        agency.token(lifetime=3600),  # lifetime too long
        agency.token(audience="someone-else"),
        agency.token(kid="no-such-key"),
        agency.token(key=stranger),  # signature does not verify
        agency.token(iss="no-such-agency"),
        agency.token(scope=123),  # scope claim not a string
        _alg_none_token(agency),
        jwt.encode({"iss": agency.id}, stranger, algorithm="ES256", headers={"kid": "k1"}),
    )
    narrowed = tuple(
        agency.token(scope=s)
        for s in ("", "birth:register", "nonsense", "card:read identity:verify", "a " * 500)
    )
    return fs.Tokens(agency.token(), bad, narrowed)


def _alg_none_token(agency: Agency) -> str:
    now = int(time.time())
    header = _b64({"alg": "none", "typ": "JWT", "kid": agency.kid})
    body = _b64({"iss": agency.id, "aud": "citizen-registry", "iat": now, "exp": now + 300})
    return f"{header}.{body}."


@pytest.fixture(scope="module")
def world(server: ServerThread, channel: grpc.Channel, make_agency: AgencyFactory) -> World:
    agency = make_agency(fields=CITIZEN_FIELDS)
    limited = make_agency(fields=())
    md = agency.metadata()
    civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
    people = (
        (1990, citizen_pb2.SEX_FEMALE, "Trần Thị Bích Ngọc"),
        (1985, citizen_pb2.SEX_MALE, "Lê Văn Hùng"),
        (1950, citizen_pb2.SEX_MALE, "Phạm Văn Đồng"),
    )
    pins = [
        civil.RegisterBirth(
            birth_request(date_of_birth=date(year, 5, 17), sex=sex, full_name=name),
            metadata=md,
            timeout=CALL_TIMEOUT_S,
        ).citizen.pin
        for year, sex, name in people
    ]
    serial = f"FZ{uuid.uuid4().hex[:10].upper()}"
    issue = card_service_pb2.IssueCardRequest(
        request_id=str(uuid.uuid4()),
        pin=pins[0],
        kind=card_pb2.CARD_KIND_FIRST_ISSUE,
        serial=serial,
        issue_date=date(2020, 1, 2),
        issuing_authority="Cục Cảnh sát QLHC về TTXH",
    )
    unary(channel, "CardService/IssueCard").with_call(
        issue.SerializeToString(), metadata=md, timeout=CALL_TIMEOUT_S
    )
    legacy_id = f"{uuid.uuid4().int % 10**9:09d}"
    link = card_service_pb2.LinkLegacyIdRequest(
        request_id=str(uuid.uuid4()), pin=pins[0], legacy_id=legacy_id
    )
    unary(channel, "CardService/LinkLegacyId").with_call(
        link.SerializeToString(), metadata=md, timeout=CALL_TIMEOUT_S
    )
    # Stored data no error may repeat: names, dates of birth, an address, a card's date.
    address = "Số 41 ngõ Thầm Kín, phường Yên Lặng"
    update = population_service_pb2.UpdateCitizenRequest(
        request_id=str(uuid.uuid4()),
        citizen=citizen_pb2.Citizen(pin=pins[0], permanent_address=address),
        update_mask=field_mask_pb2.FieldMask(paths=["permanent_address"]),
        expected_version=1,
    )
    unary(channel, "PopulationService/UpdateCitizen").with_call(
        update.SerializeToString(), metadata=md, timeout=CALL_TIMEOUT_S
    )
    sentinels = (
        Sentinel.of_text(address),
        Sentinel.of_date(2020, 1, 2),
        *(Sentinel.of_text(name) for _, _, name in people),
        *(Sentinel.of_date(year, 5, 17) for year, _, _ in people),
    )
    w = World(agency, limited, pins[0], pins[1], pins[2], serial, legacy_id, sentinels)
    w.tokens()
    return w


@pytest.fixture(scope="module")
def tables(db: DB) -> Iterator[Tables]:
    t = Tables(db.dsn)
    try:
        yield t
    finally:
        t.close()


def seeds(w: World) -> dict[str, list[Message]]:
    """Valid-looking requests per RPC; the fuzzer breaks a few fields of each."""
    today = fs._today()
    rid = str(uuid.uuid4())
    citizen = citizen_pb2.Citizen(
        full_name="Nguyễn Thị Mai",
        sex=citizen_pb2.SEX_FEMALE,
        date_of_birth=date(1970, 3, 8),
        place_of_birth="Hà Nội",
        registration_province_code="001",
        hometown="Nam Định",
        ethnicity="Kinh",
        nationality="VN",
    )
    idp = identity_service_pb2
    cardp = card_service_pb2
    popp = population_service_pb2
    return {
        "CivilRegistrationService/RegisterBirth": [
            birth_request(),
            birth_request(request_id=rid, mother_pin=w.adult_pin, father_pin=w.other_pin),
        ],
        "CivilRegistrationService/RegisterDeath": [
            death_request(w.death_pin, request_id=rid),
            death_request(w.adult_pin, date_of_death=date(1980, 1, 1)),
        ],
        "CivilRegistrationService/AnnulDeathRegistration": [
            civil_registration_service_pb2.AnnulDeathRegistrationRequest(
                request_id=rid, pin=pin, reason="registered in error", decision_reference="QĐ 1"
            )
            for pin in (w.death_pin, w.adult_pin)
        ],
        "CardService/IssueCard": [
            cardp.IssueCardRequest(
                request_id=rid,
                pin=w.other_pin,
                kind=card_pb2.CARD_KIND_FIRST_ISSUE,
                serial=f"FZ{uuid.uuid4().hex[:10].upper()}",
                issue_date=date(today.year, today.month, today.day),
                issuing_authority="CA Hà Nội",
            )
        ],
        "CardService/RevokeCard": [cardp.RevokeCardRequest(request_id=rid, serial=w.serial)],
        "CardService/WithholdCard": [
            cardp.WithholdCardRequest(request_id=rid, serial=w.serial, reason="lost")
        ],
        "CardService/ReleaseCard": [
            cardp.ReleaseCardRequest(request_id=rid, serial=w.serial, reason="found")
        ],
        "CardService/ListCards": [cardp.ListCardsRequest(pin=w.adult_pin)],
        "CardService/LinkLegacyId": [
            cardp.LinkLegacyIdRequest(request_id=rid, pin=w.other_pin, legacy_id=w.legacy_id)
        ],
        "IdentityService/VerifyIdentity": [
            idp.VerifyIdentityRequest(
                pin=w.adult_pin,
                full_name="Trần Thị Bích Ngọc",
                date_of_birth=date(1990, 5, 17),
                sex=citizen_pb2.SEX_FEMALE,
                card_serial=w.serial,
                correlation_id="c1",
                want_attestation=True,
            )
        ],
        "IdentityService/BatchVerify": [
            idp.VerifyIdentityRequest(pin=w.adult_pin, full_name="x", correlation_id="c")
        ],
        "IdentityService/GetCitizen": [
            idp.GetCitizenRequest(
                pin=w.adult_pin, read_mask=field_mask_pb2.FieldMask(paths=["full_name"])
            )
        ],
        "IdentityService/ResolveLegacyId": [idp.ResolveLegacyIdRequest(legacy_id=w.legacy_id)],
        "IdentityService/GetSigningKeys": [],
        "AuditService/GetAuditCheckpoint": [],
        "PopulationService/ImportCitizens": [
            popp.ImportCitizensRequest(source_id="fz-1", citizen=citizen)
        ],
        "IdentityService/VerifyIdentityBatches": [
            idp.VerifyIdentityBatchesRequest(
                requests=[
                    idp.VerifyIdentityRequest(pin=w.adult_pin, full_name="x", correlation_id="c")
                ]
            )
        ],
        "PopulationService/ImportCitizenBatches": [
            popp.ImportCitizenBatchesRequest(
                import_id=rid,
                offset=0,
                records=[popp.ImportCitizensRequest(source_id="fz-b1", citizen=citizen)],
            )
        ],
        "PopulationService/UpdateCitizen": [
            popp.UpdateCitizenRequest(
                request_id=rid,
                citizen=citizen_pb2.Citizen(pin=w.other_pin, current_address="Hà Nội"),
                update_mask=field_mask_pb2.FieldMask(paths=["current_address"]),
                expected_version=1,
            )
        ],
        "PopulationService/WatchChanges": [
            popp.WatchChangesRequest(after_sequence=0, types=[change_pb2.CHANGE_TYPE_BORN])
        ],
        "AuditService/ListAccessLog": [
            audit_service_pb2.ListAccessLogRequest(pin=w.adult_pin, page_size=10)
        ],
    }
