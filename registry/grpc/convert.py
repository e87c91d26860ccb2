"""Conversion between protobuf messages and domain types; no rules live here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import field_mask_pb2, timestamp_pb2
from google.type import date_pb2

from registry.rules.cards import Card, RawIssue, RawStateChange
from registry.rules.civil_registration import DateParts, RawAnnulment, RawBirth, RawDeath
from registry.rules.dates import PartialDate
from registry.rules.identity import RawClaim
from registry.rules.model import CITIZEN_FIELD_TABLE, Citizen, Kind
from registry.v1 import (
    card_pb2,
    card_service_pb2,
    citizen_pb2,
    civil_registration_service_pb2,
    identity_service_pb2,
)


def date_parts(value: date_pb2.Date) -> DateParts:
    """Return a google.type.Date as (year, month, day); all zero when not given."""
    return (value.year, value.month, value.day)


def partial_date(value: PartialDate | None) -> date_pb2.Date | None:
    """Return a PartialDate as google.type.Date (0 for unknown month/day)."""
    if value is None:
        return None
    return date_pb2.Date(year=value.year, month=value.month or 0, day=value.day or 0)


def raw_birth(request: civil_registration_service_pb2.RegisterBirthRequest) -> RawBirth:
    """Take the fields of a RegisterBirthRequest as given."""
    return RawBirth(
        request_id=request.request_id,
        full_name=request.full_name,
        sex=request.sex,
        date_of_birth=date_parts(request.date_of_birth),
        place_of_birth=request.place_of_birth,
        registration_province_code=request.registration_province_code,
        hometown=request.hometown,
        ethnicity=request.ethnicity,
        nationality=request.nationality,
        father_pin=request.father_pin,
        mother_pin=request.mother_pin,
        registration_authority=request.registration_authority,
        registration_number=request.registration_number,
        registered_on=date_parts(request.registered_on),
    )


def raw_death(request: civil_registration_service_pb2.RegisterDeathRequest) -> RawDeath:
    """Take the fields of a RegisterDeathRequest as given."""
    return RawDeath(
        request_id=request.request_id,
        pin=request.pin,
        date_of_death=date_parts(request.date_of_death),
        registration_authority=request.registration_authority,
        registration_number=request.registration_number,
    )


def raw_annulment(
    request: civil_registration_service_pb2.AnnulDeathRegistrationRequest,
) -> RawAnnulment:
    """Take the fields of an AnnulDeathRegistrationRequest as given."""
    return RawAnnulment(
        request_id=request.request_id,
        pin=request.pin,
        reason=request.reason,
        decision_reference=request.decision_reference,
    )


def raw_claim(request: identity_service_pb2.VerifyIdentityRequest) -> RawClaim:
    """Take the fields of a VerifyIdentityRequest as given."""
    return RawClaim(
        pin=request.pin,
        full_name=request.full_name,
        date_of_birth=date_parts(request.date_of_birth),
        sex=request.sex,
        card_serial=request.card_serial,
        correlation_id=request.correlation_id,
    )


def raw_issue(request: card_service_pb2.IssueCardRequest) -> RawIssue:
    """Take the fields of an IssueCardRequest as given."""
    return RawIssue(
        request_id=request.request_id,
        pin=request.pin,
        kind=request.kind,
        serial=request.serial,
        issue_date=date_parts(request.issue_date),
        issuing_authority=request.issuing_authority,
    )


def raw_state_change(request: Any) -> RawStateChange:
    """Take the fields of a Revoke/Withhold/ReleaseCardRequest as given."""
    return RawStateChange(request.request_id, request.serial, request.reason)


def card(value: Card) -> card_pb2.Card:
    """Return the Card message of a card (expiry_date unset: never expires)."""
    message = card_pb2.Card(
        serial=value.serial,
        pin=value.pin,
        kind=enum_number(value.kind),
        state=enum_number(value.state),
        issue_date=date_pb2.Date(
            year=value.issue_date.year, month=value.issue_date.month, day=value.issue_date.day
        ),
        issuing_authority=value.issuing_authority,
        state_reason=value.state_reason,
    )
    if value.expiry_date is not None:
        expiry = value.expiry_date
        message.expiry_date.CopyFrom(
            date_pb2.Date(year=expiry.year, month=expiry.month, day=expiry.day)
        )
    return message


def _to_message(kind: Kind) -> Callable[[Any], Any]:
    if kind is Kind.PIN_REF:
        return lambda value: value or ""  # None: the proto's empty string
    if kind is Kind.DATE:
        return partial_date
    if kind is Kind.ENUM:
        return int  # an IntEnum as the plain number (enum_number)
    return lambda value: value


_MESSAGE_FIELDS = tuple(
    (f.name, _to_message(f.kind)) for f in CITIZEN_FIELD_TABLE if f.kind is not Kind.TIME
)
_TIME_FIELDS = tuple(f.name for f in CITIZEN_FIELD_TABLE if f.kind is Kind.TIME)


def citizen(value: Citizen) -> citizen_pb2.Citizen:
    """Return the full Citizen message of a record (every field of the field table)."""
    message = citizen_pb2.Citizen(
        **{name: convert(getattr(value, name)) for name, convert in _MESSAGE_FIELDS}
    )
    for name in _TIME_FIELDS:
        stamp = getattr(value, name)
        if stamp is not None:
            getattr(message, name).CopyFrom(_timestamp(stamp))
    return message


def disclosed(message: citizen_pb2.Citizen, fields: Sequence[str]) -> citizen_pb2.Citizen:
    """Return a copy of a Citizen message holding only these fields."""
    visible = citizen_pb2.Citizen()
    field_mask_pb2.FieldMask(paths=fields).MergeMessage(message, visible)
    return visible


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def enum_number(value: int) -> Any:
    """Return a domain IntEnum as the plain number protobuf enum fields take."""
    return int(value)
