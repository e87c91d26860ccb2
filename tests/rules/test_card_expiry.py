"""Tests for registry.rules.cards: the card expiry rule and derived state.

Pure: no server, no database. Every expected expiry below was worked out by hand from the rule
(Law on Identification 2023 art. 21, SPEC §4), never by calling the function under test, and
checked against an independent day-by-day oracle.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.rules.cards import (
    MILESTONES,
    CardState,
    anniversary,
    card_expiry,
    effective_state,
)
from registry.rules.dates import PartialDate

# -- card_expiry --------------------------------------------------------------------------------

# Holder born 17 May 1990. Birthdays worked out by hand:
#   12th 2002-05-17   14th 2004-05-17   23rd 2013-05-17   25th 2015-05-17
#   38th 2028-05-17   40th 2030-05-17   58th 2048-05-17   60th 2050-05-17
# Day before each milestone (the possible expiry dates):
#   2004-05-16 (14)   2015-05-16 (25)   2030-05-16 (40)   2050-05-16 (60)
BORN = date(1990, 5, 17)

# Holder born 29 February 2000 (leap day). Birthdays in common years fall on 1 March:
#   12th 2012-02-29 (leap)   14th 2014-03-01   23rd 2023-03-01   25th 2025-03-01
#   38th 2038-03-01          40th 2040-02-29 (leap)   58th 2058-03-01   60th 2060-02-29 (leap)
LEAP_BORN = date(2000, 2, 29)

# Born 1 January 2001: expiry dates fall on 31 December.
JAN1_BORN = date(2001, 1, 1)

# Dates of birth known only in part, taken at their earliest day.
YEAR_1980 = PartialDate(1980)  # any day of 1980: the earliest expiry over all of them
JULY_1980 = PartialDate(1980, 7)  # any day of July 1980
JULY_2010 = PartialDate(2010, 7)  # as 2010-07-01
FEB_2000 = PartialDate(2000, 2)  # as 2000-02-01, not a leap-day birthday


def case(born: date | PartialDate, issued: str, expected: str | None, case_id: str) -> Any:
    """One row of the expiry table; dates are ISO literals worked out by hand."""
    return pytest.param(
        born,
        date.fromisoformat(issued),
        None if expected is None else date.fromisoformat(expected),
        id=case_id,
    )


EXPIRY_TABLE = [
    # --- milestone 14: boundary at the 12th birthday (2002-05-17) ---
    case(BORN, "2002-05-16", "2004-05-16", "14:day-before-12th->14"),
    case(BORN, "2002-05-17", "2015-05-16", "14:on-12th->25"),
    case(BORN, "2002-05-18", "2015-05-16", "14:day-after-12th->25"),
    # --- milestone 25: boundary at the 23rd birthday (2013-05-17) ---
    case(BORN, "2013-05-16", "2015-05-16", "25:day-before-23rd->25"),
    case(BORN, "2013-05-17", "2030-05-16", "25:on-23rd->40"),
    case(BORN, "2013-05-18", "2030-05-16", "25:day-after-23rd->40"),
    # --- milestone 40: boundary at the 38th birthday (2028-05-17) ---
    case(BORN, "2028-05-16", "2030-05-16", "40:day-before-38th->40"),
    case(BORN, "2028-05-17", "2050-05-16", "40:on-38th->60"),
    case(BORN, "2028-05-18", "2050-05-16", "40:day-after-38th->60"),
    # --- milestone 60: boundary at the 58th birthday (2048-05-17) ---
    case(BORN, "2048-05-16", "2050-05-16", "60:day-before-58th(57y364d)->60"),
    case(BORN, "2048-05-17", None, "60:on-58th->never"),
    case(BORN, "2048-05-18", None, "60:day-after-58th->never"),
    # --- issued exactly on a milestone birthday: that milestone is reached ---
    case(BORN, "2004-05-17", "2015-05-16", "on-14th-birthday->25"),
    case(BORN, "2015-05-17", "2030-05-16", "on-25th-birthday->40"),
    case(BORN, "2030-05-17", "2050-05-16", "on-40th-birthday->60"),
    case(BORN, "2050-05-17", None, "on-60th-birthday->never"),
    # --- issued the day before a milestone birthday: inside the grace window ---
    case(BORN, "2004-05-16", "2015-05-16", "day-before-14th->25"),
    case(BORN, "2015-05-16", "2030-05-16", "day-before-25th->40"),
    case(BORN, "2030-05-16", "2050-05-16", "day-before-40th->60"),
    case(BORN, "2050-05-16", None, "day-before-60th->never"),
    # --- children ---
    case(BORN, "1990-05-17", "2004-05-16", "newborn-age-0->14"),
    case(BORN, "1990-12-31", "2004-05-16", "age-0y7m->14"),
    case(BORN, "1996-01-10", "2004-05-16", "age-5->14"),
    case(BORN, "2001-05-17", "2004-05-16", "age-11->14"),
    case(BORN, "2002-05-17", "2015-05-16", "age-12->25"),
    case(BORN, "2003-05-17", "2015-05-16", "age-13->25"),
    case(BORN, "2003-11-02", "2015-05-16", "age-13y5m->25"),
    # --- ordinary adult ages ---
    case(BORN, "2008-01-01", "2015-05-16", "age-17->25"),
    case(BORN, "2020-05-17", "2030-05-16", "age-30->40"),
    case(BORN, "2035-05-17", "2050-05-16", "age-45->60"),
    # --- the never-expiring end ---
    case(BORN, "2048-05-16", "2050-05-16", "age-57y364d->60"),
    case(BORN, "2048-05-17", None, "age-58-exactly->never"),
    case(BORN, "2049-05-17", None, "age-59->never"),
    case(BORN, "2050-05-17", None, "age-60->never"),
    case(BORN, "2065-05-17", None, "age-75->never"),
    # --- expiry crossing a year end: born 1 January 2001 ---
    case(JAN1_BORN, "2014-12-31", "2025-12-31", "jan1:day-before-14th"),
    case(JAN1_BORN, "2010-06-01", "2014-12-31", "jan1:age-9->14"),
    case(JAN1_BORN, "2023-12-31", "2025-12-31", "jan1:day-before-23rd"),
    case(JAN1_BORN, "2024-01-01", "2040-12-31", "jan1:on-23rd->40"),
    # --- born 29 February 2000 ---
    case(LEAP_BORN, "2000-02-29", "2014-02-28", "feb29:newborn->14th-is-1mar2014"),
    case(LEAP_BORN, "2012-02-28", "2014-02-28", "feb29:day-before-12th->14"),
    case(LEAP_BORN, "2012-02-29", "2025-02-28", "feb29:on-12th(leap)->25"),
    case(LEAP_BORN, "2012-03-01", "2025-02-28", "feb29:day-after-12th->25"),
    case(LEAP_BORN, "2014-02-28", "2025-02-28", "feb29:28feb2014-still-13->25"),
    case(LEAP_BORN, "2014-03-01", "2025-02-28", "feb29:1mar2014-is-14th->25"),
    case(LEAP_BORN, "2020-06-01", "2025-02-28", "feb29:age-20->25th-is-1mar2025"),
    case(LEAP_BORN, "2023-02-28", "2025-02-28", "feb29:28feb2023-still-22->25"),
    case(LEAP_BORN, "2023-03-01", "2040-02-28", "feb29:1mar2023-is-23rd->40"),
    case(LEAP_BORN, "2025-02-28", "2040-02-28", "feb29:day-before-25th->40"),
    case(LEAP_BORN, "2025-03-01", "2040-02-28", "feb29:on-25th->40th-is-29feb2040"),
    case(LEAP_BORN, "2030-01-01", "2040-02-28", "feb29:age-29->40"),
    case(LEAP_BORN, "2038-02-28", "2040-02-28", "feb29:28feb2038-still-37->40"),
    case(LEAP_BORN, "2038-03-01", "2060-02-28", "feb29:1mar2038-is-38th->60"),
    case(LEAP_BORN, "2040-02-28", "2060-02-28", "feb29:day-before-40th->60"),
    case(LEAP_BORN, "2040-02-29", "2060-02-28", "feb29:on-40th(leap)->60"),
    case(LEAP_BORN, "2058-02-28", "2060-02-28", "feb29:28feb2058-still-57->60"),
    case(LEAP_BORN, "2058-03-01", None, "feb29:1mar2058-is-58th->never"),
    # --- partial dates of birth, taken at their earliest day ---
    # For a 1980-01-01 birth: 23rd 2003-01-01, 25th 2005-01-01, 40th 2020-01-01, ...
    case(YEAR_1980, "1985-06-15", "1993-12-31", "year-only:age-5->14"),
    case(YEAR_1980, "2000-06-15", "2004-12-31", "year-only:age-20->25"),
    case(YEAR_1980, "2002-12-31", "2004-12-31", "year-only:day-before-23rd"),
    # Partial dates take the EARLIEST expiry over every possible real birth day: someone born
    # 1980-01-02 is still 22 on 2003-01-01 (outside the window), so expiry is 2005-01-01.
    case(YEAR_1980, "2003-01-01", "2005-01-01", "year-only:on-23rd->25-for-a-2-jan-birth"),
    case(YEAR_1980, "2037-12-31", "2039-12-31", "year-only:57y364d->60"),
    # Born 1980-01-01 would never expire, but born 1980-01-02 is 57: valid until 2040-01-01.
    case(YEAR_1980, "2038-01-01", "2040-01-01", "year-only:on-58th->60-for-a-2-jan-birth"),
    # For a 1980-07-01 birth: 23rd 2003-07-01, 25th 2005-07-01, 40th 2020-07-01.
    case(JULY_1980, "2000-06-15", "2005-06-30", "year-month:age-19->25"),
    case(JULY_1980, "2003-06-30", "2005-06-30", "year-month:day-before-23rd"),
    # Born 1980-07-02 is still 22 on 2003-07-01: until the day before 2005-07-02.
    case(JULY_1980, "2003-07-01", "2005-07-01", "year-month:on-23rd->25-for-a-2-jul-birth"),
    case(JULY_2010, "2015-01-01", "2024-06-30", "year-month:child->14"),
    # PartialDate(2000, 2) = 2000-02-01, not a leap-day birthday: 14th 2014-02-01.
    case(FEB_2000, "2005-05-05", "2014-01-31", "year-month:feb-2000->14"),
    # A complete PartialDate behaves as the date itself.
    case(PartialDate(1980, 7, 15), "2000-06-15", "2005-07-14", "full-partial-date->25"),
    case(PartialDate(2000, 2, 29), "2020-06-01", "2025-02-28", "full-partial-feb29->25"),
]


@pytest.mark.parametrize(("born", "issued", "expected"), EXPIRY_TABLE)
def test_card_expiry(born: date | PartialDate, issued: date, expected: date | None) -> None:
    assert card_expiry(born, issued) == expected


def test_milestones_are_the_law_s() -> None:
    assert MILESTONES == (14, 25, 40, 60)


# -- anniversary --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("born", "years", "expected"),
    [
        pytest.param(date(1990, 5, 17), 14, date(2004, 5, 17), id="ordinary"),
        pytest.param(date(1990, 5, 17), 0, date(1990, 5, 17), id="zero-years"),
        pytest.param(date(1999, 12, 31), 1, date(2000, 12, 31), id="dec31"),
        pytest.param(date(2000, 2, 28), 1, date(2001, 2, 28), id="feb28-stays-feb28"),
        pytest.param(date(2000, 3, 1), 1, date(2001, 3, 1), id="mar1-stays-mar1"),
        pytest.param(date(2000, 2, 29), 0, date(2000, 2, 29), id="feb29-zero-years"),
        pytest.param(date(2000, 2, 29), 1, date(2001, 3, 1), id="feb29-common-2001->1mar"),
        pytest.param(date(2000, 2, 29), 4, date(2004, 2, 29), id="feb29-leap-2004->29feb"),
        pytest.param(date(2000, 2, 29), 14, date(2014, 3, 1), id="feb29-14th-2014->1mar"),
        pytest.param(date(2000, 2, 29), 25, date(2025, 3, 1), id="feb29-25th-2025->1mar"),
        pytest.param(date(2000, 2, 29), 40, date(2040, 2, 29), id="feb29-40th-2040->29feb"),
        pytest.param(date(1960, 2, 29), 40, date(2000, 2, 29), id="feb29-to-2000-leap-400"),
        pytest.param(date(2060, 2, 29), 40, date(2100, 3, 1), id="feb29-to-2100-common-century"),
    ],
)
def test_anniversary(born: date, years: int, expected: date) -> None:
    assert anniversary(born, years) == expected


# -- effective_state ----------------------------------------------------------------------------

EXPIRY = date(2030, 5, 16)


ACTIVE, EXPIRED = CardState.ACTIVE, CardState.EXPIRED
WITHHELD, REVOKED, SUPERSEDED = CardState.WITHHELD, CardState.REVOKED, CardState.SUPERSEDED


@pytest.mark.parametrize(
    ("state", "expiry", "today", "expected"),
    [
        pytest.param(ACTIVE, EXPIRY, date(2030, 5, 17), EXPIRED, id="active-day-after-expiry"),
        pytest.param(ACTIVE, EXPIRY, date(2041, 1, 1), EXPIRED, id="active-long-past-expiry"),
        pytest.param(ACTIVE, EXPIRY, date(2030, 5, 16), ACTIVE, id="active-on-expiry-day"),
        pytest.param(ACTIVE, EXPIRY, date(2030, 5, 15), ACTIVE, id="active-day-before-expiry"),
        pytest.param(ACTIVE, None, date(9999, 12, 31), ACTIVE, id="active-never-expires"),
        pytest.param(WITHHELD, EXPIRY, date(2030, 5, 17), WITHHELD, id="withheld-past-expiry"),
        pytest.param(REVOKED, EXPIRY, date(2030, 5, 17), REVOKED, id="revoked-past-expiry"),
        pytest.param(SUPERSEDED, EXPIRY, date(2030, 5, 17), SUPERSEDED, id="superseded-expired"),
        pytest.param(WITHHELD, None, date(2030, 5, 17), WITHHELD, id="withheld-never-expires"),
        pytest.param(REVOKED, EXPIRY, date(2020, 1, 1), REVOKED, id="revoked-before-expiry"),
        pytest.param(EXPIRED, EXPIRY, date(2030, 5, 17), EXPIRED, id="expired-stays-expired"),
    ],
)
def test_effective_state(
    state: CardState, expiry: date | None, today: date, expected: CardState
) -> None:
    assert effective_state(state, expiry, today) is expected


# -- an independent oracle: SPEC §4 brute-forced day by day ---------------------------------------
#
# Written from the rule's words, not from rules/cards.py: "cards are exchanged at ages 14, 25,
# 40 and 60. A card is valid until the day before the next milestone birthday; a card issued
# within the two years before a milestone is valid until the milestone after it; a card issued
# at 58 or later never expires." Ages are completed years, a birthday that does not exist in a
# year (29 February) being reached the day after 28 February. A partial date of birth gives
# the earliest expiry over every day the holder may have been born on, up to the issue date.


def _age_on(born: date, day: date) -> int:
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _oracle_expiry(born: date, issued: date) -> date | None:
    age = _age_on(born, issued)
    ahead = [m for m in (14, 25, 40, 60) if m > age]
    if age >= 58 or not ahead:
        return None
    target = ahead[1] if age >= ahead[0] - 2 else ahead[0]
    # Day by day to the milestone birthday, from the 1 January of its year (never later).
    day = max(issued, date(born.year + target, 1, 1))
    while _age_on(born, day) < target:
        day += timedelta(days=1)
    return day - timedelta(days=1)


def _oracle_partial_expiry(year: int, month: int | None, issued: date) -> date | None:
    first = date(year, month or 1, 1)
    last = date(year, month or 12, calendar.monthrange(year, month or 12)[1])
    candidates = []
    day = first
    while day <= min(last, issued):
        candidates.append(_oracle_expiry(day, issued))
        day += timedelta(days=1)
    finite = [e for e in candidates if e is not None]
    return min(finite) if finite else None


@settings(max_examples=300, deadline=None)
@given(born=st.dates(date(1900, 1, 1), date(2030, 12, 31)), after_days=st.integers(0, 75 * 366))
def test_card_expiry_equals_the_rule_brute_forced_day_by_day(born: date, after_days: int):
    issued = born + timedelta(days=after_days)
    assert card_expiry(born, issued) == _oracle_expiry(born, issued), (born, issued)


@pytest.mark.parametrize("born", [date(2004, 2, 29), date(1990, 1, 1), date(1990, 12, 31)])
def test_card_expiry_equals_the_rule_on_every_day_around_each_milestone(born: date):
    for years in (12, 14, 23, 25, 38, 40, 58, 60):
        pivot = date(born.year + years, born.month, min(born.day, 28))
        for offset in range(-3, 4):
            issued = pivot + timedelta(days=offset)
            assert card_expiry(born, issued) == _oracle_expiry(born, issued), (born, issued)


@settings(max_examples=60, deadline=None)
@given(
    year=st.integers(1900, 2030),
    month=st.one_of(st.none(), st.integers(1, 12)),
    issued_after_days=st.integers(0, 75 * 366),
)
def test_partial_date_expiry_equals_the_earliest_over_the_possible_birth_days(
    year: int, month: int | None, issued_after_days: int
):
    issued = date(year, month or 1, 1) + timedelta(days=issued_after_days)
    expected = _oracle_partial_expiry(year, month, issued)
    assert card_expiry(PartialDate(year, month), issued) == expected, (year, month, issued)


# -- found by mutation testing (issue 14): each of these was a surviving mutant ---------------


def test_card_states_are_the_proto_numbers():
    # The rules' enum is converted to and from the wire by value: a state renumbered here (or
    # two states sharing a number, which makes one an alias of the other) would answer another
    # state than the one stored.
    from registry.v1 import card_pb2

    wire = {
        name.removeprefix("CARD_STATE_"): number
        for name, number in card_pb2.CardState.items()
        if number != 0
    }
    assert {state.name: state.value for state in CardState} == wire
    assert len({state.value for state in CardState}) == len(CardState)


def test_a_full_date_of_birth_given_as_a_partial_date_is_that_one_day():
    # Issued on the 23rd birthday exactly: within two years of 25, so valid until 40. A day
    # later born (one day outside the date of birth) would give the 25th birthday: the
    # candidate days must stop at the date itself.
    born = PartialDate(2000, 5, 3)
    assert card_expiry(born, date(2023, 5, 3)) == date(2040, 5, 2)
    assert card_expiry(date(2000, 5, 3), date(2023, 5, 3)) == date(2040, 5, 2)
    assert card_expiry(date(2000, 5, 4), date(2023, 5, 3)) == date(2025, 5, 3)


def test_the_candidate_days_of_a_partial_date_end_on_its_last_day():
    # Issued on 31 May 2023: everyone born in May 2000 is past 23, so within two years of 25:
    # valid until 40, the earliest being 30 April 2040 (born 1 May). Someone born 1 June 2000
    # (outside the date of birth) would still be 22: 25th birthday, 31 May 2025.
    assert card_expiry(PartialDate(2000, 5), date(2023, 5, 31)) == date(2040, 4, 30)
