"""Validation of civil-registration requests: every bad field named, nothing written.

Pure functions over plain data (the API layer converts protobuf into `RawBirth`/`RawDeath`),
so every rule is testable without a network or a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Generic, TypeVar

from registry.rules import names, pin
from registry.rules.dates import PartialDate, parse_parts
from registry.rules.errors import FieldViolation, invalid_argument
from registry.rules.model import BirthRegistration, DeathAnnulment, DeathRegistration

_REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
_NATIONALITY_RE = re.compile(r"[A-Z]{2}")
_PROVINCE_RE = re.compile(r"[0-9]{3}")

T = TypeVar("T")
_ASCII_SPACE = " \t\r\n\v\f"


def trim(raw: str) -> str:
    """Strip surrounding ASCII whitespace only: control characters stay, to be refused."""
    return raw.strip(_ASCII_SPACE)


DateParts = tuple[int, int, int]
"""A google.type.Date as (year, month, day); zeros mean 'not given'."""


@dataclass(frozen=True)
class RawBirth:
    """A RegisterBirth request as received, before validation."""

    request_id: str
    full_name: str
    sex: int
    date_of_birth: DateParts
    place_of_birth: str
    registration_province_code: str
    hometown: str
    ethnicity: str
    nationality: str
    father_pin: str
    mother_pin: str
    registration_authority: str
    registration_number: str
    registered_on: DateParts


@dataclass(frozen=True)
class RawDeath:
    """A RegisterDeath request as received, before validation."""

    request_id: str
    pin: str
    date_of_death: DateParts
    registration_authority: str
    registration_number: str


@dataclass(frozen=True)
class RawAnnulment:
    """An AnnulDeathRegistration request as received, before validation."""

    request_id: str
    pin: str
    reason: str
    decision_reference: str


# Bounds of an annulment's texts: a reason in words, a decision's reference (number and date).
MAX_ANNULMENT_REASON = 500
MAX_DECISION_REFERENCE = 200


class Violations:
    """Collects field violations so that one answer names every bad field."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        self.deferred: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def defer(self, field: str, description: str) -> None:
        """Record a violation that depends on the register's tables, not on the request."""
        self.deferred.append(FieldViolation(field, description))

    def text(self, field: str, raw: str, *, max_length: int, required: bool = True) -> str:
        value, problem = names.validate_text(raw, max_length=max_length, required=required)
        if problem:
            self.add(field, problem)
        return value

    def date(self, field: str, parts: DateParts, *, required: bool) -> PartialDate | None:
        value, problems = parse_parts(*parts)
        for sub, message in problems:
            self.add(f"{field}.{sub}", message)
        if value is None and not problems and required:
            self.add(field, "is required")
        return value

    def pin(self, field: str, raw: str) -> str:
        """Check a required PIN: exactly 12 ASCII digits."""
        value = trim(raw)
        if not value:
            self.add(field, "is required")
        elif not pin.is_well_formed(value):
            self.add(field, "must be a PIN of exactly 12 digits")
        return value

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_argument([*self.items, *self.deferred])


def require_pin(raw: str, field: str = "pin") -> str:
    """Return a well-formed PIN, or raise INVALID_ARGUMENT naming the field."""
    v = Violations()
    value = v.pin(field, raw)
    v.raise_if_any()
    return value


def check_request_id(violations: Violations, request_id: str) -> None:
    """Require the caller's idempotency key: 1-128 printable ASCII characters, no spaces."""
    if not request_id:
        violations.add("request_id", "is required (the caller's idempotency key)")
    elif not _REQUEST_ID_RE.fullmatch(request_id):
        violations.add("request_id", "must be 1-128 printable ASCII characters without spaces")


def _reference_pin(violations: Violations, field: str, raw: str) -> str | None:
    value = trim(raw)
    if not value:
        return None
    if not pin.is_well_formed(value):
        violations.add(field, "must be a PIN of exactly 12 digits")
        return None
    return value


@dataclass(frozen=True)
class Checked(Generic[T]):
    """A normalised request, with the violations that depend on the register's current tables.

    Those are answered only if the request is not a replay: a retry of a registration that
    succeeded must get its original answer even if, say, its province code closed since.
    """

    value: T
    deferred: tuple[FieldViolation, ...] = ()

    def check(self) -> T:
        """Return the value, or raise INVALID_ARGUMENT for the deferred violations."""
        if self.deferred:
            raise invalid_argument(self.deferred)
        return self.value


def validate_birth(
    raw: RawBirth, prefixes: pin.PrefixTable, today: date
) -> Checked[BirthRegistration]:
    """Validate and normalise a birth registration; raise INVALID_ARGUMENT naming every field.

    Violations of rules that depend on the province table are deferred (see `Checked`) unless
    the request has other violations too, in which case all are raised together.
    """
    v = Violations()
    check_request_id(v, raw.request_id)

    full_name, problem = names.validate_name(raw.full_name)
    if problem:
        v.add("full_name", problem)

    sex: pin.Sex | None = None
    if raw.sex == 0:
        v.add("sex", "is required (SEX_MALE or SEX_FEMALE)")
    else:
        try:
            sex = pin.Sex(raw.sex)
        except ValueError:
            v.add("sex", f"{raw.sex} is not a known Sex value")

    dob = v.date("date_of_birth", raw.date_of_birth, required=True)
    if dob is not None:
        if dob.earliest() > today:
            v.add("date_of_birth", f"{dob} is in the future (today is {today.isoformat()})")
        elif not pin.MIN_BIRTH_YEAR <= dob.year <= pin.MAX_BIRTH_YEAR:
            v.add(
                "date_of_birth.year",
                f"PINs exist for births in {pin.MIN_BIRTH_YEAR}-{pin.MAX_BIRTH_YEAR} only",
            )

    place_of_birth = v.text("place_of_birth", raw.place_of_birth, max_length=500)

    province = trim(raw.registration_province_code)
    if not province:
        v.add("registration_province_code", "is required (3-digit province code, e.g. 001)")
    elif not _PROVINCE_RE.fullmatch(province):
        v.add("registration_province_code", "must be a 3-digit province code, e.g. 001")
    else:
        prefix = prefixes.get(province)
        if prefix is None:
            v.defer("registration_province_code", f"{province} is not a known province code")
        elif not prefix.open_on(today):
            v.defer(
                "registration_province_code",
                f"{province} ({prefix.name}) is closed for new PINs "
                f"(valid {prefix.valid_from.isoformat()} to "
                f"{prefix.valid_to.isoformat() if prefix.valid_to else 'open'})",
            )

    hometown = v.text("hometown", raw.hometown, max_length=500)
    ethnicity = v.text("ethnicity", raw.ethnicity, max_length=100)
    nationality = trim(raw.nationality)
    # Only ASCII is upper-cased: str.upper() would turn "ß" into a plausible "SS".
    if nationality.isascii():
        nationality = nationality.upper()
    if not nationality:
        v.add("nationality", "is required (ISO 3166-1 alpha-2 code, e.g. VN)")
    elif not _NATIONALITY_RE.fullmatch(nationality):
        v.add("nationality", "must be an ISO 3166-1 alpha-2 code, e.g. VN")

    father_pin = _reference_pin(v, "father_pin", raw.father_pin)
    mother_pin = _reference_pin(v, "mother_pin", raw.mother_pin)
    if father_pin is not None and father_pin == mother_pin:
        v.add("mother_pin", "must differ from father_pin")

    authority = v.text("registration_authority", raw.registration_authority, max_length=200)
    number = v.text("registration_number", raw.registration_number, max_length=64)

    registered = v.date("registered_on", raw.registered_on, required=False)
    # Left None when not given (the use case fills in the day it is carried out), so that an
    # identical retry after midnight is still the same request.
    registered_on: date | None = None
    if registered is not None:
        if not registered.is_complete:
            v.add("registered_on", "must be a complete date (year, month and day)")
        else:
            registered_on = registered.to_date()
            if registered_on > today:
                v.add("registered_on", f"{registered_on.isoformat()} is in the future")
            elif dob is not None and registered_on < dob.earliest():
                v.add("registered_on", "is before the date of birth")

    v.raise_if_any()
    assert sex is not None and dob is not None  # guaranteed by raise_if_any above
    birth = BirthRegistration(
        full_name=full_name,
        sex=sex,
        date_of_birth=dob,
        place_of_birth=place_of_birth,
        registration_province_code=province,
        hometown=hometown,
        ethnicity=ethnicity,
        nationality=nationality,
        father_pin=father_pin,
        mother_pin=mother_pin,
        registration_authority=authority,
        registration_number=number,
        registered_on=registered_on,
    )
    return Checked(birth, tuple(v.deferred))


def validate_death(raw: RawDeath, today: date) -> DeathRegistration:
    """Validate a death registration, or raise INVALID_ARGUMENT naming every bad field."""
    v = Violations()
    check_request_id(v, raw.request_id)
    value = v.pin("pin", raw.pin)
    dod = v.date("date_of_death", raw.date_of_death, required=True)
    if dod is not None and dod.earliest() > today:
        v.add("date_of_death", f"{dod} is in the future (today is {today.isoformat()})")
    authority = v.text("registration_authority", raw.registration_authority, max_length=200)
    number = v.text("registration_number", raw.registration_number, max_length=64)
    v.raise_if_any()
    assert dod is not None
    return DeathRegistration(
        pin=value, date_of_death=dod, registration_authority=authority, registration_number=number
    )


def validate_annulment(raw: RawAnnulment) -> DeathAnnulment:
    """Validate a death annulment, or raise INVALID_ARGUMENT naming every bad field."""
    v = Violations()
    check_request_id(v, raw.request_id)
    value = v.pin("pin", raw.pin)
    reason = v.text("reason", raw.reason, max_length=MAX_ANNULMENT_REASON)
    reference = v.text(
        "decision_reference", raw.decision_reference, max_length=MAX_DECISION_REFERENCE
    )
    v.raise_if_any()
    return DeathAnnulment(pin=value, reason=reason, decision_reference=reference)
