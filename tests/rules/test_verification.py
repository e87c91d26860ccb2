"""Tests for registry.rules.identity and registry.usecases.lookup.resolve_read_mask: pure rules.

No server, no database. Expectations come from the rules (issue 4, SPEC §5 and §9):

* a claim is a well-formed PIN and at least one of full name, date of birth, sex, card serial;
  every bad field is named in one INVALID_ARGUMENT;
* a name matches exactly after normalisation (Unicode form, case, surrounding and repeated
  spaces); diacritics count unless the agency is registered diacritic-insensitive;
* a date of birth is compared at the register's precision (every part it holds claimed);
* a card matches only if it is this PIN's, ACTIVE, not expired, and its holder is alive;
* MATCH only when every field given matches; NOT_FOUND carries no field entries;
* a read_mask may name only Citizen fields (else INVALID_ARGUMENT naming read_mask.paths[i])
  and only fields the agency is entitled to (else PERMISSION_DENIED naming them); pin is always
  returned.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest

from registry.rules.cards import CardState
from registry.rules.dates import PartialDate
from registry.rules.errors import Code, RegistryError
from registry.rules.identity import (
    MAX_CORRELATION_ID,
    Claim,
    RawClaim,
    Record,
    VerifyResult,
    attestation_claims,
    validate_claim,
    verify,
)
from registry.rules.model import CITIZEN_FIELDS, CitizenStatus, Sex
from registry.usecases.lookup import resolve_read_mask
from registry.v1 import citizen_pb2

TODAY = date(2026, 6, 15)
PIN = "001090000123"
NAME = "Nguyễn Văn An"
DOB = PartialDate(1990, 5, 17)
SERIAL = "C-0001234"
ALL_FIELDS = ("full_name", "date_of_birth", "sex", "card_serial")


def raw(**overrides: Any) -> RawClaim:
    """A valid raw claim giving every field, matching RECORD."""
    fields: dict[str, Any] = {
        "pin": PIN,
        "full_name": NAME,
        "date_of_birth": (1990, 5, 17),
        "sex": int(Sex.MALE),
        "card_serial": SERIAL,
        "correlation_id": "row-1",
    }
    fields.update(overrides)
    return RawClaim(**fields)


def claim(**overrides: Any) -> Claim:
    """A validated claim; fields left out of overrides default to "not given"."""
    fields: dict[str, Any] = {
        "full_name": "",
        "date_of_birth": (0, 0, 0),
        "sex": 0,
        "card_serial": "",
        "correlation_id": "",
    }
    fields.update(overrides)
    return validate_claim(raw(**fields))


RECORD = Record(
    full_name=NAME,
    date_of_birth=DOB,
    sex=Sex.MALE,
    status=CitizenStatus.ALIVE,
    card_state=CardState.ACTIVE,
    card_expiry=date(2030, 5, 16),
)


def record(**overrides: Any) -> Record:
    return replace(RECORD, **overrides)


def invalid(raw_claim: RawClaim) -> list[str]:
    """Validate a claim that must be refused; return the fields it names."""
    with pytest.raises(RegistryError) as info:
        validate_claim(raw_claim)
    assert info.value.code == Code.INVALID_ARGUMENT
    return [v.field for v in info.value.field_violations]


def name_matches(claimed: str, recorded: str = NAME, *, insensitive: bool = False) -> bool:
    outcome = verify(
        claim(full_name=claimed),
        record(full_name=recorded),
        TODAY,
        diacritic_insensitive=insensitive,
    )
    assert set(outcome.field_matches) == {"full_name"}
    expected = VerifyResult.MATCH if outcome.field_matches["full_name"] else VerifyResult.NO_MATCH
    assert outcome.result == expected
    return outcome.field_matches["full_name"]


# -- validate_claim -----------------------------------------------------------------------------


def test_a_valid_claim_is_normalised():
    nfd = unicodedata.normalize("NFD", "  Nguyễn   Văn An ")
    c = validate_claim(raw(pin=" 001090000123\t", full_name=nfd, card_serial=" c-0001234 "))
    assert c.pin == PIN
    assert c.full_name == NAME
    assert unicodedata.is_normalized("NFC", c.full_name)
    assert c.date_of_birth == DOB
    assert c.sex == Sex.MALE
    assert c.card_serial == SERIAL
    assert c.correlation_id == "row-1"
    assert c.fields() == list(ALL_FIELDS)


def test_fields_not_given_are_none():
    c = claim(sex=int(Sex.FEMALE))
    assert (c.full_name, c.date_of_birth, c.card_serial) == (None, None, None)
    assert c.sex == Sex.FEMALE
    assert c.fields() == ["sex"]
    # Blank text is "not given", not an empty value to compare.
    c = claim(full_name="   ", card_serial=" ", date_of_birth=(1990, 0, 0))
    assert c.fields() == ["date_of_birth"]
    assert c.date_of_birth == PartialDate(1990)


@pytest.mark.parametrize(
    "pin",
    [
        "",
        "   ",
        "12345",
        "00109000012",
        "0010900001234",
        "00109000012A",
        "００１０９００００１２３",
    ],
    ids=["empty", "blank", "short", "11-digits", "13-digits", "letter", "fullwidth"],
)
def test_malformed_pin_is_invalid(pin):
    assert invalid(raw(pin=pin)) == ["pin"]


def test_no_field_to_verify_is_invalid():
    with pytest.raises(RegistryError) as info:
        validate_claim(raw(full_name="", date_of_birth=(0, 0, 0), sex=0, card_serial=" "))
    error = info.value
    assert error.code == Code.INVALID_ARGUMENT
    [violation] = error.field_violations
    assert violation.field == "pin"
    for name in ALL_FIELDS:
        assert name in violation.description


@pytest.mark.parametrize("sex", [3, 7, -1])
def test_unknown_sex_is_invalid(sex):
    assert invalid(raw(sex=sex)) == ["sex"]


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        ((0, 5, 17), "date_of_birth.year"),
        ((1990, 13, 1), "date_of_birth.month"),
        ((1990, 0, 5), "date_of_birth.month"),
        ((1990, 2, 30), "date_of_birth.day"),
        ((1990, 4, 31), "date_of_birth.day"),
        ((1990, 5, 32), "date_of_birth.day"),
        ((10000, 1, 1), "date_of_birth.year"),
    ],
)
def test_bad_date_parts_are_named(parts, field):
    assert invalid(raw(date_of_birth=parts)) == [field]


@pytest.mark.parametrize(
    "serial",
    ["AB CD", "AB_CD", "X" * 33, "ĐK-123", "C-12\x00", "C/1"],
    ids=["space", "underscore", "33-chars", "non-ascii", "control", "slash"],
)
def test_bad_card_serial_is_invalid(serial):
    assert invalid(raw(card_serial=serial)) == ["card_serial"]


def test_card_serial_of_32_characters_and_lower_case_are_accepted():
    assert claim(card_serial="x" * 32).card_serial == "X" * 32
    assert claim(card_serial="t-ab12").card_serial == "T-AB12"


@pytest.mark.parametrize(
    "correlation_id",
    ["x" * (MAX_CORRELATION_ID + 1), "row\n1", "row\x001", "row\t1", "\u200brow"],
    ids=["overlong", "newline", "nul", "tab", "zero-width-space"],
)
def test_bad_correlation_id_is_named(correlation_id):
    assert invalid(raw(correlation_id=correlation_id)) == ["correlation_id"]


def test_correlation_id_at_the_limit_is_accepted():
    longest = "é" * MAX_CORRELATION_ID
    assert validate_claim(raw(correlation_id=longest)).correlation_id == longest
    assert validate_claim(raw(correlation_id="")).correlation_id == ""


@pytest.mark.parametrize(
    "name", ["Nguyễn\x00Văn An", "Nguyễn Văn\u200bAn", "A" * 201], ids=["nul", "zwsp", "overlong"]
)
def test_bad_full_name_is_invalid(name):
    assert invalid(raw(full_name=name)) == ["full_name"]


@pytest.mark.parametrize("control", ["\x1c", "\x1d", "\x1e", "\x1f"])
def test_a_field_of_control_characters_is_refused_not_ignored(control):
    # U+001C-U+001F are control characters that str.strip() takes for whitespace; names.py
    # says they "must be rejected, not silently turned into spaces". A claim sending one as its
    # name or serial must not be answered as if that field had not been given.
    assert invalid(raw(full_name=control)) == ["full_name"]
    assert invalid(raw(card_serial=control)) == ["card_serial"]


def test_every_bad_field_is_named_at_once():
    bad = raw(
        pin="123",
        full_name="An\x07",
        date_of_birth=(1990, 13, 40),
        sex=9,
        card_serial="no way",
        correlation_id="x" * 200,
    )
    assert set(invalid(bad)) == {
        "pin",
        "full_name",
        "date_of_birth.month",
        "date_of_birth.day",
        "sex",
        "card_serial",
        "correlation_id",
    }


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


# -- attestation_claims -------------------------------------------------------------------------


def test_attestation_claims_state_pin_fields_results_and_agency():
    c = claim(full_name="NGUYEN VAN AN", sex=int(Sex.MALE), card_serial=SERIAL, correlation_id="r9")
    outcome = verify(c, RECORD, TODAY)
    claims = attestation_claims(c, outcome, "bank-01")
    assert claims == {
        "sub": PIN,
        "agency": "bank-01",
        "result": "NO_MATCH",
        "fields": {"full_name": False, "sex": True, "card_serial": True},
        "citizen_status": "ALIVE",
        "card_state": "ACTIVE",
        "correlation_id": "r9",
    }
    # Nothing the caller did not already send, nothing personal from the record.
    text = repr(claims)
    for secret in ("Nguyễn", "NGUYEN", "1990", "MALE"):
        assert secret not in text


def test_attestation_claims_for_not_found_and_without_correlation_id():
    c = claim(date_of_birth=(1990, 5, 17))
    claims = attestation_claims(c, verify(c, None, TODAY), "portal")
    assert claims == {"sub": PIN, "agency": "portal", "result": "NOT_FOUND", "fields": {}}


def test_attestation_claims_for_a_match_without_card():
    c = claim(full_name=NAME, date_of_birth=(1990, 5, 17))
    outcome = verify(c, record(status=CitizenStatus.DECEASED), TODAY)
    claims = attestation_claims(c, outcome, "portal")
    assert claims == {
        "sub": PIN,
        "agency": "portal",
        "result": "MATCH",
        "fields": {"full_name": True, "date_of_birth": True},
        "citizen_status": "DECEASED",
    }


# -- resolve_read_mask --------------------------------------------------------------------------

ENTITLED = frozenset({"full_name", "date_of_birth", "sex", "hometown"})


def test_citizen_fields_are_the_citizen_message_fields_in_order():
    assert tuple(f.name for f in citizen_pb2.Citizen.DESCRIPTOR.fields) == CITIZEN_FIELDS


def test_empty_mask_means_every_entitled_field_and_pin():
    assert resolve_read_mask([], ENTITLED) == [
        "pin",
        "full_name",
        "date_of_birth",
        "sex",
        "hometown",
    ]
    assert resolve_read_mask([], frozenset()) == ["pin"]
    everything = resolve_read_mask([], frozenset(CITIZEN_FIELDS))
    assert everything == list(CITIZEN_FIELDS)


def test_mask_within_entitlement():
    assert resolve_read_mask(["date_of_birth", "full_name"], ENTITLED) == [
        "pin",
        "date_of_birth",
        "full_name",
    ]
    assert resolve_read_mask(["sex", "sex"], ENTITLED) == ["pin", "sex"]


def test_pin_is_always_allowed():
    assert resolve_read_mask(["pin"], frozenset()) == ["pin"]
    assert resolve_read_mask(["full_name", "pin"], ENTITLED) == ["pin", "full_name"]


@pytest.mark.parametrize(
    ("paths", "named"),
    [
        (["nickname"], ["read_mask.paths[0]"]),
        (["full_name", "nickname"], ["read_mask.paths[1]"]),
        (["Full_Name"], ["read_mask.paths[0]"]),
        (["date_of_birth.year"], ["read_mask.paths[0]"]),
        (["bogus", "sex", "other"], ["read_mask.paths[0]", "read_mask.paths[2]"]),
        # An unknown path is a bad request even next to a forbidden one.
        (["permanent_address", "nickname"], ["read_mask.paths[1]"]),
    ],
)
def test_unknown_path_is_invalid_naming_its_index(paths, named):
    with pytest.raises(RegistryError) as info:
        resolve_read_mask(paths, ENTITLED)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert [v.field for v in info.value.field_violations] == named


def test_unknown_path_after_a_repeated_path_is_named_by_its_own_index():
    # paths[2] is the unknown one; paths[1] ("full_name") is a valid path.
    with pytest.raises(RegistryError) as info:
        resolve_read_mask(["full_name", "full_name", "nickname"], ENTITLED)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert [v.field for v in info.value.field_violations] == ["read_mask.paths[2]"]


@pytest.mark.parametrize(
    ("paths", "forbidden"),
    [
        (["permanent_address"], "permanent_address"),
        (["full_name", "permanent_address", "sex", "religion"], "permanent_address,religion"),
        (["pin", "legacy_ids"], "legacy_ids"),
    ],
)
def test_forbidden_fields_are_permission_denied_naming_exactly_them(paths, forbidden):
    with pytest.raises(RegistryError) as info:
        resolve_read_mask(paths, ENTITLED)
    error = info.value
    assert error.code == Code.PERMISSION_DENIED
    assert error.reason == "FIELDS_NOT_PERMITTED"
    assert error.metadata["fields"] == forbidden
    for name in forbidden.split(","):
        assert name in error.message
    for name in set(paths) - set(forbidden.split(",")):
        assert name not in error.metadata["fields"].split(",")
