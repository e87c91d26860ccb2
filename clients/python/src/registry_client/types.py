"""Python types for the registry's messages: enums, dates, and result dataclasses."""

from __future__ import annotations

import datetime as _dt
import enum
import functools
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2
from google.type import date_pb2

from ._pb import card_pb2, change_pb2, citizen_pb2, identity_service_pb2


class _ProtoEnum(enum.IntEnum):
    """An enum whose values are the protobuf numbers; unknown numbers read as UNSPECIFIED."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        return cls(0)


class Sex(_ProtoEnum):
    UNSPECIFIED = citizen_pb2.SEX_UNSPECIFIED
    MALE = citizen_pb2.SEX_MALE
    FEMALE = citizen_pb2.SEX_FEMALE


class CitizenStatus(_ProtoEnum):
    UNSPECIFIED = citizen_pb2.CITIZEN_STATUS_UNSPECIFIED
    ALIVE = citizen_pb2.CITIZEN_STATUS_ALIVE
    DECEASED = citizen_pb2.CITIZEN_STATUS_DECEASED
    MISSING = citizen_pb2.CITIZEN_STATUS_MISSING
    PIN_CANCELLED = citizen_pb2.CITIZEN_STATUS_PIN_CANCELLED


class MaritalStatus(_ProtoEnum):
    UNSPECIFIED = citizen_pb2.MARITAL_STATUS_UNSPECIFIED
    SINGLE = citizen_pb2.MARITAL_STATUS_SINGLE
    MARRIED = citizen_pb2.MARITAL_STATUS_MARRIED
    DIVORCED = citizen_pb2.MARITAL_STATUS_DIVORCED
    WIDOWED = citizen_pb2.MARITAL_STATUS_WIDOWED


class BloodType(_ProtoEnum):
    UNSPECIFIED = citizen_pb2.BLOOD_TYPE_UNSPECIFIED
    A = citizen_pb2.BLOOD_TYPE_A
    B = citizen_pb2.BLOOD_TYPE_B
    AB = citizen_pb2.BLOOD_TYPE_AB
    O = citizen_pb2.BLOOD_TYPE_O  # noqa: E741


class CardKind(_ProtoEnum):
    UNSPECIFIED = card_pb2.CARD_KIND_UNSPECIFIED
    FIRST_ISSUE = card_pb2.CARD_KIND_FIRST_ISSUE
    EXCHANGE = card_pb2.CARD_KIND_EXCHANGE
    REISSUE = card_pb2.CARD_KIND_REISSUE


class CardState(_ProtoEnum):
    UNSPECIFIED = card_pb2.CARD_STATE_UNSPECIFIED
    ACTIVE = card_pb2.CARD_STATE_ACTIVE
    SUPERSEDED = card_pb2.CARD_STATE_SUPERSEDED
    REVOKED = card_pb2.CARD_STATE_REVOKED
    WITHHELD = card_pb2.CARD_STATE_WITHHELD
    EXPIRED = card_pb2.CARD_STATE_EXPIRED


class VerifyResult(_ProtoEnum):
    UNSPECIFIED = identity_service_pb2.VERIFY_RESULT_UNSPECIFIED
    MATCH = identity_service_pb2.VERIFY_RESULT_MATCH
    NO_MATCH = identity_service_pb2.VERIFY_RESULT_NO_MATCH
    NOT_FOUND = identity_service_pb2.VERIFY_RESULT_NOT_FOUND


class ChangeType(_ProtoEnum):
    UNSPECIFIED = change_pb2.CHANGE_TYPE_UNSPECIFIED
    BORN = change_pb2.CHANGE_TYPE_BORN
    DIED = change_pb2.CHANGE_TYPE_DIED
    UPDATED = change_pb2.CHANGE_TYPE_UPDATED
    PIN_REPLACED = change_pb2.CHANGE_TYPE_PIN_REPLACED
    CARD_ISSUED = change_pb2.CHANGE_TYPE_CARD_ISSUED
    CARD_STATE_CHANGED = change_pb2.CHANGE_TYPE_CARD_STATE_CHANGED


E = TypeVar("E", bound=_ProtoEnum)


def _enum_in(cls: type[E], value: E | str | int | None) -> Any:
    """An enum argument as its protobuf number: accepts the enum, its name, or None.

    Raises ValueError naming the accepted names for a name the enum does not have.
    """
    if value is None:
        return 0
    if isinstance(value, str):
        member = cls.__members__.get(value.upper())
        if member is None:
            names = ", ".join(name for name, m in cls.__members__.items() if m != 0)
            raise ValueError(f"{value!r} is not a {cls.__name__}: use one of {names}")
        return int(member)
    return int(cls(value))


def _enum_out(cls: type[E], number: int) -> E:
    """The member for a protobuf number (UNSPECIFIED for a number this client does not know);
    a dictionary lookup: answers of bulk verification read three enums each."""
    member = cls._value2member_map_.get(number)
    return member if member is not None else cls(number)  # type: ignore[return-value]


# -- dates --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialDate:
    """A date known only to the year (month = day = 0) or year and month (day = 0).

    Full dates are returned as ``datetime.date``; the register keeps older records at the
    precision they were registered with, and those come back as a PartialDate.
    """

    year: int
    month: int = 0
    day: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.year <= 9999 or not 0 <= self.month <= 12 or not 0 <= self.day <= 31:
            raise ValueError(f"invalid partial date {self.year}-{self.month}-{self.day}")
        if self.month == 0 and self.day != 0:
            raise ValueError("a day without a month")

    @classmethod
    def parse(cls, text: str) -> PartialDate:
        """Parse ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``."""
        pieces = text.strip().split("-")
        if not 1 <= len(pieces) <= 3 or not all(p.isascii() and p.isdigit() for p in pieces):
            raise ValueError(f"not a date: {text!r} (use YYYY, YYYY-MM or YYYY-MM-DD)")
        return cls(*(int(p) for p in pieces))

    @property
    def is_full(self) -> bool:
        return self.month != 0 and self.day != 0

    def to_date(self) -> _dt.date | None:
        """The ``datetime.date`` when the date is full, else None."""
        return _dt.date(self.year, self.month, self.day) if self.is_full else None

    def __str__(self) -> str:
        if self.month == 0:
            return f"{self.year:04d}"
        if self.day == 0:
            return f"{self.year:04d}-{self.month:02d}"
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"


DateLike = _dt.date | PartialDate | str


def date_to_proto(value: DateLike | None) -> date_pb2.Date | None:
    """A date argument (``datetime.date``, PartialDate or ``"YYYY[-MM[-DD]]"``) as a Date."""
    if value is None:
        return None
    if isinstance(value, str):
        return date_pb2.Date(year=(parts := _date_parts(value))[0], month=parts[1], day=parts[2])
    if isinstance(value, _dt.datetime):
        value = value.date()
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


@functools.lru_cache(maxsize=65_536)
def _date_parts(text: str) -> tuple[int, int, int]:
    """``"YYYY[-MM[-DD]]"`` as (year, month, day), checked as PartialDate checks it; kept for
    the next claim with the same birth date (a bank's file has a few tens of thousands)."""
    value = PartialDate.parse(text)
    return value.year, value.month, value.day


def date_from_proto(message: Any, present: bool = True) -> _dt.date | PartialDate | None:
    """A google.type.Date as ``datetime.date`` (full), PartialDate (partial) or None (unset)."""
    if not present or message.year == 0:
        return None
    partial = PartialDate(message.year, message.month, message.day)
    return partial.to_date() or partial


def _time(message: Any, owner: Any, name: str) -> _dt.datetime | None:
    if not owner.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = message
    result: _dt.datetime = stamp.ToDatetime(tzinfo=_dt.UTC)
    return result


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Citizen:
    """A citizen record. GetCitizen leaves the fields the agency may not read at defaults."""

    pin: str
    full_name: str = ""
    other_names: tuple[str, ...] = ()
    date_of_birth: _dt.date | PartialDate | None = None
    sex: Sex = Sex.UNSPECIFIED
    place_of_birth: str = ""
    registration_province_code: str = ""
    hometown: str = ""
    ethnicity: str = ""
    religion: str = ""
    nationality: str = ""
    blood_type: BloodType = BloodType.UNSPECIFIED
    legacy_ids: tuple[str, ...] = ()
    father_pin: str = ""
    mother_pin: str = ""
    spouse_pin: str = ""
    representative_pin: str = ""
    permanent_address: str = ""
    temporary_address: str = ""
    current_address: str = ""
    marital_status: MaritalStatus = MaritalStatus.UNSPECIFIED
    status: CitizenStatus = CitizenStatus.UNSPECIFIED
    date_of_death: _dt.date | PartialDate | None = None
    replaced_by_pin: str = ""
    version: int = 0
    create_time: _dt.datetime | None = None
    update_time: _dt.datetime | None = None
    pin_mismatch: bool = False
    #: Set on the result of a mutation (register_birth, register_death,
    #: annul_death_registration, update_citizen, link_legacy_id): True when the registry
    #: replayed an earlier call with the same request_id and nothing new happened (the record
    #: is then as that call left it). A mutation's result holds only pin, status, version,
    #: the fields the request supplied and those the agency is registered to read; the
    #: others keep their defaults.
    replayed: bool = False

    @classmethod
    def from_proto(cls, m: Any, *, replayed: bool = False) -> Citizen:
        return cls(
            pin=m.pin,
            full_name=m.full_name,
            other_names=tuple(m.other_names),
            date_of_birth=date_from_proto(m.date_of_birth, m.HasField("date_of_birth")),
            sex=Sex(m.sex),
            place_of_birth=m.place_of_birth,
            registration_province_code=m.registration_province_code,
            hometown=m.hometown,
            ethnicity=m.ethnicity,
            religion=m.religion,
            nationality=m.nationality,
            blood_type=BloodType(m.blood_type),
            legacy_ids=tuple(m.legacy_ids),
            father_pin=m.father_pin,
            mother_pin=m.mother_pin,
            spouse_pin=m.spouse_pin,
            representative_pin=m.representative_pin,
            permanent_address=m.permanent_address,
            temporary_address=m.temporary_address,
            current_address=m.current_address,
            marital_status=MaritalStatus(m.marital_status),
            status=CitizenStatus(m.status),
            date_of_death=date_from_proto(m.date_of_death, m.HasField("date_of_death")),
            replaced_by_pin=m.replaced_by_pin,
            version=m.version,
            create_time=_time(m.create_time, m, "create_time"),
            update_time=_time(m.update_time, m, "update_time"),
            pin_mismatch=m.pin_mismatch,
            replayed=replayed,
        )


@dataclass(frozen=True)
class Card:
    """A citizen identity card."""

    serial: str
    pin: str
    kind: CardKind
    state: CardState
    issue_date: _dt.date | PartialDate | None
    #: None: the card never expires (issued at 58 or older).
    expiry_date: _dt.date | PartialDate | None
    issuing_authority: str
    state_reason: str = ""
    #: Set on the result of issue_card: True when an earlier call was replayed.
    replayed: bool = False

    @classmethod
    def from_proto(cls, m: Any, *, replayed: bool = False) -> Card:
        return cls(
            serial=m.serial,
            pin=m.pin,
            kind=CardKind(m.kind),
            state=CardState(m.state),
            issue_date=date_from_proto(m.issue_date, m.HasField("issue_date")),
            expiry_date=date_from_proto(m.expiry_date, m.HasField("expiry_date")),
            issuing_authority=m.issuing_authority,
            state_reason=m.state_reason,
            replayed=replayed,
        )


@dataclass(frozen=True)
class VerifyRequest:
    """One identity check for batch_verify (fields left None are not checked)."""

    pin: str
    full_name: str | None = None
    date_of_birth: DateLike | None = None
    sex: Sex | str | None = None
    card_serial: str | None = None
    #: Echoed in the answer; batch_verify numbers the requests ("0", "1", ...) when unset.
    correlation_id: str | None = None
    want_attestation: bool = False

    def to_proto(self) -> identity_service_pb2.VerifyIdentityRequest:
        """The request message; ValueError names a sex or date of birth it cannot carry."""
        try:
            dob = date_to_proto(self.date_of_birth)
        except ValueError as exc:
            raise ValueError(f"date_of_birth: {exc}") from None
        try:
            sex = _enum_in(Sex, self.sex)
        except ValueError as exc:
            raise ValueError(f"sex: {exc}") from None
        return identity_service_pb2.VerifyIdentityRequest(
            pin=self.pin,
            full_name=self.full_name or "",
            date_of_birth=dob,
            sex=sex,
            card_serial=self.card_serial or "",
            correlation_id=self.correlation_id or "",
            want_attestation=self.want_attestation,
        )


@dataclass(frozen=True)
class Verification:
    """The answer to one identity check. Carries no personal data."""

    result: VerifyResult
    #: Per field given ("full_name", "date_of_birth", "sex", "card_serial"): matches?
    field_matches: dict[str, bool] = field(default_factory=dict)
    #: Check it: a MATCH on name and birth date says nothing about whether the person lives.
    citizen_status: CitizenStatus = CitizenStatus.UNSPECIFIED
    card_state: CardState = CardState.UNSPECIFIED
    correlation_id: str = ""
    #: A compact JWS signed by the registry, when requested.
    attestation: str = ""
    #: batch_verify only: why this check was rejected (an InvalidArgument), else None.
    error: Exception | None = None

    @property
    def matched(self) -> bool:
        """True for a MATCH of a living citizen."""
        return self.result is VerifyResult.MATCH and self.citizen_status is CitizenStatus.ALIVE

    @classmethod
    def from_proto(cls, m: Any) -> Verification:
        error: Exception | None = None
        if m.HasField("error"):
            from .errors import error_from_status

            error = error_from_status(m.error)
        return cls(
            result=_enum_out(VerifyResult, m.result),
            field_matches=dict(m.field_matches),
            citizen_status=_enum_out(CitizenStatus, m.citizen_status),
            card_state=_enum_out(CardState, m.card_state),
            correlation_id=m.correlation_id,
            attestation=m.attestation,
            error=error,
        )


@dataclass(frozen=True)
class ChangeEvent:
    """One entry of the change feed; fetch the record with get_citizen if entitled."""

    sequence: int
    type: ChangeType
    pin: str
    new_pin: str
    time: _dt.datetime | None

    @classmethod
    def from_proto(cls, m: Any) -> ChangeEvent:
        return cls(
            sequence=m.sequence,
            type=ChangeType(m.type),
            pin=m.pin,
            new_pin=m.new_pin,
            time=_time(m.time, m, "time"),
        )
