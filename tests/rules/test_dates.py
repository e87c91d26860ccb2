"""Tests for registry.rules.dates: partial dates, google.type.Date parts and time checks."""

from __future__ import annotations

import calendar
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.rules.dates import (
    DatePrecision,
    PartialDate,
    certainly_before,
    certainly_precedes,
    is_after,
    parse_parts,
)


def test_year_only() -> None:
    pd = PartialDate(1950)
    assert pd.precision is DatePrecision.YEAR
    assert not pd.is_complete
    assert pd.earliest() == date(1950, 1, 1)
    assert pd.latest() == date(1950, 12, 31)
    assert str(pd) == "1950"
    with pytest.raises(ValueError):
        pd.to_date()


def test_year_month() -> None:
    pd = PartialDate(1950, 3)
    assert pd.precision is DatePrecision.MONTH
    assert not pd.is_complete
    assert pd.earliest() == date(1950, 3, 1)
    assert pd.latest() == date(1950, 3, 31)
    assert str(pd) == "1950-03"
    with pytest.raises(ValueError):
        pd.to_date()


@pytest.mark.parametrize(
    ("year", "month", "last"),
    [(2024, 2, 29), (2023, 2, 28), (2000, 2, 29), (1900, 2, 28), (2023, 4, 30), (2023, 12, 31)],
)
def test_year_month_latest_is_last_day_of_month(year: int, month: int, last: int) -> None:
    assert PartialDate(year, month).latest() == date(year, month, last)


def test_full_date() -> None:
    pd = PartialDate(1950, 3, 7)
    assert pd.precision is DatePrecision.DAY
    assert pd.is_complete
    assert pd.earliest() == pd.latest() == pd.to_date() == date(1950, 3, 7)
    assert str(pd) == "1950-03-07"
    assert PartialDate.from_date(date(1950, 3, 7)) == pd


def test_str_pads_small_years() -> None:
    assert str(PartialDate(5, 1, 2)) == "0005-01-02"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1950", PartialDate(1950)),
        ("1950-03", PartialDate(1950, 3)),
        ("1950-03-07", PartialDate(1950, 3, 7)),
    ],
)
def test_from_iso(text: str, expected: PartialDate) -> None:
    assert PartialDate.from_iso(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["", "50", "1950-3", "1950-02-30", "1950-13", "1950/03", "0000"])
def test_from_iso_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        PartialDate.from_iso(text)


@pytest.mark.parametrize(
    "args",
    [(0,), (10000,), (2000, 13), (2000, 0), (2000, 2, 30), (2023, 2, 29), (1900, 2, 29)],
)
def test_constructor_rejects_impossible_dates(args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        PartialDate(*args)


def test_constructor_rejects_day_without_month() -> None:
    with pytest.raises(ValueError, match="month"):
        PartialDate(2000, None, 1)


def test_ordering() -> None:
    dates = [
        PartialDate(1951),
        PartialDate(1950, 3, 7),
        PartialDate(1950, 3),
        PartialDate(1950),
        PartialDate(1950, 1, 1),
        PartialDate(1949, 12, 31),
    ]
    assert sorted(dates) == [
        PartialDate(1949, 12, 31),
        PartialDate(1950),
        PartialDate(1950, 1, 1),
        PartialDate(1950, 3),
        PartialDate(1950, 3, 7),
        PartialDate(1951),
    ]
    assert PartialDate(1950) < PartialDate(1950, 1)
    assert PartialDate(1950, 1) <= PartialDate(1950, 1)
    assert PartialDate(1950, 2) > PartialDate(1950, 1, 31)
    assert PartialDate(1950, 2) >= PartialDate(1950, 2)
    assert PartialDate(1950) != PartialDate(1950, 1)
    assert len({PartialDate(1950), PartialDate(1950), PartialDate(1950, 1)}) == 2


@given(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)))
def test_full_dates_order_like_dates(day: date) -> None:
    pd = PartialDate.from_date(day)
    assert pd.to_date() == day
    assert PartialDate.from_iso(str(pd)) == pd
    later = PartialDate.from_date(date.fromordinal(min(day.toordinal() + 1, date.max.toordinal())))
    assert pd <= later


# --- parse_parts -----------------------------------------------------------------------------


def test_parse_parts_not_given() -> None:
    assert parse_parts(0, 0, 0) == (None, [])


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((1950, 0, 0), PartialDate(1950)),
        ((1950, 3, 0), PartialDate(1950, 3)),
        ((1950, 3, 7), PartialDate(1950, 3, 7)),
        ((2000, 2, 29), PartialDate(2000, 2, 29)),
        ((2024, 2, 29), PartialDate(2024, 2, 29)),
        ((1, 1, 1), PartialDate(1, 1, 1)),
        ((9999, 12, 31), PartialDate(9999, 12, 31)),
    ],
)
def test_parse_parts_valid(parts: tuple[int, int, int], expected: PartialDate) -> None:
    assert parse_parts(*parts) == (expected, [])


@pytest.mark.parametrize(
    ("parts", "subfields"),
    [
        ((1900, 2, 29), ["day"]),  # 1900 is not a leap year
        ((2023, 2, 29), ["day"]),
        ((2023, 4, 31), ["day"]),
        ((2023, 1, 32), ["day"]),
        ((2023, 1, -1), ["day"]),
        ((2023, 13, 0), ["month"]),
        ((2023, 13, 5), ["month"]),
        ((2023, -1, 0), ["month"]),
        ((2023, 0, 5), ["month"]),
        ((0, 3, 0), ["year"]),
        ((0, 3, 7), ["year"]),
        ((0, 0, 7), ["year", "month"]),
        ((10000, 1, 1), ["year"]),
        ((-5, 0, 0), ["year"]),
        ((0, 13, 40), ["year", "month", "day"]),
    ],
)
def test_parse_parts_problems(parts: tuple[int, int, int], subfields: list[str]) -> None:
    pd, problems = parse_parts(*parts)
    assert pd is None
    assert [subfield for subfield, _ in problems] == subfields
    assert all(message for _, message in problems)


def test_parse_parts_messages_are_specific() -> None:
    assert parse_parts(2023, 2, 29) == (
        None,
        [("day", "must be between 1 and 28 in February 2023 (got 29)")],
    )
    assert parse_parts(2023, 13, 0) == (None, [("month", "must be between 1 and 12 (got 13)")])
    assert parse_parts(0, 3, 7) == (
        None,
        [("year", "must be given when the month or day is given")],
    )
    assert parse_parts(2023, 0, 7) == (None, [("month", "must be given when the day is given")])


def test_parse_parts_without_year_still_checks_day_against_month() -> None:
    # Only the year problem for 29 February (could be a leap year), but 30 February is wrong in
    # every year.
    assert [s for s, _ in parse_parts(0, 2, 29)[1]] == ["year"]
    assert [s for s, _ in parse_parts(0, 2, 30)[1]] == ["year", "day"]


def _oracle_parts(year: int, month: int, day: int) -> tuple[PartialDate | None, list[str]]:
    """parse_parts as docs/api.md and google.type.Date describe it, written without the module.

    0 means "not given"; nothing given is no date. A year is 1-9999 and must be given when a
    month or day is; a month is 1-12 and must be given when a day is; a day is 1-31 and must
    exist in its month (in its year when the year is valid, else in some year: 29 February
    passes). Every part is judged, so one request names every bad part.
    """
    if (year, month, day) == (0, 0, 0):
        return None, []
    bad = []
    year_ok = 1 <= year <= 9999
    if not year_ok:
        bad.append("year")
    if (month == 0 and day != 0) or not 0 <= month <= 12:
        bad.append("month")
    if day != 0:
        if 1 <= month <= 12:
            try:
                date(year if year_ok else 2000, month, day)  # 2000: a leap year
            except ValueError:
                bad.append("day")
        elif not 1 <= day <= 31:
            bad.append("day")
    if bad:
        return None, bad
    return PartialDate(year, month or None, day or None), []


@given(st.integers(-10, 10_010), st.integers(-2, 14), st.integers(-2, 33))
def test_parse_parts_agrees_with_an_oracle_written_from_the_spec(
    year: int, month: int, day: int
) -> None:
    pd, problems = parse_parts(year, month, day)
    expected, subfields = _oracle_parts(year, month, day)
    assert (pd, [s for s, _ in problems]) == (expected, subfields)
    if pd is not None:
        assert (pd.year, pd.month or 0, pd.day or 0) == (year, month, day)


@pytest.mark.parametrize("year", [1900, 2000, 2023, 2024, 2100])
def test_parse_parts_accepts_exactly_the_days_of_each_month(year: int) -> None:
    for month in range(1, 13):
        days = {d for d in range(1, 33) if parse_parts(year, month, d)[0] is not None}
        assert days == set(range(1, calendar.monthrange(year, month)[1] + 1)), (year, month)


# --- time checks -----------------------------------------------------------------------------

TODAY = date(2025, 6, 15)


@pytest.mark.parametrize(
    ("pd", "future"),
    [
        (PartialDate(2025), False),  # a birth this year is not in the future
        (PartialDate(2025, 6), False),  # nor this month
        (PartialDate(2025, 6, 15), False),  # nor today
        (PartialDate(2025, 6, 16), True),
        (PartialDate(2025, 7), True),
        (PartialDate(2026), True),
        (PartialDate(2024, 12, 31), False),
    ],
)
def test_is_after_today(pd: PartialDate, future: bool) -> None:
    assert is_after(pd, TODAY) is future


@pytest.mark.parametrize(
    ("pd", "before"),
    [
        (PartialDate(2025), False),
        (PartialDate(2025, 5), True),
        (PartialDate(2025, 6), False),
        (PartialDate(2025, 6, 14), True),
        (PartialDate(2025, 6, 15), False),
        (PartialDate(2024), True),
    ],
)
def test_certainly_before(pd: PartialDate, before: bool) -> None:
    assert certainly_before(pd, TODAY) is before


@pytest.mark.parametrize(
    ("death", "birth", "impossible"),
    [
        (PartialDate(1990), PartialDate(1990, 5, 1), False),  # same year: may be after
        (PartialDate(1990, 4), PartialDate(1990, 5, 1), True),
        (PartialDate(1990, 5, 1), PartialDate(1990, 5, 1), False),  # died on the day of birth
        (PartialDate(1990, 4, 30), PartialDate(1990, 5), True),
        (PartialDate(1989), PartialDate(1990), True),
        (PartialDate(1991), PartialDate(1990), False),
    ],
)
def test_death_before_birth(death: PartialDate, birth: PartialDate, impossible: bool) -> None:
    assert certainly_precedes(death, birth) is impossible


# -- found by mutation testing (issue 14) -------------------------------------------------------


def test_a_missing_part_sorts_before_any_given_one_and_nothing_before_itself():
    assert PartialDate(1950, 1) < PartialDate(1950, 1, 1)
    assert not PartialDate(1950) < PartialDate(1950)
    assert not PartialDate(1950, 2) > PartialDate(1950, 2)
    assert PartialDate(1950, 1, 1) >= PartialDate(1950, 1)


@pytest.mark.parametrize("compare", ["<", "<=", ">", ">="])
def test_a_partial_date_does_not_order_against_a_date(compare):
    # A date and a partial date are different things: comparing them is a TypeError, never a
    # guess (and never an AttributeError from inside the comparison).
    with pytest.raises(TypeError):
        eval(f"PartialDate(1950) {compare} date(1950, 1, 1)")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PartialDate(0), "year must be 1–9999, got 0"),
        (lambda: PartialDate(1950, None, 3), "a day needs a month"),
        (lambda: PartialDate(1950, 13), "month must be 1–12, got 13"),
        (lambda: PartialDate(1950, 2, 29), "day must be 1–28 in 1950-02, got 29"),
        (
            lambda: PartialDate.from_iso("1950-3"),
            "expected YYYY, YYYY-MM or YYYY-MM-DD, got '1950-3'",
        ),
        (lambda: PartialDate(1950, 3).to_date(), "1950-03 is not a full date"),
    ],
)
def test_impossible_partial_dates_are_refused_saying_why(make, message):
    # These reach operators (registry import reads partial dates from CSV files).
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("parts", "problems"),
    [
        ((10000, 1, 1), [("year", "must be between 1 and 9999 (got 10000)")]),
        ((1950, 1, 32), [("day", "must be between 1 and 31 (got 32)")]),
        ((1950, 2, 30), [("day", "must be between 1 and 28 in February 1950 (got 30)")]),
        ((10000, 2, 30), [("year", "must be between 1 and 9999 (got 10000)"),
                          ("day", "must be between 1 and 29 in February (got 30)")]),
    ],
)  # fmt: skip
def test_the_problems_of_a_date_are_described_exactly(parts, problems):
    assert parse_parts(*parts) == (None, problems)
