"""Dates known to a precision: a full date, a year and month, or a year only.

Older civil records often give only the year of birth (SPEC §3). A :class:`PartialDate` stands
for the whole span it leaves open, so comparisons against it come in "certainly" form: a
birth year equal to the current year is not a birth in the future.
"""

from __future__ import annotations

import calendar
import enum
import re
from dataclasses import dataclass
from datetime import date

__all__ = [
    "MAX_YEAR",
    "MIN_YEAR",
    "DatePrecision",
    "PartialDate",
    "certainly_before",
    "certainly_precedes",
    "is_after",
    "parse_parts",
]

MIN_YEAR = 1
MAX_YEAR = 9999

_ISO_PARTIAL = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?")


class DatePrecision(enum.Enum):
    """How much of a date is known."""

    YEAR = "YEAR"
    MONTH = "MONTH"
    DAY = "DAY"


_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    # calendar.monthrange also works out the weekday the month starts on: a third of the
    # cost of checking a date, and dates are checked for every claim and imported record.
    if month == 2 and calendar.isleap(year):
        return 29
    return _DAYS_IN_MONTH[month]


@dataclass(frozen=True)
class PartialDate:
    """A date of which the year, the year and month, or all three parts are known.

    Instances order by ``(year, month, day)`` with a missing part before any given one, so
    1950 < 1950-01 < 1950-01-01. That order is for sorting; use :func:`is_after`,
    :func:`certainly_before` and :func:`certainly_precedes` to reason about time.
    """

    year: int
    month: int | None = None
    day: int | None = None

    def __post_init__(self) -> None:
        if not MIN_YEAR <= self.year <= MAX_YEAR:
            raise ValueError(f"year must be {MIN_YEAR}–{MAX_YEAR}, got {self.year}")
        if self.month is None:
            if self.day is not None:
                raise ValueError("a day needs a month")
            return
        if not 1 <= self.month <= 12:
            raise ValueError(f"month must be 1–12, got {self.month}")
        if self.day is not None:
            last = _days_in_month(self.year, self.month)
            if not 1 <= self.day <= last:
                raise ValueError(
                    f"day must be 1–{last} in {self.year:04d}-{self.month:02d}, got {self.day}"
                )

    @classmethod
    def from_date(cls, day: date) -> PartialDate:
        """Return the full-precision partial date for ``day``."""
        return cls(day.year, day.month, day.day)

    @classmethod
    def from_iso(cls, text: str) -> PartialDate:
        """Parse ``"1950"``, ``"1950-03"`` or ``"1950-03-07"``.

        Raises:
            ValueError: ``text`` has another shape or names no real date.
        """
        match = _ISO_PARTIAL.fullmatch(text)
        if match is None:
            raise ValueError(f"expected YYYY, YYYY-MM or YYYY-MM-DD, got {text!r}")
        year, month, day = match.groups()
        return cls(
            int(year),
            int(month) if month is not None else None,
            int(day) if day is not None else None,
        )

    @property
    def precision(self) -> DatePrecision:
        """Return how much of the date is known."""
        if self.month is None:
            return DatePrecision.YEAR
        if self.day is None:
            return DatePrecision.MONTH
        return DatePrecision.DAY

    @property
    def is_complete(self) -> bool:
        """Return whether year, month and day are all known."""
        return self.day is not None

    def earliest(self) -> date:
        """Return the first day the partial date may stand for."""
        return date(self.year, self.month or 1, self.day or 1)

    def latest(self) -> date:
        """Return the last day the partial date may stand for."""
        if self.month is None:
            return date(self.year, 12, 31)
        if self.day is None:
            return date(self.year, self.month, _days_in_month(self.year, self.month))
        return date(self.year, self.month, self.day)

    def to_date(self) -> date:
        """Return the date, which must be known to the day.

        Raises:
            ValueError: the month or day is not known.
        """
        if self.month is None or self.day is None:
            raise ValueError(f"{self} is not a full date")
        return date(self.year, self.month, self.day)

    def _sort_key(self) -> tuple[int, int, int]:
        return (self.year, self.month or 0, self.day or 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, PartialDate):
            return NotImplemented
        return self._sort_key() < other._sort_key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, PartialDate):
            return NotImplemented
        return self._sort_key() <= other._sort_key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, PartialDate):
            return NotImplemented
        return self._sort_key() > other._sort_key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, PartialDate):
            return NotImplemented
        return self._sort_key() >= other._sort_key()

    def __str__(self) -> str:
        if self.month is None:
            return f"{self.year:04d}"
        if self.day is None:
            return f"{self.year:04d}-{self.month:02d}"
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"


def parse_parts(
    year: int, month: int, day: int
) -> tuple[PartialDate | None, list[tuple[str, str]]]:
    """Interpret the parts of a ``google.type.Date``, where 0 means "not given".

    Returns:
        ``(None, [])`` when all three parts are 0 (no date given); ``(date, [])`` for a valid
        date; otherwise ``(None, problems)`` where each problem is ``(subfield, message)`` with
        subfield ``"year"``, ``"month"`` or ``"day"``, so that a caller can report
        ``date_of_birth.day``.
    """
    if year == 0 and month == 0 and day == 0:
        return None, []
    problems: list[tuple[str, str]] = []
    year_ok = MIN_YEAR <= year <= MAX_YEAR
    month_ok = 1 <= month <= 12
    if year == 0:
        problems.append(("year", "must be given when the month or day is given"))
    elif not year_ok:
        problems.append(("year", f"must be between {MIN_YEAR} and {MAX_YEAR} (got {year})"))
    if month == 0:
        if day != 0:
            problems.append(("month", "must be given when the day is given"))
    elif not month_ok:
        problems.append(("month", f"must be between 1 and 12 (got {month})"))
    if day != 0:
        if not 1 <= day <= 31:
            problems.append(("day", f"must be between 1 and 31 (got {day})"))
        elif month_ok:
            # Without a valid year, allow 29 February rather than report a second,
            # derivative problem; the year is reported already.
            last = _days_in_month(year if year_ok else 2000, month)
            if day > last:
                where = calendar.month_name[month] + (f" {year}" if year_ok else "")
                problems.append(("day", f"must be between 1 and {last} in {where} (got {day})"))
    if problems:
        return None, problems
    return PartialDate(year, month or None, day or None), []


def is_after(pd: PartialDate, day: date) -> bool:
    """Return whether every day ``pd`` may stand for is after ``day``.

    A date of birth is in the future when ``is_after(birth, today)``: a birth year equal to the
    current year is not.
    """
    return pd.earliest() > day


def certainly_before(pd: PartialDate, day: date) -> bool:
    """Return whether every day ``pd`` may stand for is before ``day``."""
    return pd.latest() < day


def certainly_precedes(earlier: PartialDate, later: PartialDate) -> bool:
    """Return whether every day of ``earlier`` is before every day of ``later``.

    A death is recorded before the birth when ``certainly_precedes(death, birth)``; a death in
    the same year as a year-only birth is not.
    """
    return earlier.latest() < later.earliest()
