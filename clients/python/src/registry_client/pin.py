"""Offline PIN checks (SPEC §2): ``PPP G YY RRRRRR``, without calling the registry."""

from __future__ import annotations

import datetime as _dt
from functools import cache
from importlib import resources

from .types import PartialDate, Sex


@cache
def province_codes() -> dict[str, str]:
    """The 63 province codes (PPP) of the register's foundation table, code -> name."""
    text = resources.files(__package__).joinpath("data/provinces.csv").read_text("utf-8")
    rows = (line.split(",", 1) for line in text.splitlines()[1:] if line.strip())
    return {code: name for code, name in rows}


def century_sex_digit(year: int, sex: Sex) -> int | None:
    """The G digit for a birth year and sex (1900s male 0 / female 1 ... 2300s 8 / 9)."""
    if not 1900 <= year <= 2399 or sex not in (Sex.MALE, Sex.FEMALE):
        return None
    return 2 * (year // 100 - 19) + (1 if sex is Sex.FEMALE else 0)


def validate_pin(
    pin: str,
    sex: Sex | str | None = None,
    date_of_birth: _dt.date | PartialDate | str | int | None = None,
) -> list[str]:
    """Check a PIN's structure, and against sex and birth year when given.

    Returns the problems found, in words; an empty list means the PIN is consistent. Checks:
    12 ASCII digits; PPP one of the 63 province codes; G consistent with the sex and the
    century of birth; YY the last two digits of the birth year. ``date_of_birth`` may be a
    date, a PartialDate, ``"YYYY[-MM[-DD]]"`` or just the year. Imported records may hold
    PINs that fail these checks (Citizen.pin_mismatch); the registry never rewrites them.
    """
    if not isinstance(pin, str) or len(pin) != 12 or not (pin.isascii() and pin.isdigit()):
        return ["PIN must be exactly 12 ASCII digits"]
    problems: list[str] = []
    ppp, g, yy = pin[:3], int(pin[3]), int(pin[4:6])
    if ppp not in province_codes():
        problems.append(f"province code {ppp} is not one of the 63 province codes")
    sex_value = Sex[sex.upper()] if isinstance(sex, str) else (Sex(sex) if sex else None)
    if sex_value is Sex.UNSPECIFIED:
        sex_value = None
    if sex_value is not None and g % 2 != (1 if sex_value is Sex.FEMALE else 0):
        problems.append(
            f"century/sex digit {g} is for a {'female' if g % 2 else 'male'}, not a "
            f"{sex_value.name.lower()}"
        )
    year: int | None
    if date_of_birth is None:
        year = None
    elif isinstance(date_of_birth, int):
        year = date_of_birth
    elif isinstance(date_of_birth, str):
        year = PartialDate.parse(date_of_birth).year
    else:
        year = date_of_birth.year
    if year is not None:
        if not 1900 <= year <= 2399:
            problems.append(f"birth year {year} is outside 1900-2399, which PINs can encode")
        else:
            century = 1900 + 100 * (g // 2)
            if not century <= year < century + 100:
                problems.append(
                    f"century/sex digit {g} is for births in {century}-{century + 99}, not {year}"
                )
            if yy != year % 100:
                problems.append(f"year digits {pin[4:6]} do not match birth year {year}")
    return problems
