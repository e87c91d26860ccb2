"""Tests for registry.rules.identity.verify: fields, names, dates and cards. Pure: no server, no
database.
"""

from __future__ import annotations

import unicodedata
from datetime import date, timedelta
from typing import Any

import pytest

from registry.rules.cards import CardState
from registry.rules.dates import PartialDate
from registry.rules.identity import (
    Record,
    VerifyResult,
    verify,
)
from registry.rules.model import CitizenStatus, Sex
from tests.rules.verification import (
    ALL_FIELDS,
    DOB,
    NAME,
    RECORD,
    SERIAL,
    TODAY,
    claim,
    name_matches,
    record,
)

# -- verify: one field at a time ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "field", "expected"),
    [
        ({"full_name": NAME}, "full_name", True),
        ({"full_name": "Nguyễn Văn Bình"}, "full_name", False),
        ({"date_of_birth": (1990, 5, 17)}, "date_of_birth", True),
        ({"date_of_birth": (1990, 5, 18)}, "date_of_birth", False),
        ({"date_of_birth": (1991, 5, 17)}, "date_of_birth", False),
        ({"date_of_birth": (1990, 6, 17)}, "date_of_birth", False),
        ({"sex": int(Sex.MALE)}, "sex", True),
        ({"sex": int(Sex.FEMALE)}, "sex", False),
        ({"card_serial": SERIAL}, "card_serial", True),
        ({"card_serial": "C-9999999"}, "card_serial", False),
    ],
)
def test_each_field_matches_or_not(given, field, expected):
    rec = RECORD
    if given.get("card_serial") == "C-9999999":
        rec = record(card_state=None, card_expiry=None)  # not this citizen's card
    outcome = verify(claim(**given), rec, TODAY)
    assert outcome.field_matches == {field: expected}
    assert outcome.result == (VerifyResult.MATCH if expected else VerifyResult.NO_MATCH)
    assert outcome.citizen_status == CitizenStatus.ALIVE


def test_match_only_when_every_given_field_matches():
    everything = claim(
        full_name=NAME, date_of_birth=(1990, 5, 17), sex=int(Sex.MALE), card_serial=SERIAL
    )
    outcome = verify(everything, RECORD, TODAY)
    assert outcome.result == VerifyResult.MATCH
    assert outcome.field_matches == dict.fromkeys(ALL_FIELDS, True)
    assert outcome.card_state == CardState.ACTIVE

    wrong = {
        "full_name": {"full_name": "Trần Văn An"},
        "date_of_birth": {"date_of_birth": (1990, 5, 18)},
        "sex": {"sex": int(Sex.FEMALE)},
        "card_serial": {"card_serial": SERIAL},
    }
    for field, override in wrong.items():
        given = {
            "full_name": NAME,
            "date_of_birth": (1990, 5, 17),
            "sex": int(Sex.MALE),
            "card_serial": SERIAL,
            **override,
        }
        rec = record(card_state=CardState.REVOKED) if field == "card_serial" else RECORD
        outcome = verify(claim(**given), rec, TODAY)
        assert outcome.result == VerifyResult.NO_MATCH, field
        assert outcome.field_matches == {f: f != field for f in ALL_FIELDS}, field


def test_only_given_fields_get_an_entry():
    outcome = verify(claim(full_name=NAME, sex=int(Sex.MALE)), RECORD, TODAY)
    assert outcome.field_matches == {"full_name": True, "sex": True}
    # No serial given: the card state is not reported even though the record carries one.
    assert outcome.card_state is None
    assert outcome.result == VerifyResult.MATCH


def test_unknown_pin_is_not_found_without_field_entries():
    everything = claim(
        full_name=NAME, date_of_birth=(1990, 5, 17), sex=int(Sex.MALE), card_serial=SERIAL
    )
    outcome = verify(everything, None, TODAY)
    assert outcome.result == VerifyResult.NOT_FOUND
    assert outcome.field_matches == {}
    assert outcome.citizen_status is None
    assert outcome.card_state is None


# -- verify: names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claimed",
    [
        unicodedata.normalize("NFD", NAME),
        unicodedata.normalize("NFC", NAME),
        "NGUYỄN VĂN AN",
        "nguyễn văn an",
        "nGuYỄn vĂn aN",
        "  Nguyễn Văn An  ",
        "Nguyễn   Văn  An",
        "\tNguyễn\u00a0Văn\u3000An\n",
        unicodedata.normalize("NFD", "  NGUYỄN   VĂN AN "),
    ],
    ids=[
        "nfd",
        "nfc",
        "upper",
        "lower",
        "mixed",
        "surrounding",
        "repeated",
        "unicode-spaces",
        "all",
    ],
)
def test_name_normalisation_does_not_matter(claimed):
    assert name_matches(claimed) is True
    # The record's own spelling does not matter either.
    assert name_matches(NAME, unicodedata.normalize("NFD", claimed)) is True


@pytest.mark.parametrize(
    "claimed",
    ["Nguyên Văn An", "NGUYEN VAN AN", "Nguyen Van An", "Nguyễn Van An", "Nguyễn Vân An"],
)
def test_diacritics_matter_in_strict_mode(claimed):
    assert name_matches(claimed) is False


@pytest.mark.parametrize(
    "claimed",
    ["NGUYEN VAN AN", "nguyen van an", "Nguyên Văn An", "  NGUYEN  van AN ", NAME],
)
def test_diacritic_insensitive_mode_ignores_marks(claimed):
    assert name_matches(claimed, insensitive=True) is True


def test_stroked_d_folds_to_d_only_in_diacritic_insensitive_mode():
    recorded = "Đặng Văn Đức"
    for claimed in ("DANG VAN DUC", "dang van duc", "Dang Van Duc", "ĐANG VAN ĐUC"):
        assert name_matches(claimed, recorded, insensitive=True) is True, claimed
        assert name_matches(claimed, recorded) is False, claimed
    assert name_matches("đặng văn đức", recorded) is True
    # The legacy-encoding look-alike ð for đ.
    assert name_matches("ðang van ðuc", recorded, insensitive=True) is True


def test_diacritic_insensitive_mode_still_tells_different_names_apart():
    assert name_matches("NGUYEN VAN BINH", insensitive=True) is False
    assert name_matches("NGUYEN VAN", insensitive=True) is False
    assert name_matches("NGUYEN VAN AN B", insensitive=True) is False
    assert name_matches("NGUYENVAN AN", insensitive=True) is False


# -- verify: dates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "claimed", "expected"),
    [
        # Record known to the year only: any claim in that year matches, another year does not.
        (PartialDate(1990), (1990, 5, 17), True),
        (PartialDate(1990), (1990, 12, 31), True),
        (PartialDate(1990), (1990, 1, 0), True),
        (PartialDate(1990), (1990, 0, 0), True),
        (PartialDate(1990), (1991, 5, 17), False),
        (PartialDate(1990), (1989, 12, 31), False),
        # Record known to the month: the claim must give the month; its day is not compared.
        (PartialDate(1990, 5), (1990, 5, 1), True),
        (PartialDate(1990, 5), (1990, 5, 31), True),
        (PartialDate(1990, 5), (1990, 5, 0), True),
        (PartialDate(1990, 5), (1990, 6, 1), False),
        (PartialDate(1990, 5), (1991, 5, 1), False),
        (PartialDate(1990, 5), (1990, 0, 0), False),
        # Full record, claim of year and month: NO_MATCH even when both parts are right, or
        # the birthday would come out one part at a time (issue 13).
        (DOB, (1990, 5, 0), False),
        (DOB, (1990, 6, 0), False),
        (DOB, (1991, 5, 0), False),
        # Full record, claim of the year only: likewise.
        (DOB, (1990, 0, 0), False),
        (DOB, (1991, 0, 0), False),
        # Full both sides.
        (DOB, (1990, 5, 17), True),
        (DOB, (1990, 5, 16), False),
    ],
)
def test_dates_compare_at_the_registers_precision(recorded, claimed, expected):
    outcome = verify(claim(date_of_birth=claimed), record(date_of_birth=recorded), TODAY)
    assert outcome.field_matches == {"date_of_birth": expected}
    assert outcome.result == (VerifyResult.MATCH if expected else VerifyResult.NO_MATCH)


# -- verify: cards ------------------------------------------------------------------------------


def card_outcome(rec: Record, today: date = TODAY) -> Any:
    return verify(claim(card_serial=SERIAL), rec, today)


def test_active_card_matches_and_is_reported():
    for expiry in (date(2030, 5, 16), TODAY, None):
        outcome = card_outcome(record(card_state=CardState.ACTIVE, card_expiry=expiry))
        assert outcome.field_matches == {"card_serial": True}, expiry
        assert outcome.card_state == CardState.ACTIVE
        assert outcome.result == VerifyResult.MATCH


@pytest.mark.parametrize(
    "state", [CardState.REVOKED, CardState.WITHHELD, CardState.SUPERSEDED], ids=lambda s: s.name
)
def test_revoked_withheld_superseded_cards_never_match(state):
    outcome = card_outcome(record(card_state=state))
    assert outcome.field_matches == {"card_serial": False}
    assert outcome.card_state == state
    assert outcome.result == VerifyResult.NO_MATCH
    # Not even with every other field right.
    everything = claim(
        full_name=NAME, date_of_birth=(1990, 5, 17), sex=int(Sex.MALE), card_serial=SERIAL
    )
    outcome = verify(everything, record(card_state=state), TODAY)
    assert outcome.result == VerifyResult.NO_MATCH
    assert outcome.field_matches["card_serial"] is False


def test_expired_card_never_matches():
    outcome = card_outcome(record(card_state=CardState.ACTIVE, card_expiry=TODAY - timedelta(1)))
    assert outcome.field_matches == {"card_serial": False}
    assert outcome.card_state == CardState.EXPIRED
    assert outcome.result == VerifyResult.NO_MATCH
    # A withheld card past its expiry is reported as withheld, and does not match either.
    outcome = card_outcome(record(card_state=CardState.WITHHELD, card_expiry=date(2000, 1, 1)))
    assert (outcome.card_state, outcome.field_matches["card_serial"]) == (CardState.WITHHELD, False)


def test_a_card_that_is_not_this_citizens_never_matches():
    outcome = card_outcome(record(card_state=None, card_expiry=None))
    assert outcome.field_matches == {"card_serial": False}
    assert outcome.card_state is None
    assert outcome.result == VerifyResult.NO_MATCH


@pytest.mark.parametrize(
    "status",
    [CitizenStatus.DECEASED, CitizenStatus.MISSING, CitizenStatus.PIN_CANCELLED],
    ids=lambda s: s.name,
)
def test_the_card_of_a_holder_who_is_not_alive_never_matches(status):
    everything = claim(
        full_name=NAME, date_of_birth=(1990, 5, 17), sex=int(Sex.MALE), card_serial=SERIAL
    )
    outcome = verify(everything, record(status=status), TODAY)
    assert outcome.citizen_status == status
    assert outcome.card_state == CardState.ACTIVE
    assert outcome.field_matches == {
        "full_name": True,
        "date_of_birth": True,
        "sex": True,
        "card_serial": False,
    }
    assert outcome.result == VerifyResult.NO_MATCH


def test_deceased_status_is_reported_on_a_match_without_card():
    outcome = verify(claim(full_name=NAME), record(status=CitizenStatus.DECEASED), TODAY)
    assert outcome.result == VerifyResult.MATCH
    assert outcome.citizen_status == CitizenStatus.DECEASED
