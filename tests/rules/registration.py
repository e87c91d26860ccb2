"""Raw birth and death requests and the prefix table for the registration rules' tests."""

from __future__ import annotations

from datetime import date
from typing import Any

from registry.rules import civil_registration as registration
from registry.rules.civil_registration import (
    RawBirth,
    RawDeath,
)
from registry.rules.model import BirthRegistration
from registry.rules.pin import PrefixTable

TODAY = date(2026, 6, 15)
VALID_PIN = "001090000123"
OTHER_PIN = "001190000456"
TABLE = PrefixTable.load_default()


def raw_birth(**overrides: Any) -> RawBirth:
    fields: dict[str, Any] = {
        "request_id": "birth-req-0001",
        "full_name": "Nguyễn Văn An",
        "sex": 1,
        "date_of_birth": (2026, 6, 1),
        "place_of_birth": "Bệnh viện Phụ sản Hà Nội",
        "registration_province_code": "001",
        "hometown": "Xã Hải Hậu, Nam Định",
        "ethnicity": "Kinh",
        "nationality": "VN",
        "father_pin": "",
        "mother_pin": "",
        "registration_authority": "UBND phường Láng Hạ",
        "registration_number": "0421/2026",
        "registered_on": (0, 0, 0),
    }
    fields.update(overrides)
    return RawBirth(**fields)


def raw_death(**overrides: Any) -> RawDeath:
    fields: dict[str, Any] = {
        "request_id": "death-req-0001",
        "pin": VALID_PIN,
        "date_of_death": (2026, 6, 10),
        "registration_authority": "UBND phường Láng Hạ",
        "registration_number": "0099/2026",
    }
    fields.update(overrides)
    return RawDeath(**fields)


def validate_birth(raw: RawBirth, table: PrefixTable, today: date) -> BirthRegistration:
    """Validate completely, deferred (table-dependent) violations included."""
    return registration.validate_birth(raw, table, today).check()
