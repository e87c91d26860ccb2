"""Request fingerprints (registry/rules/fingerprints.py): a retry is recognised, a reused
request_id is not, and fingerprints stored by earlier versions keep replaying."""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest

from registry.rules import fingerprints
from registry.rules.civil_registration import validate_death
from registry.rules.dates import PartialDate
from registry.rules.fingerprints import FIELDS_V1, LATER_FIELDS, request_hash
from registry.rules.model import BirthRegistration
from registry.rules.pin import Sex
from tests.rules.registration import (
    OTHER_PIN,
    TABLE,
    TODAY,
    raw_birth,
    raw_death,
    validate_birth,
)


def _validated(**overrides: Any) -> Any:
    return validate_birth(raw_birth(**overrides), TABLE, TODAY)


def test_request_hash_is_the_same_for_nfd_and_nfc_names() -> None:
    nfc = _validated(full_name=unicodedata.normalize("NFC", "Trần Thị Ánh Tuyết"))
    nfd = _validated(full_name=unicodedata.normalize("NFD", " Trần  Thị Ánh Tuyết "))
    assert request_hash("RegisterBirth", nfc) == request_hash("RegisterBirth", nfd)


def test_request_hash_is_the_same_for_the_same_request() -> None:
    assert request_hash("RegisterBirth", _validated()) == request_hash(
        "RegisterBirth", _validated()
    )
    # The request_id is the key, not part of the content.
    assert request_hash("RegisterBirth", _validated(request_id="a")) == request_hash(
        "RegisterBirth", _validated(request_id="b")
    )


def test_request_hash_differs_for_different_content() -> None:
    base = _validated()
    assert request_hash("RegisterBirth", base) != request_hash(
        "RegisterBirth", _validated(full_name="Nguyễn Văn Anh")
    )
    assert request_hash("RegisterBirth", base) != request_hash(
        "RegisterBirth", replace(base, sex=Sex.FEMALE)
    )
    assert request_hash("RegisterBirth", base) != request_hash(
        "RegisterBirth", _validated(date_of_birth=(2026, 6, 2))
    )
    assert request_hash("RegisterBirth", base) != request_hash(
        "RegisterBirth", _validated(mother_pin=OTHER_PIN)
    )


def test_request_hash_differs_for_a_different_method() -> None:
    birth = _validated()
    assert request_hash("RegisterBirth", birth) != request_hash("RegisterDeath", birth)
    death = validate_death(raw_death(), TODAY)
    assert request_hash("RegisterDeath", death) != request_hash("IssueCard", death)


def test_request_hash_is_a_sha256_digest() -> None:
    digest = request_hash("RegisterBirth", _validated())
    assert isinstance(digest, bytes)
    assert len(digest) == 32


def test_request_hash_of_an_identical_retry_does_not_depend_on_the_day() -> None:
    # registered_on not given defaults to today; a byte-identical retry made after midnight is
    # still "the same content" (SPEC §5) and must fingerprint the same, or it is answered
    # ALREADY_EXISTS instead of being replayed.
    raw = raw_birth(registered_on=(0, 0, 0))
    first = validate_birth(raw, TABLE, TODAY)
    retry = validate_birth(raw, TABLE, TODAY + timedelta(days=1))
    assert request_hash("RegisterBirth", first) == request_hash("RegisterBirth", retry)


# Fingerprints are stored with every idempotency key: a retry after an upgrade must still be
# recognised as the same request. These were made by the first implementation
# (json.dumps(dataclasses.asdict(request), sort_keys=True, default=str, ensure_ascii=False)).
def _known_requests() -> dict[str, tuple[str, object, str]]:
    from registry.rules.cards import CardIssue, CardKind, LegacyLink
    from registry.rules.model import DeathRegistration
    from registry.rules.updates import Update

    pin = "001090000123"
    return {
        "birth": (
            "RegisterBirth",
            BirthRegistration(
                "Nguyễn Văn An", Sex.MALE, PartialDate(2026, 11, 1), "Bệnh viện Phụ sản Hà Nội",
                "001", "Nam Định", "Kinh", "VN", None, pin, "UBND phường Láng Hạ", "0421/2026",
                date(2026, 11, 20),
            ),
            "5b6d5b0414068430377c6c7f709351f68c0638240fa7f39eda549138f495df51",
        ),
        "birth, year only": (
            "RegisterBirth",
            BirthRegistration(
                "Lê Thị Ánh", Sex.FEMALE, PartialDate(1950), "", "079", "", "", "VN", None, None,
                "", "", None,
            ),
            "51b73516a7467583785f02a0aca25909855b02df186482f9523fb45a3aa4a6cf",
        ),
        "death": (
            "RegisterDeath",
            DeathRegistration(pin, PartialDate(2026, 1), "UBND xã", "12/2026"),
            "f12067ae9b661f50bafed985e043c41ec33f8e9e8629df255f60209ede51be69",
        ),
        "card": (
            "IssueCard",
            CardIssue(pin, CardKind.EXCHANGE, "AB1234567", date(2026, 5, 4), "Cục Cảnh sát"),
            "77a87bee9fd92c6e6725e722ba6332f7ba157722b7743b3f783c6c39274b956f",
        ),
        "legacy id": (
            "LinkLegacyId",
            LegacyLink(pin, "123456789"),
            "1f0b23959c8ebbe5a952af2f2f6824eee701746fe46bc0cf21f3b3a8c2ac330f",
        ),
        "update": (
            "UpdateCitizen",
            Update(
                pin,
                3,
                (
                    ("full_name", "Trần Văn B"),
                    ("date_of_birth", PartialDate(1990, 2)),
                    ("other_names", ["Bé", "Tí"]),
                    ("father_pin", None),
                    ("sex", Sex.FEMALE),
                ),
            ),
            "6c05c5934e2285fbe29b268d291aba99d9e66d4c01a58aec08c192c21cd36f84",
        ),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(_known_requests()))
def test_request_hash_keeps_the_stored_fingerprints(name: str) -> None:
    method, request, expected = _known_requests()[name]
    assert request_hash(method, request).hex() == expected


def test_request_hash_matches_the_asdict_encoding_on_random_requests() -> None:
    import hashlib
    import json
    import random
    from dataclasses import asdict

    rng = random.Random(7)
    dob = PartialDate(2026, 5, 9)
    for _ in range(300):
        birth = BirthRegistration(
            "".join(rng.choice("aăâbcdđeêghiklmnoôơpqrstuưvxy ") for _ in range(12)),
            rng.choice(list(Sex)),
            rng.choice([PartialDate(rng.randint(1900, 2026)), PartialDate(2001, 5), dob]),
            rng.choice(["", "Trạm y tế"]), "001", "", "Kinh", "VN",
            rng.choice([None, OTHER_PIN]), None, "UBND", str(rng.random()),
            rng.choice([None, date(2026, 1, 2)]),
        )  # fmt: skip
        body = json.dumps(asdict(birth), sort_keys=True, default=str, ensure_ascii=False)
        old = hashlib.sha256(f"RegisterBirth\n{body}".encode()).digest()
        assert request_hash("RegisterBirth", birth) == old


# -- the versioned field list ------------------------------------------------------------------


def test_every_field_of_every_request_type_is_in_a_fingerprint_version() -> None:
    for cls, first in FIELDS_V1.items():
        later = {name for name, _, _ in LATER_FIELDS.get(cls, ())}
        assert {f.name for f in dataclasses.fields(cls)} == set(first) | later, cls.__name__


def test_a_field_added_to_a_request_without_a_version_cannot_be_fingerprinted(monkeypatch) -> None:
    grown = dataclasses.make_dataclass(
        "BirthRegistration",
        [(f.name, f.type) for f in dataclasses.fields(BirthRegistration)]
        + [("religion", str, dataclasses.field(default=""))],
        frozen=True,
    )
    monkeypatch.setitem(FIELDS_V1, grown, FIELDS_V1[BirthRegistration])
    base = _validated()
    request = grown(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    with pytest.raises(TypeError, match="religion"):
        request_hash("RegisterBirth", request)


def test_a_field_added_in_a_later_version_keeps_old_fingerprints_until_it_is_used(
    monkeypatch,
) -> None:
    # What adding a field looks like: the dataclass grows, LATER_FIELDS names it with its
    # default. Every request that leaves it at the default hashes exactly as before (the stored
    # fingerprints keep replaying); one that sets it is a different request.
    grown = dataclasses.make_dataclass(
        "BirthRegistration",
        [(f.name, f.type) for f in dataclasses.fields(BirthRegistration)]
        + [("religion", str, dataclasses.field(default=""))],
        frozen=True,
    )
    monkeypatch.setitem(FIELDS_V1, grown, FIELDS_V1[BirthRegistration])
    monkeypatch.setitem(LATER_FIELDS, grown, (("religion", 2, ""),))
    monkeypatch.setattr(fingerprints, "_PLAN", {})
    method, old_request, stored = _known_requests()["birth"]
    values = {f.name: getattr(old_request, f.name) for f in dataclasses.fields(old_request)}
    assert request_hash(method, grown(**values)).hex() == stored
    assert request_hash(method, grown(**values, religion="Phật giáo")).hex() != stored


def test_a_type_with_no_field_list_cannot_be_fingerprinted() -> None:
    @dataclasses.dataclass(frozen=True)
    class Unlisted:
        pin: str

    with pytest.raises(TypeError, match="Unlisted"):
        request_hash("RegisterBirth", Unlisted("001090000123"))
