"""Helpers for the RegisterBirth tests: expected PIN parts, rows found by a registration number
unique to a test, PIN buckets.
"""

from __future__ import annotations

import uuid
from typing import Any

from registry.rules import pin as pins
from registry.v1 import citizen_pb2
from tests.conftest import SESSION_PIN_SECRET
from tests.helpers import birth_request

TABLE = pins.PrefixTable.load_default()
MALE = citizen_pb2.SEX_MALE
FEMALE = citizen_pb2.SEX_FEMALE
# No bucket can exist under an unknown province code (pin_buckets references pin_prefixes), so
# a PIN with this prefix is well formed and certainly held by nobody.
NOBODY = "998085000001"
NOBODY_2 = "998188000002"


def expected_g(sex: int, year: int) -> int:
    """The century/sex digit by SPEC §2: 1900s 0/1, 2000s 2/3, 2100s 4/5, ..."""
    century_index = (year - 1900) // 100
    return 2 * century_index + (1 if sex == FEMALE else 0)


def assert_pin_for(pin: str, province: str, sex: int, year: int) -> None:
    assert len(pin) == 12, pin
    assert pin.isascii() and pin.isdigit(), pin
    assert pin[:3] == province
    assert pin[3] == str(expected_g(sex, year))
    assert pin[4:6] == f"{year % 100:02d}"
    model_sex = pins.Sex.FEMALE if sex == FEMALE else pins.Sex.MALE
    assert pins.check_structure(pin, TABLE, sex=model_sex, birth_year=year) == []


def unique_number() -> str:
    return f"T-{uuid.uuid4().hex[:16]}"


def rows_with_number(db: Any, number: str) -> int:
    return int(
        db.fetchval("SELECT count(*) FROM citizens WHERE birth_registration_number = $1", number)
    )


def bucket_row(db: Any, province: str, g: int, yy: int) -> Any:
    """The bucket's counter and its permutation key (derived as the test servers derive it)."""
    rows = db.fetch(
        "SELECT key, key_version, issued FROM pin_buckets "
        "WHERE province_code = $1 AND g = $2 AND yy = $3",
        province,
        g,
        yy,
    )
    if not rows:
        return None
    row = dict(rows[0])
    row["key"] = pins.bucket_key(bytes(row["key"]), row["key_version"], SESSION_PIN_SECRET)
    return row


def snapshot(db: Any) -> tuple[dict[str, int], int]:
    return db.counts(), db.issued()


def register(civil: Any, agency: Any, **overrides: Any) -> Any:
    return civil.RegisterBirth(birth_request(**overrides), metadata=agency.metadata()).citizen
