"""Tests for registry.rules.cards: request validation (issue, state changes, legacy numbers).

Pure: no server, no database.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.rules.cards import (
    Card,
    CardIssue,
    CardKind,
    CardState,
    LegacyLink,
    RawIssue,
    RawStateChange,
    StateChange,
    card_expiry,
    validate_issue,
    validate_legacy_id,
    validate_link,
    validate_state_change,
)
from registry.rules.civil_registration import Violations
from registry.rules.dates import PartialDate
from registry.rules.errors import Code, FieldViolation, RegistryError

VALID_PIN = "001090000123"
AUTH = "issuing_authority"


# -- helpers for validation ---------------------------------------------------------------------


def bad_fields(call: Any, *args: Any) -> list[str]:
    """Run a validation that must fail; return the fields its violations name, in order."""
    with pytest.raises(RegistryError) as info:
        call(*args)
    error = info.value
    assert error.code is Code.INVALID_ARGUMENT
    assert error.field_violations, "INVALID_ARGUMENT without field violations"
    for violation in error.field_violations:
        assert isinstance(violation, FieldViolation)
        assert violation.description, f"violation of {violation.field} has no description"
    return [v.field for v in error.field_violations]


def raw_issue(**overrides: Any) -> RawIssue:
    fields: dict[str, Any] = {
        "request_id": "issue-req-0001",
        "pin": VALID_PIN,
        "kind": 1,
        "serial": "AB-123456",
        "issue_date": (2024, 6, 15),
        "issuing_authority": "Cục Cảnh sát QLHC về TTXH",
    }
    fields.update(overrides)
    return RawIssue(**fields)


def raw_change(**overrides: Any) -> RawStateChange:
    fields: dict[str, Any] = {
        "request_id": "revoke-req-0001",
        "serial": "AB-123456",
        "reason": "card reported stolen",
    }
    fields.update(overrides)
    return RawStateChange(**fields)


# -- validate_issue -----------------------------------------------------------------------------


def test_valid_issue_passes_and_is_normalised() -> None:
    issue = validate_issue(
        raw_issue(
            pin=f" {VALID_PIN} ",
            serial="  ab-12345x ",
            issuing_authority="  Công an   tỉnh Nam Định ",
        )
    )
    assert issue == CardIssue(
        pin=VALID_PIN,
        kind=CardKind.FIRST_ISSUE,
        serial="AB-12345X",
        issue_date=date(2024, 6, 15),
        issuing_authority="Công an tỉnh Nam Định",
    )
    assert issue.kind is CardKind.FIRST_ISSUE


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        pytest.param(1, CardKind.FIRST_ISSUE, id="first-issue"),
        pytest.param(2, CardKind.EXCHANGE, id="exchange"),
        pytest.param(3, CardKind.REISSUE, id="reissue"),
    ],
)
def test_every_card_kind_is_accepted(kind: int, expected: CardKind) -> None:
    assert validate_issue(raw_issue(kind=kind)).kind is expected


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        pytest.param("A", "A", id="one-char"),
        pytest.param("A" * 32, "A" * 32, id="32-chars"),
        pytest.param("0123456789", "0123456789", id="digits"),
        pytest.param("\tc-9z\n", "C-9Z", id="tab-newline-trimmed-lowercase"),
    ],
)
def test_valid_serials(serial: str, expected: str) -> None:
    assert validate_issue(raw_issue(serial=serial)).serial == expected


def test_issuing_authority_of_200_characters_is_accepted() -> None:
    assert validate_issue(raw_issue(issuing_authority="x" * 200)).issuing_authority == "x" * 200


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        # request_id
        pytest.param({"request_id": ""}, ["request_id"], id="request_id-empty"),
        pytest.param({"request_id": "req 1"}, ["request_id"], id="request_id-space"),
        pytest.param({"request_id": "r" * 129}, ["request_id"], id="request_id-129-chars"),
        pytest.param({"request_id": "réq-1"}, ["request_id"], id="request_id-non-ascii"),
        # pin
        pytest.param({"pin": ""}, ["pin"], id="pin-empty"),
        pytest.param({"pin": "   "}, ["pin"], id="pin-blank"),
        pytest.param({"pin": "00109000012"}, ["pin"], id="pin-11-digits"),
        pytest.param({"pin": "0010900001234"}, ["pin"], id="pin-13-digits"),
        pytest.param({"pin": "00109000012A"}, ["pin"], id="pin-letter"),
        pytest.param({"pin": "ABCDEFGHIJKL"}, ["pin"], id="pin-letters"),
        pytest.param({"pin": "٠٠١٠٩٠٠٠٠١٢٣"}, ["pin"], id="pin-arabic-indic-digits"),
        pytest.param({"pin": "００１０９００００１２３"}, ["pin"], id="pin-fullwidth-digits"),
        pytest.param({"pin": "001 090 000 123"}, ["pin"], id="pin-inner-spaces"),
        # kind
        pytest.param({"kind": 0}, ["kind"], id="kind-0-unspecified"),
        pytest.param({"kind": 9}, ["kind"], id="kind-9-unknown"),
        pytest.param({"kind": 4}, ["kind"], id="kind-4-unknown"),
        pytest.param({"kind": -1}, ["kind"], id="kind-negative"),
        # serial
        pytest.param({"serial": ""}, ["serial"], id="serial-empty"),
        pytest.param({"serial": "   "}, ["serial"], id="serial-blank"),
        pytest.param({"serial": "AB 123"}, ["serial"], id="serial-inner-space"),
        pytest.param({"serial": "A" * 33}, ["serial"], id="serial-33-chars"),
        pytest.param({"serial": "AB_123"}, ["serial"], id="serial-underscore"),
        pytest.param({"serial": "ÂB123"}, ["serial"], id="serial-non-ascii-letter"),
        pytest.param({"serial": "ß123"}, ["serial"], id="serial-eszett-not-upper-cased-to-SS"),
        pytest.param({"serial": "ﬀ123"}, ["serial"], id="serial-ligature-not-upper-cased-to-FF"),
        pytest.param({"serial": "١٢٣"}, ["serial"], id="serial-arabic-indic-digits"),
        # issue_date
        pytest.param({"issue_date": (0, 0, 0)}, ["issue_date"], id="issue_date-missing"),
        pytest.param({"issue_date": (2024, 6, 0)}, ["issue_date"], id="issue_date-year-month"),
        pytest.param({"issue_date": (2024, 0, 0)}, ["issue_date"], id="issue_date-year-only"),
        pytest.param({"issue_date": (2023, 2, 29)}, ["issue_date.day"], id="issue_date-29feb"),
        pytest.param({"issue_date": (2024, 4, 31)}, ["issue_date.day"], id="issue_date-31apr"),
        pytest.param({"issue_date": (2024, 13, 1)}, ["issue_date.month"], id="issue_date-month-13"),
        pytest.param({"issue_date": (0, 6, 15)}, ["issue_date.year"], id="issue_date-no-year"),
        # issuing_authority
        pytest.param({"issuing_authority": ""}, [AUTH], id="authority-empty"),
        pytest.param({"issuing_authority": "  \t "}, [AUTH], id="authority-blank"),
        pytest.param({"issuing_authority": "x" * 201}, [AUTH], id="authority-201-chars"),
        pytest.param({"issuing_authority": "Công an\x00"}, [AUTH], id="authority-nul"),
    ],
)
def test_invalid_issue_names_the_field(overrides: dict[str, Any], fields: list[str]) -> None:
    assert bad_fields(validate_issue, raw_issue(**overrides)) == fields


def test_issue_with_every_field_bad_names_all_in_one_error() -> None:
    raw = RawIssue(
        request_id="",
        pin="12345",
        kind=9,
        serial="",
        issue_date=(2023, 2, 29),
        issuing_authority="",
    )
    with pytest.raises(RegistryError) as info:
        validate_issue(raw)
    error = info.value
    assert error.code is Code.INVALID_ARGUMENT
    assert [v.field for v in error.field_violations] == [
        "request_id",
        "pin",
        "kind",
        "serial",
        "issue_date.day",
        "issuing_authority",
    ]
    assert all(isinstance(v, FieldViolation) and v.description for v in error.field_violations)


def test_issue_with_partial_date_and_bad_serial_names_both() -> None:
    fields = bad_fields(validate_issue, raw_issue(serial="a b", issue_date=(2024, 6, 0)))
    assert fields == ["serial", "issue_date"]


# -- validate_state_change ----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["RevokeCard", "WithholdCard", "ReleaseCard"])
def test_valid_state_change_passes_and_is_normalised(action: str) -> None:
    change = validate_state_change(
        action, raw_change(serial=" ab-123456 ", reason="  card   reported\tstolen ")
    )
    assert change == StateChange(action=action, serial="AB-123456", reason="card reported stolen")


def test_reason_of_500_characters_is_accepted() -> None:
    change = validate_state_change("RevokeCard", raw_change(reason="r" * 500))
    assert change.reason == "r" * 500


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        pytest.param({"request_id": ""}, ["request_id"], id="request_id-empty"),
        pytest.param({"request_id": "a b"}, ["request_id"], id="request_id-space"),
        pytest.param({"serial": ""}, ["serial"], id="serial-empty"),
        pytest.param({"serial": "  "}, ["serial"], id="serial-blank"),
        pytest.param({"serial": "AB 12"}, ["serial"], id="serial-inner-space"),
        pytest.param({"serial": "A" * 33}, ["serial"], id="serial-33-chars"),
        pytest.param({"serial": "ÂB12"}, ["serial"], id="serial-non-ascii"),
        pytest.param({"reason": ""}, ["reason"], id="reason-empty"),
        pytest.param({"reason": " \t\n "}, ["reason"], id="reason-blank"),
        pytest.param({"reason": "r" * 501}, ["reason"], id="reason-501-chars"),
        pytest.param({"reason": "lost\x00"}, ["reason"], id="reason-nul"),
        pytest.param({"reason": "lost\x07card"}, ["reason"], id="reason-bel"),
        pytest.param({"reason": "\x1b[31mlost"}, ["reason"], id="reason-escape"),
        pytest.param({"reason": "lost\x7f"}, ["reason"], id="reason-del"),
        pytest.param({"reason": "lost\x1fcard"}, ["reason"], id="reason-unit-separator"),
        pytest.param({"reason": "lost\u200bcard"}, ["reason"], id="reason-zero-width-space"),
        pytest.param({"reason": "lost\u202ecard"}, ["reason"], id="reason-bidi-override"),
    ],
)
def test_invalid_state_change_names_the_field(overrides: dict[str, Any], fields: list[str]) -> None:
    assert bad_fields(validate_state_change, "RevokeCard", raw_change(**overrides)) == fields


def test_state_change_with_every_field_bad_names_all() -> None:
    raw = RawStateChange(request_id="", serial="", reason="")
    assert bad_fields(validate_state_change, "WithholdCard", raw) == [
        "request_id",
        "serial",
        "reason",
    ]


# -- validate_link / validate_legacy_id ---------------------------------------------------------


@pytest.mark.parametrize(
    ("legacy_id", "expected"),
    [
        pytest.param("123456789", "123456789", id="9-digits"),
        pytest.param("012345678901", "012345678901", id="12-digits"),
        pytest.param(" 123456789 ", "123456789", id="9-digits-trimmed"),
        pytest.param("000000000", "000000000", id="9-zeros"),
    ],
)
def test_valid_link_passes(legacy_id: str, expected: str) -> None:
    link = validate_link("link-req-0001", f" {VALID_PIN} ", legacy_id)
    assert link == LegacyLink(pin=VALID_PIN, legacy_id=expected)


BAD_LEGACY_IDS = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("12345678", id="8-digits"),
    pytest.param("1234567890", id="10-digits"),
    pytest.param("12345678901", id="11-digits"),
    pytest.param("1234567890123", id="13-digits"),
    pytest.param("12345678A", id="9-with-letter"),
    pytest.param("ABCDEFGHI", id="9-letters"),
    pytest.param("123 456 789", id="inner-spaces"),
    pytest.param("123-456-789", id="dashes"),
    pytest.param("١٢٣٤٥٦٧٨٩", id="arabic-indic-digits"),
    pytest.param("１２３４５６７８９", id="fullwidth-digits"),
]


@pytest.mark.parametrize("legacy_id", BAD_LEGACY_IDS)
def test_invalid_link_legacy_id_is_refused(legacy_id: str) -> None:
    assert bad_fields(validate_link, "link-req-0001", VALID_PIN, legacy_id) == ["legacy_id"]


@pytest.mark.parametrize("legacy_id", BAD_LEGACY_IDS)
def test_validate_legacy_id_records_a_violation_under_the_given_field(legacy_id: str) -> None:
    v = Violations()
    value = validate_legacy_id(v, "legacy_ids[2]", legacy_id)
    assert value == legacy_id.strip()
    assert [item.field for item in v.items] == ["legacy_ids[2]"]
    assert v.items[0].description


@pytest.mark.parametrize("legacy_id", ["123456789", "123456789012"])
def test_validate_legacy_id_accepts_9_and_12_digits(legacy_id: str) -> None:
    v = Violations()
    assert validate_legacy_id(v, "legacy_id", legacy_id) == legacy_id
    assert v.items == []


@pytest.mark.parametrize(
    ("args", "fields"),
    [
        pytest.param(("", VALID_PIN, "123456789"), ["request_id"], id="request_id-empty"),
        pytest.param(("a b", VALID_PIN, "123456789"), ["request_id"], id="request_id-space"),
        pytest.param(("r-1", "", "123456789"), ["pin"], id="pin-empty"),
        pytest.param(("r-1", "00109000012", "123456789"), ["pin"], id="pin-11-digits"),
        pytest.param(("r-1", "00109000012X", "123456789"), ["pin"], id="pin-letter"),
        pytest.param(("r-1", "٠٠١٠٩٠٠٠٠١٢٣", "123456789"), ["pin"], id="pin-arabic-indic"),
        pytest.param(("", "x", "1"), ["request_id", "pin", "legacy_id"], id="all-bad"),
    ],
)
def test_invalid_link_names_every_bad_field(args: tuple[str, str, str], fields: list[str]) -> None:
    assert bad_fields(validate_link, *args) == fields


def test_valid_requests_are_frozen_values() -> None:
    issue = validate_issue(raw_issue())
    assert replace(issue, serial="X") != issue
    with pytest.raises(AttributeError):
        issue.serial = "X"  # type: ignore[misc]


@given(
    year=st.integers(1900, 2030),
    month=st.one_of(st.none(), st.integers(1, 12)),
    issued_after_days=st.integers(0, 80 * 366),
)
def test_a_partial_date_of_birth_never_lets_a_card_outlive_the_rule(year, month, issued_after_days):
    partial = PartialDate(year, month)
    issue_date = partial.earliest() + timedelta(days=issued_after_days)
    expiry = card_expiry(partial, issue_date)
    day = partial.earliest()
    while day <= min(partial.latest(), issue_date):
        real = card_expiry(day, issue_date)
        if real is not None:
            assert expiry is not None and expiry <= real, (day, issue_date, expiry, real)
        day += timedelta(days=1)


@pytest.mark.parametrize("control", ["\x1c", "\x1f", "\x85"])
def test_control_characters_around_identifiers_are_refused_not_trimmed(control):
    raw = RawIssue(
        request_id="req-1",
        pin=f"001090000123{control}",
        kind=1,
        serial=f"{control}AB12",
        issue_date=(2024, 6, 1),
        issuing_authority="Cục Cảnh sát QLHC",
    )
    with pytest.raises(RegistryError) as info:
        validate_issue(raw)
    assert {v.field for v in info.value.field_violations} == {"pin", "serial"}
    assert validate_issue(replace(raw, pin=" 001090000123 ", serial="\tAB12 ")).serial == "AB12"


# -- found by mutation testing (issue 14): each of these was a surviving mutant ---------------


@pytest.mark.parametrize(
    ("overrides", "field", "description"),
    [
        ({"serial": ""}, "serial", "is required (the physical card's serial)"),
        ({"serial": "AB 12!"}, "serial", "must be 1-32 characters: letters A-Z, digits and '-'"),
        ({"kind": 0}, "kind", "is required (FIRST_ISSUE, EXCHANGE or REISSUE)"),
        ({"kind": 9}, "kind", "9 is not a known CardKind value"),
        (
            {"issue_date": (2024, 6, 0)},
            "issue_date",
            "must be a complete date (year, month and day)",
        ),
    ],
)
def test_a_bad_serial_or_kind_is_described_exactly(overrides, field, description):
    # The descriptions reach the police stations' screens (google.rpc.BadRequest): pinned.
    with pytest.raises(RegistryError) as info:
        validate_issue(raw_issue(**overrides))
    assert [(v.field, v.description) for v in info.value.field_violations] == [(field, description)]


def test_requests_and_cards_are_frozen_values():
    # A validated request is fingerprinted (rules/fingerprints.py) and then used: nothing may
    # change it in between. Cards are shared between the cache and the answers.
    import dataclasses

    values = [
        raw_issue(),
        validate_issue(raw_issue()),
        raw_change(),
        validate_state_change("RevokeCard", raw_change()),
        LegacyLink(VALID_PIN, "123456789"),
        Card("AB-1", VALID_PIN, CardKind.FIRST_ISSUE, CardState.ACTIVE, date(2024, 1, 1), None,
             "Cục", ""),
    ]  # fmt: skip
    for value in values:
        field = dataclasses.fields(value)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, getattr(value, field))


@pytest.mark.parametrize(
    ("legacy_id", "description"),
    [
        ("", "is required (the old 9- or 12-digit CMND number)"),
        ("12345", "must be an old CMND number of 9 or 12 digits"),
    ],
)
def test_a_bad_legacy_id_is_described_exactly(legacy_id, description):
    with pytest.raises(RegistryError) as info:
        validate_link("link-req-0001", VALID_PIN, legacy_id)
    assert [(v.field, v.description) for v in info.value.field_violations] == [
        ("legacy_id", description)
    ]
