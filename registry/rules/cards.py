"""Citizen identity cards (thẻ căn cước): kinds, states, and the expiry rule (SPEC §4).

Law on Identification 2023, art. 21: a card is exchanged when its holder turns 14, 25, 40 and
60. A card is valid until the day before the next such birthday; a card issued within the two
years before a milestone is valid until the milestone after it; a card issued at 58 or older
never expires. Pure functions, no I/O.

Choices the law leaves open, made so that a card never outlives the rule:
- A 29 February birthday falls on 1 March in common years (the holder reaches an age on the
  day after 28 February), so such a card expires on 28 February.
- A date of birth known only to the year (or year and month) gives the earliest expiry over
  every day the holder may really have been born (up to the issue date): the card expires no
  later than the rule allows for the real date, whatever it is. (Taking just the earliest day
  would not do: it moves the two-year window before a milestone early, which lengthens
  validity for someone born late in the year.)
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date, timedelta

from registry.rules.civil_registration import DateParts, Violations, check_request_id, trim
from registry.rules.dates import PartialDate

MILESTONES = (14, 25, 40, 60)
"""Ages at which a card must be exchanged."""

GRACE_YEARS = 2
"""A card issued this close before a milestone is valid until the milestone after it."""


class CardKind(enum.IntEnum):
    """Why a card was made (values equal the proto CardKind numbers)."""

    FIRST_ISSUE = 1
    EXCHANGE = 2
    REISSUE = 3


class CardState(enum.IntEnum):
    """A card's state (values equal the proto CardState numbers). EXPIRED is derived."""

    ACTIVE = 1
    SUPERSEDED = 2
    REVOKED = 3
    WITHHELD = 4
    EXPIRED = 5


def anniversary(born: date, years: int) -> date:
    """Return the day the holder turns `years` (29 February → 1 March in common years)."""
    try:
        return born.replace(year=born.year + years)
    except ValueError:  # 29 February in a common year
        return date(born.year + years, 3, 1)


def card_expiry(date_of_birth: PartialDate | date, issue_date: date) -> date | None:
    """Return the last day a card issued on issue_date is valid; None if it never expires."""
    if isinstance(date_of_birth, date):
        return _expiry(date_of_birth, issue_date)
    first = date_of_birth.earliest()
    last = min(date_of_birth.latest(), issue_date)
    # A year has at most 366 candidate days: cheap next to the call that issues a card.
    expiries = [
        _expiry(first + timedelta(days=offset), issue_date)
        for offset in range(max(0, (last - first).days) + 1)
    ]
    finite = [e for e in expiries if e is not None]
    return min(finite) if finite else None


def _expiry(born: date, issue_date: date) -> date | None:
    for index, age in enumerate(MILESTONES):
        milestone = anniversary(born, age)
        if milestone <= issue_date:
            continue  # already reached: the next milestone decides
        if issue_date >= anniversary(born, age - GRACE_YEARS):
            # Within the two years before this milestone: skip to the one after it.
            if index + 1 == len(MILESTONES):
                return None  # issued at 58 or older: never expires
            milestone = anniversary(born, MILESTONES[index + 1])
        return milestone - timedelta(days=1)
    return None  # issued at 60 or older


def effective_state(state: CardState, expiry_date: date | None, today: date) -> CardState:
    """Return the state to report: an active card past its expiry date is EXPIRED."""
    if state == CardState.ACTIVE and expiry_date is not None and expiry_date < today:
        return CardState.EXPIRED
    return state


# -- requests --------------------------------------------------------------------------------------

_SERIAL_RE = re.compile(r"[A-Z0-9-]{1,32}")
_LEGACY_RE = re.compile(r"[0-9]{9}|[0-9]{12}")


@dataclass(frozen=True)
class RawIssue:
    """An IssueCard request as received."""

    request_id: str
    pin: str
    kind: int
    serial: str
    issue_date: DateParts
    issuing_authority: str


@dataclass(frozen=True)
class CardIssue:
    """A validated IssueCard request (without its request_id)."""

    pin: str
    kind: CardKind
    serial: str
    issue_date: date
    issuing_authority: str


@dataclass(frozen=True)
class RawStateChange:
    """A RevokeCard / WithholdCard / ReleaseCard request as received."""

    request_id: str
    serial: str
    reason: str


@dataclass(frozen=True)
class StateChange:
    """A validated card state change; `action` is the RPC name."""

    action: str
    serial: str
    reason: str


@dataclass(frozen=True)
class LegacyLink:
    """A validated LinkLegacyId request (without its request_id)."""

    pin: str
    legacy_id: str


def check_serial(v: Violations, field: str, raw: str) -> str | None:
    """Normalise a card serial (trimmed, ASCII upper-cased) and check it; None if not given."""
    serial = trim(raw)
    if not serial:
        return None
    if serial.isascii():
        serial = serial.upper()
    if not _SERIAL_RE.fullmatch(serial):
        v.add(field, "must be 1-32 characters: letters A-Z, digits and '-'")
    return serial


def _serial(v: Violations, raw: str) -> str:
    serial = check_serial(v, "serial", raw)
    if serial is None:
        v.add("serial", "is required (the physical card's serial)")
        return ""
    return serial


def validate_issue(raw: RawIssue) -> CardIssue:
    """Validate an IssueCard request, or raise INVALID_ARGUMENT naming every bad field."""
    v = Violations()
    check_request_id(v, raw.request_id)
    pin_value = v.pin("pin", raw.pin)
    kind: CardKind | None = None
    if raw.kind == 0:
        v.add("kind", "is required (FIRST_ISSUE, EXCHANGE or REISSUE)")
    else:
        try:
            kind = CardKind(raw.kind)
        except ValueError:
            v.add("kind", f"{raw.kind} is not a known CardKind value")
    serial = _serial(v, raw.serial)
    issued = v.date("issue_date", raw.issue_date, required=True)
    if issued is not None and not issued.is_complete:
        v.add("issue_date", "must be a complete date (year, month and day)")
    authority = v.text("issuing_authority", raw.issuing_authority, max_length=200)
    v.raise_if_any()
    assert kind is not None and issued is not None
    return CardIssue(pin_value, kind, serial, issued.to_date(), authority)


def validate_state_change(action: str, raw: RawStateChange) -> StateChange:
    """Validate a Revoke/Withhold/ReleaseCard request, or raise INVALID_ARGUMENT."""
    v = Violations()
    check_request_id(v, raw.request_id)
    serial = _serial(v, raw.serial)
    reason = v.text("reason", raw.reason, max_length=500)
    v.raise_if_any()
    return StateChange(action, serial, reason)


def validate_legacy_id(v: Violations, field: str, raw: str) -> str:
    """Check an old CMND number: 9 or 12 ASCII digits."""
    value = trim(raw)
    if not value:
        v.add(field, "is required (the old 9- or 12-digit CMND number)")
    elif not _LEGACY_RE.fullmatch(value):
        v.add(field, "must be an old CMND number of 9 or 12 digits")
    return value


def validate_link(request_id: str, pin: str, legacy_id: str) -> LegacyLink:
    """Validate a LinkLegacyId request, or raise INVALID_ARGUMENT naming every bad field."""
    v = Violations()
    check_request_id(v, request_id)
    pin_value = v.pin("pin", pin)
    legacy = validate_legacy_id(v, "legacy_id", legacy_id)
    v.raise_if_any()
    return LegacyLink(pin_value, legacy)


@dataclass(frozen=True)
class Card:
    """A card as stored (state is the stored one: EXPIRED is derived by the caller)."""

    serial: str
    pin: str
    kind: CardKind
    state: CardState
    issue_date: date
    expiry_date: date | None
    issuing_authority: str
    state_reason: str
