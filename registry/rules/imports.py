"""Bulk import of the existing population (ImportCitizens, `registry import`).

Records are validated one by one (a bad record is rejected with its source_id and a reason,
the import goes on) and written in batches, one transaction each:

- a record whose (agency, source_id) was imported before, whose PIN is already held, or that is
  an exact duplicate of a person in the register (same normalised name, date of birth, sex,
  registration province, and the parents where given) is counted as a duplicate, not created;
- a record with a PIN keeps it; one whose digits do not match the person (SPEC §2 rule 4) is
  kept too and flagged `pin_mismatch`;
- a record without a PIN gets one from the same allocator as births, reserving counter ranges
  (one bucket-row update per bucket and batch, not per record).

Imports create records, not births: no BORN events go to the change feed. Each batch's created
PINs are recorded in one audit entry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from registry.rules import names, pin
from registry.rules.civil_registration import Violations, trim
from registry.rules.dates import PartialDate
from registry.rules.model import (
    REFERENCE_PIN_FIELDS,
    TEXT_FIELD_LIMITS,
    BloodType,
    CitizenStatus,
    MaritalStatus,
    Sex,
)

log = logging.getLogger(__name__)

MAX_REJECTS_LISTED = 1000
# A batch of ImportCitizenBatches / VerifyIdentityBatches (SPEC §10).
MAX_BATCH_ITEMS = 10_000
# Records written per transaction, by ImportCitizens and by `registry import`.
BATCH = 2000
_SOURCE_ID = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True)
class ImportRecord:
    """A valid incoming record, normalised."""

    source_id: str
    pin: str | None
    pin_mismatch: bool
    full_name: str
    date_of_birth: PartialDate
    sex: Sex
    registration_province_code: str
    other_names: tuple[str, ...] = ()
    texts: tuple[tuple[str, str], ...] = ()
    nationality: str = ""
    blood_type: int = 0
    marital_status: int = 0
    status: int = int(CitizenStatus.ALIVE)
    date_of_death: PartialDate | None = None
    references: tuple[tuple[str, str | None], ...] = ()

    def reference(self, name: str) -> str | None:
        return dict(self.references).get(name)

    def text(self, name: str) -> str:
        return dict(self.texts).get(name, "")


@dataclass
class Summary:
    """What an import did (ImportCitizensResponse)."""

    received: int = 0
    created: int = 0
    assigned_pins: int = 0
    duplicates: int = 0
    mismatched_pins: int = 0
    rejected: int = 0
    rejects: list[tuple[str, str]] = field(default_factory=list)

    def reject(self, source_id: str, reason: str) -> None:
        self.rejected += 1
        if len(self.rejects) < MAX_REJECTS_LISTED:
            self.rejects.append((source_id, reason))

    def add_batch(
        self,
        created: int,
        assigned: int,
        duplicates: int,
        mismatched: int,
        rejects: Sequence[tuple[int, str, str]],
    ) -> None:
        """Count what one written batch did (rejects: position, source_id, reason)."""
        self.created += created
        self.assigned_pins += assigned
        self.duplicates += duplicates
        self.mismatched_pins += mismatched
        for _, source_id, reason in rejects:
            self.reject(source_id, reason)


def check_chunk(import_id: str, offset: int, count: int) -> None:
    """Refuse a chunked-import batch whose header is unusable (INVALID_ARGUMENT naming each)."""
    v = Violations()
    if not _SOURCE_ID.fullmatch(import_id):
        v.add("import_id", "must be 1 to 128 printable ASCII characters without spaces")
    if offset < 0:
        v.add("offset", "must not be negative (the first batch of an import has offset 0)")
    check_batch_size(v, "records", count)
    v.raise_if_any()


def check_batch_size(v: Violations, name: str, count: int) -> None:
    """Add a violation when a batch holds no items or more than MAX_BATCH_ITEMS."""
    if not 1 <= count <= MAX_BATCH_ITEMS:
        v.add(
            name,
            f"holds {count:,} items; a batch holds 1 to {MAX_BATCH_ITEMS:,} (split larger ones)",
        )


def reported_source_id(source_id: str) -> str:
    """The source_id as a reject reports it: as sent, cut at 1,024 characters (the answer
    lists up to 1,000 rejects and must stay within the message size limit), each NUL replaced
    by U+FFFD. A batch's rejects are stored to answer its replays, and PostgreSQL's text and
    jsonb cannot hold NUL; a source_id holding one is invalid anyway, and the reject's index
    names its record."""
    cut = source_id if len(source_id) <= 1024 else source_id[:1024]
    return cut.replace("\x00", "\ufffd")


def validate_record(
    source_id: str, values: Mapping[str, Any], prefixes: pin.PrefixTable, today: date
) -> ImportRecord | str:
    """Return the normalised record, or the reason it is rejected (every problem, in words)."""
    v = Violations()
    if not _SOURCE_ID.fullmatch(source_id):
        v.add("source_id", "must be 1 to 128 printable ASCII characters without spaces")
    full_name, problem = names.validate_name(values.get("full_name", ""))
    if problem:
        v.add("full_name", problem)
    dob = v.date("date_of_birth", values.get("date_of_birth", (0, 0, 0)), required=True)
    if dob is not None and dob.earliest() > today:
        v.add("date_of_birth", f"{dob} is in the future")
    elif dob is not None and not pin.MIN_BIRTH_YEAR <= dob.year <= pin.MAX_BIRTH_YEAR:
        v.add("date_of_birth", f"year must be in {pin.MIN_BIRTH_YEAR}-{pin.MAX_BIRTH_YEAR}")
    sex = None
    try:
        sex = Sex(values.get("sex", 0))
    except ValueError:
        v.add("sex", "is required (MALE or FEMALE)")
    province = trim(values.get("registration_province_code", ""))
    if not province:
        v.add("registration_province_code", "is required")
    elif prefixes.get(province) is None:
        v.add("registration_province_code", f"{province[:8]!r} is not a known province code")
    given = trim(values.get("pin", "")) or None
    mismatch = False
    if given is not None:
        if not pin.is_well_formed(given):
            v.add("pin", "must be 12 digits (or empty to have one assigned)")
        elif sex is not None and dob is not None:
            mismatch = bool(pin.check_structure(given, prefixes, sex=sex, birth_year=dob.year))
    other_names = []
    for i, raw in enumerate(values.get("other_names", ())):
        name, problem = names.validate_name(raw)
        if problem:
            v.add(f"other_names[{i}]", problem)
        other_names.append(name)
    texts = tuple(
        (name, v.text(name, values[name], max_length=limit, required=False))
        for name, limit in TEXT_FIELD_LIMITS.items()
        if values.get(name)
    )
    nationality = trim(values.get("nationality", "")).upper()
    if nationality and not re.fullmatch(r"[A-Z]{2}", nationality):
        v.add("nationality", "must be an ISO 3166-1 alpha-2 code, e.g. VN")
    for name, kind in (("blood_type", BloodType), ("marital_status", MaritalStatus)):
        try:
            kind(values.get(name, 0))
        except ValueError:
            v.add(name, f"{values.get(name)} is not a known value")
    status = values.get("status", 0) or int(CitizenStatus.ALIVE)
    if status not in (CitizenStatus.ALIVE, CitizenStatus.DECEASED, CitizenStatus.MISSING):
        v.add("status", "must be ALIVE, DECEASED or MISSING")
    dod = v.date("date_of_death", values.get("date_of_death", (0, 0, 0)), required=False)
    if status == CitizenStatus.DECEASED and dod is None:
        v.add("date_of_death", "is required for a deceased person")
    references = []
    for name in REFERENCE_PIN_FIELDS:
        ref = trim(values.get(name, "")) or None
        if ref is not None and not pin.is_well_formed(ref):
            v.add(name, "must be a PIN of 12 digits")
        references.append((name, ref))
    if v.items:
        return "; ".join(f"{item.field}: {item.description}" for item in v.items)
    assert dob is not None and sex is not None
    return ImportRecord(
        source_id=source_id,
        pin=given,
        pin_mismatch=mismatch,
        full_name=full_name,
        date_of_birth=dob,
        sex=sex,
        registration_province_code=province,
        other_names=tuple(other_names),
        texts=texts,
        nationality=nationality,
        blood_type=int(values.get("blood_type", 0)),
        marital_status=int(values.get("marital_status", 0)),
        status=int(status),
        date_of_death=dod,
        references=tuple(references),
    )


def person_key(record: ImportRecord) -> tuple[Any, ...]:
    """The identity under which two records are the same person (parents compared apart)."""
    dob = record.date_of_birth
    return (
        names.match_key(record.full_name),
        dob.year,
        dob.month,
        dob.day,
        int(record.sex),
        record.registration_province_code,
    )


def same_parents(record: ImportRecord, father: str | None, mother: str | None) -> bool:
    """Parents match where the incoming record gives them."""
    given_father, given_mother = record.reference("father_pin"), record.reference("mother_pin")
    return (given_father is None or given_father == father) and (
        given_mother is None or given_mother == mother
    )


def buckets_needed(records: Sequence[ImportRecord]) -> dict[pin.Bucket, list[int]]:
    """Group the records without a PIN by bucket: bucket -> their indexes."""
    grouped: dict[pin.Bucket, list[int]] = {}
    for index, record in enumerate(records):
        if record.pin is None:
            bucket = pin.bucket_for(
                record.registration_province_code, record.sex, record.date_of_birth.year
            )
            grouped.setdefault(bucket, []).append(index)
    return grouped
