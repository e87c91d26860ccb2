"""IdentityService.VerifyIdentity through a real channel: every field, cards, unknown and
malformed PINs, no personal data in answers, diacritic-insensitive agencies.

Every rule of issue 4 is checked as an agency's system sees it: name spellings (NFC/NFD, case,
stray spaces), diacritics (strict unless the agency is registered otherwise), dates, sex, card
states, deceased holders. Every test registers its own citizens.
"""

from __future__ import annotations

import os
import subprocess
import unicodedata
import uuid
from typing import Any

import pytest

from registry.v1 import (
    card_pb2,
    citizen_pb2,
)
from tests.conftest import (
    TestAgency as Agency,
)
from tests.conftest import (
    new_private_key,
    public_pem,
    run,
)
from tests.grpc.cards import (
    NOBODY,
    issue,
    listed,
    new_serial,
    person,
    release,
    revoke,
    today,
    withhold,
)
from tests.grpc.identity import (
    ACTIVE,
    ALIVE,
    CLAIM_FIELDS,
    DECEASED,
    DOB,
    EXCHANGE,
    EXPIRED,
    FEMALE,
    INVALID,
    MALE,
    MATCH,
    NAME,
    NO_MATCH,
    NOT_FOUND,
    REGISTRY,
    RESPONSE_FIELDS,
    REVOKED,
    SUPERSEDED,
    WITHHELD,
    _fetch_one,
    batch,
    set_fields,
    verify,
    vreq,
)
from tests.helpers import call_error, death_request


@pytest.fixture(scope="module")
def insensitive(dsn: str, server: Any, tmp_path_factory: pytest.TempPathFactory) -> Agency:
    """An agency registered by the operator CLI with diacritic-insensitive name matching."""
    key = new_private_key("ES256")
    key_file = tmp_path_factory.mktemp("insensitive") / "key.pem"
    key_file.write_text(public_pem(key))
    agency_id = f"legacy-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "REGISTRY_DATABASE_URL": dsn}
    result = subprocess.run(
        [
            str(REGISTRY),
            "agency",
            "add",
            "--id",
            agency_id,
            "--name",
            "Legacy bank core (no diacritics)",
            "--kind",
            "OTHER",
            "--scopes",
            "identity:verify",
            "--public-key",
            str(key_file),
            "--kid",
            "k1",
            "--name-matching",
            "diacritic-insensitive",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    stored = run(_fetch_one(dsn, "SELECT name_matching FROM agencies WHERE id = $1", agency_id))
    assert stored == "DIACRITIC_INSENSITIVE"
    return Agency(agency_id, "k1", "ES256", key, ("identity:verify",))


# -- VerifyIdentity: fields ---------------------------------------------------------------------


def test_every_field_matching_is_a_match(civil, cards, identity, agency):
    citizen = person(civil, agency, dob=DOB)
    card = issue(cards, agency, citizen.pin, issued=today()).card
    assert card.state == ACTIVE
    response = verify(
        identity,
        agency,
        citizen.pin,
        full_name=NAME,
        date_of_birth=DOB,
        sex=MALE,
        card_serial=card.serial,
        correlation_id="case-17",
    )
    assert response.result == MATCH
    assert dict(response.field_matches) == dict.fromkeys(CLAIM_FIELDS, True)
    assert response.citizen_status == ALIVE
    assert response.card_state == ACTIVE
    assert response.correlation_id == "case-17"
    assert response.attestation == ""
    assert not response.HasField("error")


def test_one_entry_per_field_given(civil, identity, agency):
    citizen = person(civil, agency, dob=DOB)
    response = verify(identity, agency, citizen.pin, sex=MALE)
    assert dict(response.field_matches) == {"sex": True}
    assert response.result == MATCH
    assert response.card_state == card_pb2.CARD_STATE_UNSPECIFIED
    response = verify(identity, agency, citizen.pin, full_name=NAME, date_of_birth=DOB)
    assert dict(response.field_matches) == {"full_name": True, "date_of_birth": True}


@pytest.mark.parametrize(
    "spelling",
    [
        unicodedata.normalize("NFD", NAME),
        "NGUYỄN VĂN AN",
        "nguyễn văn an",
        "  Nguyễn Văn An ",
        "Nguyễn    Văn   An",
        "\tNguyễn Văn\u00a0An\n",
        unicodedata.normalize("NFD", " NGUYỄN  VĂN AN "),
    ],
    ids=["nfd", "upper", "lower", "surrounding-spaces", "repeated-spaces", "other-spaces", "all"],
)
def test_name_spelling_does_not_matter(civil, identity, agency, spelling):
    citizen = person(civil, agency, dob=DOB)
    response = verify(identity, agency, citizen.pin, full_name=spelling, date_of_birth=DOB)
    assert response.result == MATCH
    assert dict(response.field_matches) == {"full_name": True, "date_of_birth": True}


def test_name_recorded_in_nfd_matches_a_claim_in_nfc(civil, identity, agency):
    citizen = person(civil, agency, full_name=unicodedata.normalize("NFD", "Trần Thị Ngọc Ánh"))
    response = verify(identity, agency, citizen.pin, full_name="Trần Thị Ngọc Ánh")
    assert response.result == MATCH


@pytest.mark.parametrize(
    "claimed", ["Nguyên Văn An", "NGUYEN VAN AN", "Nguyen Van An", "Nguyễn Văn Ân", "Nguyễn An"]
)
def test_diacritics_and_other_names_do_not_match_by_default(civil, identity, agency, claimed):
    citizen = person(civil, agency, dob=DOB)
    response = verify(identity, agency, citizen.pin, full_name=claimed, date_of_birth=DOB)
    assert response.result == NO_MATCH
    assert dict(response.field_matches) == {"full_name": False, "date_of_birth": True}
    assert response.citizen_status == ALIVE


@pytest.mark.parametrize(
    ("claimed", "matches"),
    [
        ((2000, 5, 10), True),
        ((2000, 5, 11), False),
        ((2000, 6, 10), False),
        ((2001, 5, 10), False),
        # Less than the register holds is NO_MATCH, even when right (issue 13).
        ((2000, 5, 0), False),
        ((2000, 4, 0), False),
        ((2000, 0, 0), False),
        ((1999, 0, 0), False),
    ],
)
def test_date_of_birth(civil, identity, agency, claimed, matches):
    citizen = person(civil, agency, dob=DOB)
    response = verify(identity, agency, citizen.pin, full_name=NAME, date_of_birth=claimed)
    assert dict(response.field_matches) == {"full_name": True, "date_of_birth": matches}
    assert response.result == (MATCH if matches else NO_MATCH)


@pytest.mark.parametrize(
    ("recorded", "claimed", "matches"),
    [
        ((1990,), (1990, 7, 4), True),
        ((1990,), (1990, 1, 0), True),
        ((1990,), (1991, 7, 4), False),
        ((1990, 7), (1990, 7, 31), True),
        ((1990, 7), (1990, 8, 1), False),
    ],
)
def test_partial_recorded_date_is_compared_at_its_precision(
    civil, identity, agency, recorded, claimed, matches
):
    citizen = person(civil, agency, dob=recorded)
    response = verify(identity, agency, citizen.pin, date_of_birth=claimed)
    assert dict(response.field_matches) == {"date_of_birth": matches}
    assert response.result == (MATCH if matches else NO_MATCH)


def test_wrong_sex_is_no_match(civil, identity, agency):
    citizen = person(civil, agency, dob=DOB)
    response = verify(identity, agency, citizen.pin, full_name=NAME, sex=FEMALE)
    assert response.result == NO_MATCH
    assert dict(response.field_matches) == {"full_name": True, "sex": False}
    woman = person(civil, agency, full_name="Lê Thị Hoa", sex=FEMALE)
    assert verify(identity, agency, woman.pin, sex=FEMALE).result == MATCH
    assert verify(identity, agency, woman.pin, sex=MALE).result == NO_MATCH


# -- VerifyIdentity: cards ----------------------------------------------------------------------


def card_check(identity: Any, agency: Agency, pin: str, serial: str) -> Any:
    response = verify(
        identity, agency, pin, full_name=NAME, date_of_birth=DOB, sex=MALE, card_serial=serial
    )
    assert response.citizen_status in (ALIVE, DECEASED)
    return response


def assert_card_refused(response: Any, state: int) -> None:
    assert response.result == NO_MATCH
    assert dict(response.field_matches) == {
        "full_name": True,
        "date_of_birth": True,
        "sex": True,
        "card_serial": False,
    }
    assert response.card_state == state


def test_revoked_card_never_matches(civil, cards, identity, agency):
    citizen = person(civil, agency, dob=DOB)
    card = issue(cards, agency, citizen.pin, issued=today()).card
    assert card_check(identity, agency, citizen.pin, card.serial).result == MATCH
    revoke(cards, agency, card.serial, reason="reported stolen")
    assert_card_refused(card_check(identity, agency, citizen.pin, card.serial), REVOKED)


def test_withheld_card_never_matches_until_released(civil, cards, identity, agency):
    citizen = person(civil, agency, dob=DOB)
    card = issue(cards, agency, citizen.pin, issued=today()).card
    withhold(cards, agency, card.serial)
    assert_card_refused(card_check(identity, agency, citizen.pin, card.serial), WITHHELD)
    release(cards, agency, card.serial)
    response = card_check(identity, agency, citizen.pin, card.serial)
    assert response.result == MATCH
    assert response.card_state == ACTIVE


def test_superseded_card_never_matches(civil, cards, identity, agency):
    citizen = person(civil, agency, dob=DOB)
    old = issue(cards, agency, citizen.pin, issued=(2025, 3, 1)).card
    new = issue(cards, agency, citizen.pin, kind=EXCHANGE, issued=today()).card
    assert_card_refused(card_check(identity, agency, citizen.pin, old.serial), SUPERSEDED)
    assert card_check(identity, agency, citizen.pin, new.serial).result == MATCH


def test_expired_card_never_matches(civil, cards, identity, agency):
    citizen = person(civil, agency, dob=(1990, 1, 1))
    # Issued at 20: valid until the day before 25, 2014-12-31.
    card = issue(cards, agency, citizen.pin, issued=(2010, 1, 1)).card
    assert card.state == EXPIRED
    response = verify(
        identity, agency, citizen.pin, date_of_birth=(1990, 1, 1), card_serial=card.serial
    )
    assert response.result == NO_MATCH
    assert dict(response.field_matches) == {"date_of_birth": True, "card_serial": False}
    assert response.card_state == EXPIRED


def test_another_citizens_card_or_an_unknown_serial_never_matches(civil, cards, identity, agency):
    citizen = person(civil, agency, dob=DOB)
    other = person(civil, agency, dob=DOB)
    theirs = issue(cards, agency, other.pin, issued=today()).card
    for serial in (theirs.serial, new_serial()):
        response = card_check(identity, agency, citizen.pin, serial)
        assert_card_refused(response, card_pb2.CARD_STATE_UNSPECIFIED)
    # Lower case and surrounding spaces in the serial do not matter.
    mine = issue(cards, agency, citizen.pin, issued=today()).card
    response = card_check(identity, agency, citizen.pin, f" {mine.serial.lower()} ")
    assert response.result == MATCH


def test_deceased_citizen_status_is_reported_and_the_card_does_not_match(
    civil, cards, identity, agency
):
    citizen = person(civil, agency, dob=DOB)
    card = issue(cards, agency, citizen.pin, issued=today()).card
    civil.RegisterDeath(death_request(citizen.pin), metadata=agency.metadata())
    response = card_check(identity, agency, citizen.pin, card.serial)
    assert response.citizen_status == DECEASED
    assert response.result == NO_MATCH
    assert response.field_matches["card_serial"] is False
    assert response.field_matches["full_name"] is True
    [seen] = listed(cards, agency, citizen.pin)
    assert response.card_state == seen.state
    # Without a card, the identity data still matches, and the status says the person died.
    response = verify(identity, agency, citizen.pin, full_name=NAME, date_of_birth=DOB)
    assert response.result == MATCH
    assert response.citizen_status == DECEASED


# -- VerifyIdentity: unknown and malformed ------------------------------------------------------


def test_unknown_pin_is_not_found_without_field_entries(identity, agency):
    response = verify(
        identity,
        agency,
        NOBODY,
        full_name=NAME,
        date_of_birth=DOB,
        sex=MALE,
        card_serial=new_serial(),
        correlation_id="nobody",
    )
    assert response.result == NOT_FOUND
    assert dict(response.field_matches) == {}
    assert response.citizen_status == citizen_pb2.CITIZEN_STATUS_UNSPECIFIED
    assert response.card_state == card_pb2.CARD_STATE_UNSPECIFIED
    assert response.correlation_id == "nobody"


@pytest.mark.parametrize(
    "pin", ["", "12345", "0010900001234", "00109000012X", "１２３４５６７８９０１２"]
)
def test_malformed_pin_is_invalid_argument(identity, agency, pin):
    error = call_error(verify, identity, agency, pin, full_name=NAME)
    assert error.code == INVALID
    assert error.bad_fields == ["pin"]


def test_invalid_claims_name_every_bad_field(civil, identity, agency):
    citizen = person(civil, agency)
    error = call_error(verify, identity, agency, citizen.pin)
    assert error.code == INVALID
    assert error.bad_fields == ["pin"]  # nothing given to verify
    error = call_error(
        verify,
        identity,
        agency,
        "12",
        date_of_birth=(2000, 2, 30),
        sex=5,
        card_serial="not a serial",
        correlation_id="x" * 129,
    )
    assert error.code == INVALID
    assert set(error.bad_fields) == {
        "pin",
        "date_of_birth.day",
        "sex",
        "card_serial",
        "correlation_id",
    }


# -- VerifyIdentity: no personal data -----------------------------------------------------------


def test_the_answer_carries_no_personal_data(civil, cards, identity, agency):
    name = "Lê Thị Hồng Nhung"
    hometown = "Xã Quỳnh Lưu, Nghệ An"
    place = "Bệnh viện Đa khoa Vinh"
    citizen = person(
        civil,
        agency,
        dob=(1987, 11, 23),
        full_name=name,
        sex=FEMALE,
        hometown=hometown,
        place_of_birth=place,
    )
    card = issue(cards, agency, citizen.pin, issued=today()).card
    claims = [
        {"full_name": name, "date_of_birth": (1987, 11, 23), "sex": FEMALE},
        {"full_name": "Lê Thị Hồng", "date_of_birth": (1987, 11, 24), "card_serial": card.serial},
        {"date_of_birth": (1987, 0, 0)},
    ]
    for fields in claims:
        response = verify(identity, agency, citizen.pin, **fields)
        assert set_fields(response) <= RESPONSE_FIELDS
        assert set(response.field_matches) <= CLAIM_FIELDS
        assert set(response.field_matches) == set(fields)
        data = response.SerializeToString()
        text = str(response)
        for secret in (name, "Hồng Nhung", hometown, place, "Nghệ An", "1987"):
            for form in ("NFC", "NFD"):
                value = unicodedata.normalize(form, secret)
                assert value.encode() not in data, secret
                assert value not in text, secret


# -- VerifyIdentity: diacritic-insensitive agencies ---------------------------------------------


def test_diacritic_insensitive_matching_only_for_the_registered_agency(
    civil, identity, agency, insensitive
):
    citizen = person(civil, agency, dob=DOB)
    claim = {"full_name": "NGUYEN VAN AN", "date_of_birth": DOB}
    strict = verify(identity, agency, citizen.pin, **claim)
    assert strict.result == NO_MATCH
    assert dict(strict.field_matches) == {"full_name": False, "date_of_birth": True}

    registered = verify(identity, insensitive, citizen.pin, **claim)
    assert registered.result == MATCH
    assert dict(registered.field_matches) == {"full_name": True, "date_of_birth": True}
    # Marks are ignored, the letters are not.
    for other in ("NGUYEN VAN BINH", "NGUYEN AN", "TRAN VAN AN"):
        assert verify(identity, insensitive, citizen.pin, full_name=other).result == NO_MATCH

    # A token cannot ask for the mode: only the registration grants it.
    token = agency.token(name_matching="DIACRITIC_INSENSITIVE", diacritic_insensitive=True)
    response = identity.VerifyIdentity(
        vreq(citizen.pin, **claim), metadata=agency.metadata(token=token)
    )
    assert response.result == NO_MATCH

    # The stream answers by the same rule.
    [answer] = batch(identity, insensitive, [vreq(citizen.pin, correlation_id="1", **claim)])
    assert answer.result == MATCH
    [answer] = batch(identity, agency, [vreq(citizen.pin, correlation_id="1", **claim)])
    assert answer.result == NO_MATCH


def test_diacritic_insensitive_mode_folds_stroked_d(civil, identity, agency, insensitive):
    citizen = person(civil, agency, full_name="Đặng Thị Đào", sex=FEMALE)
    for claimed in ("DANG THI DAO", "dang thi dao", "Dang Thi Dao"):
        assert verify(identity, insensitive, citizen.pin, full_name=claimed).result == MATCH
        assert verify(identity, agency, citizen.pin, full_name=claimed).result == NO_MATCH
    assert verify(identity, agency, citizen.pin, full_name="ĐẶNG THỊ ĐÀO").result == MATCH
