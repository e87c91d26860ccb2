"""Identity verification (SPEC §5): does presented identity data match the register?

Pure rules: the claim is validated here, compared with the record here, and the answer never
carries personal data — only yes/no per field given, the citizen's status and the presented
card's state.

Matching:
- full name: exact after normalisation (Unicode NFC/NFD, case, surrounding and repeated
  spaces; `names.match_key`). Diacritics count: "Nguyễn" is not "Nguyên". Only an agency
  registered for it gets diacritic-insensitive comparison (`names.fold_diacritics`), for systems
  that lost the marks; fuzzy matching lets impostors through, so strict is the default.
- date of birth: compared at the register's precision. Every part the register holds must be
  claimed and equal: a claim of year and month (or of the year only) against a full date is
  NO_MATCH, or a full birthday would come out one part at a time (the PIN gives the year:
  12 year-month guesses, then at most 31 full ones, instead of up to 366). Parts the
  register does not hold are not compared: a full claim against a date known only to the
  year (or year and month) matches on the parts it holds, because a document's full date of
  birth is right for a person the register knows less precisely, and the answer reveals
  nothing the register holds beyond what the claim agreed with.
- sex: equal.
- card serial: the card must belong to this PIN, be ACTIVE and not expired, and its holder must
  be alive. A revoked, withheld, superseded or expired card never matches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date

from registry.rules import names
from registry.rules.cards import CardState, check_serial, effective_state
from registry.rules.civil_registration import DateParts, Violations, trim
from registry.rules.dates import PartialDate
from registry.rules.model import CitizenStatus, Sex

MAX_CORRELATION_ID = 128


class VerifyResult(enum.IntEnum):
    """Overall answer (values equal the proto VerifyResult numbers)."""

    MATCH = 1
    NO_MATCH = 2
    NOT_FOUND = 3


@dataclass(frozen=True)
class RawClaim:
    """A VerifyIdentity request as received."""

    pin: str
    full_name: str
    date_of_birth: DateParts
    sex: int
    card_serial: str
    correlation_id: str


@dataclass(frozen=True)
class Claim:
    """A validated claim: the PIN and the fields given (None = not given)."""

    pin: str
    full_name: str | None
    date_of_birth: PartialDate | None
    sex: Sex | None
    card_serial: str | None
    correlation_id: str

    def fields(self) -> list[str]:
        """Return the names of the fields given, in proto order."""
        given = {
            "full_name": self.full_name,
            "date_of_birth": self.date_of_birth,
            "sex": self.sex,
            "card_serial": self.card_serial,
        }
        return [name for name, value in given.items() if value is not None]


@dataclass(frozen=True)
class Record:
    """What the register holds that a claim is compared with."""

    full_name: str
    date_of_birth: PartialDate
    sex: Sex
    status: CitizenStatus
    card_state: CardState | None
    """State of the presented card if it belongs to this PIN, else None."""
    card_expiry: date | None


@dataclass(frozen=True)
class Outcome:
    """The answer: nothing in it is personal data."""

    result: VerifyResult
    field_matches: dict[str, bool]
    citizen_status: CitizenStatus | None
    card_state: CardState | None


def validate_claim(raw: RawClaim) -> Claim:
    """Validate a claim, or raise INVALID_ARGUMENT naming every bad field."""
    v = Violations()
    pin = v.pin("pin", raw.pin)
    full_name: str | None = None
    if trim(raw.full_name):
        normalised, problem = names.validate_text(raw.full_name, max_length=200)
        if problem:
            v.add("full_name", problem)
        full_name = normalised
    dob = v.date("date_of_birth", raw.date_of_birth, required=False)
    sex: Sex | None = None
    if raw.sex:
        try:
            sex = Sex(raw.sex)
        except ValueError:
            v.add("sex", f"{raw.sex} is not a known Sex value")
    serial = check_serial(v, "card_serial", raw.card_serial)
    if len(raw.correlation_id) > MAX_CORRELATION_ID or not raw.correlation_id.isprintable():
        v.add("correlation_id", f"must be at most {MAX_CORRELATION_ID} printable characters")
    if not v.items and full_name is None and dob is None and sex is None and serial is None:
        v.add("pin", "give at least one of full_name, date_of_birth, sex, card_serial to verify")
    v.raise_if_any()
    return Claim(pin, full_name, dob, sex, serial, raw.correlation_id)


def _same_date(claim: PartialDate, record: PartialDate) -> bool:
    """Compare at the register's precision: each part it holds must be claimed and equal."""
    if claim.year != record.year:
        return False
    if record.month is not None and claim.month != record.month:
        return False
    return record.day is None or claim.day == record.day


def names_match(claimed: str, recorded: str, *, diacritic_insensitive: bool) -> bool:
    """Compare a claimed name with the recorded one under the agency's matching mode."""
    if diacritic_insensitive:
        return names.fold_diacritics(claimed) == names.fold_diacritics(recorded)
    return names.match_key(claimed) == names.match_key(recorded)


def verify(
    claim: Claim, record: Record | None, today: date, *, diacritic_insensitive: bool = False
) -> Outcome:
    """Compare a claim with the record (None: no citizen has the PIN)."""
    if record is None:
        return Outcome(VerifyResult.NOT_FOUND, {}, None, None)
    matches: dict[str, bool] = {}
    if claim.full_name is not None:
        matches["full_name"] = names_match(
            claim.full_name, record.full_name, diacritic_insensitive=diacritic_insensitive
        )
    if claim.date_of_birth is not None:
        matches["date_of_birth"] = _same_date(claim.date_of_birth, record.date_of_birth)
    if claim.sex is not None:
        matches["sex"] = claim.sex == record.sex
    card_state: CardState | None = None
    if claim.card_serial is not None:
        if record.card_state is not None:
            card_state = effective_state(record.card_state, record.card_expiry, today)
        matches["card_serial"] = (
            card_state == CardState.ACTIVE and record.status == CitizenStatus.ALIVE
        )
    result = VerifyResult.MATCH if all(matches.values()) else VerifyResult.NO_MATCH
    return Outcome(result, matches, record.status, card_state)


def attestation_claims(claim: Claim, outcome: Outcome, agency_id: str) -> dict[str, object]:
    """Return what an attestation states: PIN, fields checked with results, result, agency."""
    claims: dict[str, object] = {
        "sub": claim.pin,
        "agency": agency_id,
        "result": outcome.result.name,
        "fields": dict(outcome.field_matches),
    }
    if outcome.citizen_status is not None:
        claims["citizen_status"] = outcome.citizen_status.name
    if outcome.card_state is not None:
        claims["card_state"] = outcome.card_state.name
    if claim.correlation_id:
        claims["correlation_id"] = claim.correlation_id
    return claims
