"""Tests for registry.rules.identity.validate_claim: a claim is a well-formed PIN and at least
one of full name, date of birth, sex, card serial; every bad field is named in one
INVALID_ARGUMENT. Pure: no server, no database.
"""

from __future__ import annotations

import unicodedata

import pytest

from registry.rules.dates import PartialDate
from registry.rules.errors import Code, RegistryError
from registry.rules.identity import (
    MAX_CORRELATION_ID,
    validate_claim,
)
from registry.rules.model import Sex
from tests.rules.verification import (
    ALL_FIELDS,
    DOB,
    NAME,
    PIN,
    SERIAL,
    claim,
    invalid,
    raw,
)

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


# -- found by mutation testing (issue 14) -------------------------------------------------------


def test_a_correlation_id_may_have_128_characters_and_no_more():
    # The limit the proto documents (VerifyIdentityRequest.correlation_id), written out.
    assert validate_claim(raw(correlation_id="c" * 128)).correlation_id == "c" * 128
    assert invalid(raw(correlation_id="c" * 129)) == ["correlation_id"]


def test_verify_results_are_the_proto_numbers():
    from registry.rules.identity import VerifyResult
    from registry.v1 import identity_service_pb2

    wire = {
        name.removeprefix("VERIFY_RESULT_"): number
        for name, number in identity_service_pb2.VerifyResult.items()
        if number != 0
    }
    assert {r.name: r.value for r in VerifyResult} == wire


def test_claims_records_and_outcomes_are_frozen_values():
    import dataclasses

    from registry.rules.identity import Outcome, Record, VerifyResult
    from registry.rules.model import CitizenStatus

    values = [
        raw(),
        validate_claim(raw()),
        Record(NAME, PartialDate(1990, 5, 17), Sex.MALE, CitizenStatus.ALIVE, None, None),
        Outcome(VerifyResult.MATCH, {}, None, None),
    ]
    for value in values:
        field = dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, getattr(value, field))


@pytest.mark.parametrize(
    ("overrides", "field", "description"),
    [
        ({"sex": 7}, "sex", "7 is not a known Sex value"),
        (
            {"correlation_id": "c" * 129},
            "correlation_id",
            "must be at most 128 printable characters",
        ),
        (
            {"full_name": "", "date_of_birth": (0, 0, 0), "sex": 0, "card_serial": ""},
            "pin",
            "give at least one of full_name, date_of_birth, sex, card_serial to verify",
        ),
    ],
)
def test_a_bad_claim_is_described_exactly(overrides, field, description):
    with pytest.raises(RegistryError) as info:
        validate_claim(raw(**overrides))
    assert [(v.field, v.description) for v in info.value.field_violations] == [(field, description)]
