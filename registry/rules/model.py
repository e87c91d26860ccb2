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


class Kind(enum.Enum):
    """How a Citizen field is held: its Python value, its columns and its proto form."""

    TEXT = "text"
    """str, "" when unknown; one text column; a proto string."""
    PIN_REF = "pin_ref"
    """Another record's PIN or None; one text column (NULL); a proto string ("" for None)."""
    NAMES = "names"
    """tuple[str, ...]; one text[] column; a repeated proto string."""
    DATE = "date"
    """PartialDate (None where optional); year, month, day columns; a google.type.Date."""
    ENUM = "enum"
    """An IntEnum of this module; one smallint column; the proto enum's number."""
    INT = "int"
    BOOL = "bool"
    TIME = "time"
    """datetime; one timestamptz column; a google.protobuf.Timestamp."""


@dataclass(frozen=True)
class CitizenField:
    """One field of the Citizen record, as every layer needs to know it."""

    name: str
    """The name in the Citizen message, the Citizen dataclass and the read masks."""
    kind: Kind
    columns: tuple[str, ...] = ()
    """The columns of the citizens table that hold it; () for legacy_ids (their own table)."""
    enum: type[enum.IntEnum] | None = None
    max_length: int | None = None
    """Free text: the longest value imports and corrections accept."""
    updatable: bool = False
    """A correction sets it: UpdateCitizen's mask may name it (unless rules/updates.py ELSEWHERE
    sends it to its own RPC, as for status), and a re-established record copies it."""
    imported: bool = False
    """Import records carry it: a column of the import insert."""


def _field(name: str, kind: Kind, **options: object) -> CitizenField:
    columns = options.pop("columns", (name,))
    return CitizenField(name, kind, columns, **options)  # type: ignore[arg-type]


_SET = {"updatable": True, "imported": True}
CITIZEN_FIELD_TABLE: tuple[CitizenField, ...] = (
    _field("pin", Kind.TEXT, imported=True),
    _field("full_name", Kind.TEXT, **_SET),
    _field("other_names", Kind.NAMES, **_SET),
    _field("date_of_birth", Kind.DATE, columns=("birth_year", "birth_month", "birth_day"), **_SET),
    _field("sex", Kind.ENUM, enum=Sex, **_SET),
    _field("place_of_birth", Kind.TEXT, max_length=500, **_SET),
    _field("registration_province_code", Kind.TEXT, **_SET),
    _field("hometown", Kind.TEXT, max_length=500, **_SET),
    _field("ethnicity", Kind.TEXT, max_length=100, **_SET),
    _field("religion", Kind.TEXT, max_length=100, **_SET),
    _field("nationality", Kind.TEXT, **_SET),
    _field("blood_type", Kind.ENUM, enum=BloodType, **_SET),
    _field("legacy_ids", Kind.NAMES, columns=()),
    _field("father_pin", Kind.PIN_REF, **_SET),
    _field("mother_pin", Kind.PIN_REF, **_SET),
    _field("spouse_pin", Kind.PIN_REF, **_SET),
    _field("representative_pin", Kind.PIN_REF, **_SET),
    _field("permanent_address", Kind.TEXT, max_length=500, **_SET),
    _field("temporary_address", Kind.TEXT, max_length=500, **_SET),
    _field("current_address", Kind.TEXT, max_length=500, **_SET),
    _field("marital_status", Kind.ENUM, enum=MaritalStatus, **_SET),
    # Updatable only for the copy a re-established record makes: UpdateCitizen refuses it.
    _field("status", Kind.ENUM, enum=CitizenStatus, **_SET),
    _field(
        "date_of_death", Kind.DATE, columns=("death_year", "death_month", "death_day"),
        imported=True,
    ),
    _field("replaced_by_pin", Kind.PIN_REF),
    _field("version", Kind.INT),
    _field("create_time", Kind.TIME),
    _field("update_time", Kind.TIME),
    _field("pin_mismatch", Kind.BOOL, imported=True),
)  # fmt: skip
"""The Citizen record, one entry per field in the order of the Citizen message: the SQL column
lists (db/citizens.py), the import insert (db/imports.py), the read masks and the conversion to
the message (grpc/convert.py) are derived from it. Adding a field: the proto, a migration, an
entry here and the Citizen dataclass above (tests/rules/test_citizen_fields.py checks that the
four agree)."""

CITIZEN_FIELDS = tuple(f.name for f in CITIZEN_FIELD_TABLE)
"""The fields of the Citizen message (proto names): what an agency may be entitled to read."""
TEXT_FIELD_LIMITS = {f.name: f.max_length for f in CITIZEN_FIELD_TABLE if f.max_length is not None}
"""Free-text Citizen fields set by imports and corrections, with their maximum lengths."""
REFERENCE_PIN_FIELDS = tuple(
    f.name for f in CITIZEN_FIELD_TABLE if f.kind is Kind.PIN_REF and f.updatable
)
"""Citizen fields that refer to other citizens by PIN."""
