"""Corrections of citizen records (UpdateCitizen) and PIN re-establishment: the pure rules.

An update names the fields it changes (`update_mask`) and the version it was based on. Most
fields are simply set. The fields a PIN is made of — sex, year of birth, province of birth
registration (SPEC §2: `PPP G YY`) — cannot be changed under the same PIN: a change that alters
any of them re-establishes the PIN (Circular 59/2021 art. 6): a new PIN is issued for the
corrected data, the old one is cancelled and points at the new one forever.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from registry.rules import names, pin
from registry.rules.civil_registration import (
    _NATIONALITY_RE,
    _PROVINCE_RE,
    Violations,
    _reference_pin,
    check_request_id,
    trim,
)
from registry.rules.model import (
    REFERENCE_PIN_FIELDS,
    TEXT_FIELD_LIMITS,
    BloodType,
    Citizen,
    MaritalStatus,
    Sex,
)

OUTPUT_ONLY = frozenset(
    {"pin", "replaced_by_pin", "version", "create_time", "update_time", "pin_mismatch"}
)
# Fields with their own RPC: an update cannot set them. Civil status changes only through the
# civil-status paths, which keep their registration details and the decision behind them: an
# update that set ALIVE would revive a registered death (the card verifying again, the date
# of death left behind).
ELSEWHERE = {
    "legacy_ids": "link old numbers with CardService.LinkLegacyId",
    "status": "civil status changes only through CivilRegistrationService",
    "date_of_death": "use CivilRegistrationService RegisterDeath or AnnulDeathRegistration",
}


@dataclass(frozen=True)
class Update:
    """A validated UpdateCitizen request (without its request_id)."""

    pin: str
    expected_version: int
    changes: tuple[tuple[str, Any], ...]
    """(field, normalised new value) in mask order; None clears an optional reference."""

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.changes)


def validate_update(
    request_id: str,
    raw_pin: str,
    paths: Sequence[str],
    values: Mapping[str, Any],
    expected_version: int,
    prefixes: pin.PrefixTable,
    today: date,
    known_fields: frozenset[str],
) -> Update:
    """Validate an update; raise INVALID_ARGUMENT naming every bad field.

    `values` holds the raw new value of each masked field (DateParts for dates, ints for
    enums, str, or a list of str for other_names).
    """
    v = Violations()
    check_request_id(v, request_id)
    value_pin = v.pin("citizen.pin", raw_pin)
    if expected_version < 1:
        v.add("expected_version", "must be the record's version as last read (1 or more)")
    if not paths:
        v.add("update_mask", "must name at least one field to change")
    changes: list[tuple[str, Any]] = []
    for index, path in enumerate(dict.fromkeys(paths)):
        where = f"update_mask.paths[{index}]"
        if path in OUTPUT_ONLY:
            v.add(where, f"{path[:64]!r} is output-only and cannot be changed")
        elif path in ELSEWHERE:
            v.add(where, f"{path!r} cannot be changed here: {ELSEWHERE[path]}")
        elif path not in known_fields:
            v.add(where, f"{path[:64]!r} is not a Citizen field")
        else:
            changes.append((path, _value(v, path, values.get(path), prefixes, today)))
    v.raise_if_any()
    return Update(value_pin, expected_version, tuple(changes))


def _value(v: Violations, field: str, raw: Any, prefixes: pin.PrefixTable, today: date) -> Any:
    where = f"citizen.{field}"
    if field == "full_name":
        value, problem = names.validate_name(raw)
        if problem:
            v.add(where, problem)
        return value
    if field == "other_names":
        kept = []
        for i, item in enumerate(raw):
            name, problem = names.validate_name(item)
            if problem:
                v.add(f"{where}[{i}]", problem)
            kept.append(name)
        return tuple(kept)
    if field == "date_of_birth":
        dob = v.date(where, raw, required=True)
        if dob is not None and dob.earliest() > today:
            v.add(where, f"{dob} is in the future")
        elif dob is not None and not pin.MIN_BIRTH_YEAR <= dob.year <= pin.MAX_BIRTH_YEAR:
            v.add(f"{where}.year", f"must be in {pin.MIN_BIRTH_YEAR}-{pin.MAX_BIRTH_YEAR}")
        return dob
    if field == "sex":
        return _enum(v, where, Sex, raw, allow_zero=False)
    if field in ("blood_type", "marital_status"):
        kind = BloodType if field == "blood_type" else MaritalStatus
        return _enum(v, where, kind, raw, allow_zero=True)
    if field == "registration_province_code":
        code = trim(raw)
        if not _PROVINCE_RE.fullmatch(code):
            v.add(where, "must be a 3-digit province code, e.g. 001")
        elif prefixes.get(code) is None:
            v.add(where, f"{code} is not a known province code")
        return code
    if field == "nationality":
        code = trim(raw)
        code = code.upper() if code.isascii() else code
        if not _NATIONALITY_RE.fullmatch(code):
            v.add(where, "must be an ISO 3166-1 alpha-2 code, e.g. VN")
        return code
    if field in REFERENCE_PIN_FIELDS:
        return _reference_pin(v, where, raw)
    return v.text(where, raw, max_length=TEXT_FIELD_LIMITS.get(field, 500), required=False)


def _enum(v: Violations, where: str, kind: Any, raw: int, *, allow_zero: bool) -> Any:
    if raw == 0 and not allow_zero:
        v.add(where, "is required")
        return None
    try:
        return kind(raw)
    except ValueError:
        v.add(where, f"{raw} is not a known value")
        return None


def apply(citizen: Citizen, update: Update) -> Citizen:
    """Return the record with the update's changes."""
    return dataclasses.replace(citizen, **dict(update.changes))


def needs_new_pin(before: Citizen, after: Citizen) -> bool:
    """Tell whether the change alters what the PIN is made of (sex, birth year, province)."""
    return (
        before.sex != after.sex
        or before.date_of_birth.year != after.date_of_birth.year
        or before.registration_province_code != after.registration_province_code
    )


def check_related(citizen: Citizen, v: Violations) -> None:
    """Checks across fields of the resulting record (a person is not their own parent)."""
    for field in REFERENCE_PIN_FIELDS:
        if getattr(citizen, field) == citizen.pin:
            v.add(f"citizen.{field}", "cannot be the citizen's own PIN")
