"""Citizens and cards put straight into the database, for the repository tests to work on.

PINs are fresh for every call (a random province, year and random part), so tests sharing the
session database never meet each other's records.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import asyncpg

from registry.rules.pin import Sex, compose

PROVINCES = ("001", "002", "004", "022", "031", "048", "079", "092", "096")


def fresh_pin(sex: Sex = Sex.MALE, year: int | None = None, province: str | None = None) -> str:
    """A well-formed PIN nobody else in the session uses (by chance: one in 10**6 per bucket)."""
    return compose(
        province or secrets.choice(PROVINCES),
        sex,
        year or 1930 + secrets.randbelow(70),
        secrets.randbelow(1_000_000),
    )


def fresh_name(prefix: str = "Nguyễn Văn") -> str:
    """A full name nobody else in the session has."""
    letters = "abcdeghiklmnopqrstuvxy"
    return f"{prefix} " + "".join(secrets.choice(letters) for _ in range(10)).capitalize()


def request_id() -> str:
    return str(uuid.uuid4())


async def insert_citizen(conn: asyncpg.Connection, pin: str | None = None, **columns: Any) -> str:
    """Insert a citizen row (defaults for what is not given); return its PIN."""
    pin = pin or fresh_pin(Sex(columns.get("sex", Sex.MALE)))
    values: dict[str, Any] = {
        "pin": pin,
        "full_name": fresh_name(),
        "birth_year": 1980,
        "birth_month": 5,
        "birth_day": 17,
        "sex": int(Sex.MALE),
        "registration_province_code": pin[:3],
        "created_by": "repository-tests",
    }
    values.update(columns)
    names = ", ".join(values)
    places = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(f"INSERT INTO citizens ({names}) VALUES ({places})", *values.values())
    return pin
