"""Request fingerprints: how a replayed request_id is told from a reused one (SPEC §5).

Every change is stored with the SHA-256 of its method and its validated, normalised content,
so a retry that spells the same name in NFD instead of NFC is the same request. Fingerprints
live as long as their idempotency keys: a retry sent before a deploy and answered after it
must hash as it did, so what is hashed is an explicit list of fields per request type, never
the shape of a dataclass.

Version 1 (`FIELDS_V1`) is every field these requests had when fingerprints were first stored,
hashed as ``json.dumps(dataclasses.asdict(request), sort_keys=True, default=str,
ensure_ascii=False)`` made them (known-answer vectors in tests/rules/test_fingerprints.py).
Never edit a version-1 list. A field added to a request later goes into `LATER_FIELDS` with
the version that added it and its default: it is hashed only when it holds something other
than that default, so a request that could have been sent before the field existed keeps its
fingerprint, and one that uses the field differs from one that does not. A request type with a
field in neither table cannot be fingerprinted (TypeError, caught by the tests): adding a field
is a decision made here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass
from typing import Any

from registry.rules.cards import CardIssue, LegacyLink, StateChange
from registry.rules.dates import PartialDate
from registry.rules.model import BirthRegistration, DeathAnnulment, DeathRegistration
from registry.rules.updates import Update

FIELDS_V1: dict[type, tuple[str, ...]] = {
    BirthRegistration: (
        "full_name", "sex", "date_of_birth", "place_of_birth", "registration_province_code",
        "hometown", "ethnicity", "nationality", "father_pin", "mother_pin",
        "registration_authority", "registration_number", "registered_on",
    ),
    DeathRegistration: ("pin", "date_of_death", "registration_authority", "registration_number"),
    DeathAnnulment: ("pin", "reason", "decision_reference"),
    CardIssue: ("pin", "kind", "serial", "issue_date", "issuing_authority"),
    StateChange: ("action", "serial", "reason"),
    LegacyLink: ("pin", "legacy_id"),
    Update: ("pin", "expected_version", "changes"),
    PartialDate: ("year", "month", "day"),
}  # fmt: skip
"""The fields of fingerprint version 1, per request type (and the dates inside them)."""

LATER_FIELDS: dict[type, tuple[tuple[str, int, Any], ...]] = {}
"""Fields added after version 1: type -> ((field, version that added it, default), ...)."""

_PLAN: dict[type, tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]] = {}


def request_hash(method: str, request: object) -> bytes:
    """The fingerprint of a validated request for ``method`` (32 bytes)."""
    body = json.dumps(_plain(request), sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(f"{method}\n{body}".encode()).digest()


def _plan(cls: type) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]:
    plan = _PLAN.get(cls)
    if plan is None:
        if cls not in FIELDS_V1:
            raise TypeError(f"{cls.__name__} has no fingerprint field list (rules/fingerprints.py)")
        later = tuple((name, default) for name, _, default in LATER_FIELDS.get(cls, ()))
        listed = set(FIELDS_V1[cls]) | {name for name, _ in later}
        unlisted = [f.name for f in fields(cls) if f.name not in listed]
        if unlisted:
            raise TypeError(
                f"{cls.__name__}.{', '.join(unlisted)} is in no fingerprint version: add it to "
                "LATER_FIELDS with its default (rules/fingerprints.py)"
            )
        plan = _PLAN[cls] = (FIELDS_V1[cls], later)
    return plan


def _plain(value: object) -> object:
    """The value as version 1 encoded it: a listed dataclass as a dict of its listed fields
    (later ones only when not at their default), tuples and lists as lists."""
    cls = type(value)
    if is_dataclass(value) and not isinstance(value, type):
        first, later = _plan(cls)
        plain = {name: _plain(getattr(value, name)) for name in first}
        for name, default in later:
            current = getattr(value, name)
            if current != default:
                plain[name] = _plain(current)
        return plain
    if cls is tuple or cls is list:
        return [_plain(item) for item in value]  # type: ignore[attr-defined]
    if cls is dict:
        return {key: _plain(item) for key, item in value.items()}  # type: ignore[attr-defined]
    return value
