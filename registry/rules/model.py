"""Domain types of the register (SPEC §3). Enum values equal the proto enum numbers."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime

from registry.rules.dates import PartialDate
from registry.rules.pin import Sex

__all__ = [
    "CHANGE_TYPES",
    "BirthRegistration",
    "BloodType",
    "Caller",
    "Citizen",
    "CitizenStatus",
    "DeathAnnulment",
    "DeathRegistration",
    "MaritalStatus",
    "Sex",
]


class CitizenStatus(enum.IntEnum):
    """Life status of a citizen record."""

    ALIVE = 1
    DECEASED = 2
    MISSING = 3
    PIN_CANCELLED = 4


class MaritalStatus(enum.IntEnum):
    """Marital status; UNSPECIFIED when the register does not know."""

    UNSPECIFIED = 0
    SINGLE = 1
    MARRIED = 2
    DIVORCED = 3
    WIDOWED = 4


class BloodType(enum.IntEnum):
    """ABO blood group, recorded only at the citizen's request."""

    UNSPECIFIED = 0
    A = 1
    B = 2
    AB = 3
    O = 4  # noqa: E741 - the blood group's name


# Change feed event types by registration name (`registry agency add --watch-types`), with
# their proto ChangeType numbers.
CHANGE_TYPES = {
    "BORN": 1,
    "DIED": 2,
    "UPDATED": 3,
    "PIN_REPLACED": 4,
    "CARD_ISSUED": 5,
    "CARD_STATE_CHANGED": 6,
}


@dataclass(frozen=True)
class Caller:
    """The authenticated agency behind a call."""

    agency_id: str
    scopes: frozenset[str]
    fields: frozenset[str]
    kid: str
    purpose: str = ""
    diacritic_insensitive: bool = False
    """Name claims compared without diacritics: granted only by the agency's registration."""
    rate_limit: int | None = None
    """Calls per second the agency may make (None: not limited)."""
    miss_budget: int | None = None
    """NOT_FOUND/NO_MATCH answers per minute (None: the server's default)."""
    watch_types: frozenset[int] = frozenset()
    """The change types (CHANGE_TYPES numbers) WatchChanges may deliver to the agency."""


@dataclass(frozen=True)
class Citizen:
    """A citizen as the register holds them."""

    pin: str
    full_name: str
    date_of_birth: PartialDate
    sex: Sex
    registration_province_code: str
    other_names: tuple[str, ...] = ()
    place_of_birth: str = ""
    hometown: str = ""
    ethnicity: str = ""
    religion: str = ""
    nationality: str = ""
    blood_type: BloodType = BloodType.UNSPECIFIED
    legacy_ids: tuple[str, ...] = ()
    father_pin: str | None = None
    mother_pin: str | None = None
    spouse_pin: str | None = None
    representative_pin: str | None = None
    permanent_address: str = ""
    temporary_address: str = ""
    current_address: str = ""
    marital_status: MaritalStatus = MaritalStatus.UNSPECIFIED
    status: CitizenStatus = CitizenStatus.ALIVE
    date_of_death: PartialDate | None = None
    replaced_by_pin: str | None = None
    pin_mismatch: bool = False
    version: int = 1
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True)
class BirthRegistration:
    """A validated, normalised RegisterBirth request (without its request_id)."""

    full_name: str
    sex: Sex
    date_of_birth: PartialDate
    place_of_birth: str
    registration_province_code: str
    hometown: str
    ethnicity: str
    nationality: str
    father_pin: str | None
    mother_pin: str | None
    registration_authority: str
    registration_number: str
    registered_on: date | None
    """None when the request did not say: the registration is dated the day it is carried out."""


@dataclass(frozen=True)
class DeathRegistration:
    """A validated RegisterDeath request (without its request_id)."""

    pin: str
    date_of_death: PartialDate
    registration_authority: str
    registration_number: str


@dataclass(frozen=True)
class DeathAnnulment:
    """A validated AnnulDeathRegistration request (without its request_id)."""

    pin: str
    reason: str
    decision_reference: str
    """The deciding authority's reference (e.g. the number of its decision)."""


# Free-text Citizen fields set by imports and corrections, with their maximum lengths.
TEXT_FIELD_LIMITS = {
    "place_of_birth": 500,
    "hometown": 500,
    "ethnicity": 100,
    "religion": 100,
    "permanent_address": 500,
    "temporary_address": 500,
    "current_address": 500,
}
# Citizen fields that refer to other citizens by PIN.
REFERENCE_PIN_FIELDS = ("father_pin", "mother_pin", "spouse_pin", "representative_pin")

CITIZEN_FIELDS = (
    "pin",
    "full_name",
    "other_names",
    "date_of_birth",
    "sex",
    "place_of_birth",
    "registration_province_code",
    "hometown",
    "ethnicity",
    "religion",
    "nationality",
    "blood_type",
    "legacy_ids",
    "father_pin",
    "mother_pin",
    "spouse_pin",
    "representative_pin",
    "permanent_address",
    "temporary_address",
    "current_address",
    "marital_status",
    "status",
    "date_of_death",
    "replaced_by_pin",
    "version",
    "create_time",
    "update_time",
    "pin_mismatch",
)
"""The fields of the Citizen message (proto names): what an agency may be entitled to read."""
