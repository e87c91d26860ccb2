"""Claims and records for the verification rules' tests (registry.rules.identity)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

import pytest

from registry.rules.cards import CardState
from registry.rules.dates import PartialDate
from registry.rules.errors import Code, RegistryError
from registry.rules.identity import (
    Claim,
    RawClaim,
    Record,
    VerifyResult,
    validate_claim,
    verify,
)
from registry.rules.model import CitizenStatus, Sex

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
