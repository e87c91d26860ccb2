"""registry/db/verification.py against PostgreSQL, as the server's runtime role."""

from __future__ import annotations

import secrets
from datetime import date, timedelta

import pytest

from registry.db import verification
from registry.rules.cards import CardState
from registry.rules.dates import PartialDate
from registry.rules.identity import Record
from registry.rules.model import CitizenStatus, Sex
from tests.conftest import AgencyFactory
from tests.db.records import fresh_pin, insert_citizen

INTERVAL, PERIOD, WINDOW = 10.0, 600.0, timedelta(hours=1)


@pytest.fixture
def agency_id(make_agency: AgencyFactory) -> str:
    return make_agency().id


@pytest.fixture
def other_agency_id(make_agency: AgencyFactory) -> str:
    return make_agency().id


async def card(su, pin: str, state: CardState, expiry: date | None) -> str:
    serial = f"V-{secrets.token_hex(6).upper()}"
    await su.execute(
        "INSERT INTO cards (serial, pin, kind, state, issue_date, expiry_date, "
        "issuing_authority, issued_by) VALUES ($1, $2, 1, $3, '2020-01-01', $4, 'C06', 't')",
        serial, pin, int(state), expiry,
    )  # fmt: skip
    return serial


async def records(conn, claims, agency_id: str) -> verification.Found:
    return await verification.records(
        conn, claims, agency_id,
        miss_interval_s=INTERVAL, miss_period_s=PERIOD, failure_window=WINDOW,
    )  # fmt: skip


async def test_one_claim_reads_the_record_and_the_presented_card(rt, su, agency_id):
    pin = await insert_citizen(
        su, full_name="Phạm Thị Hoa", sex=2, birth_year=1961, birth_month=None, birth_day=None,
        status=2, death_year=2020,
    )  # fmt: skip
    serial = await card(su, pin, CardState.WITHHELD, date(2031, 5, 1))
    found = await records(rt, [(pin, serial)], agency_id)
    assert found.records == [
        Record(
            "Phạm Thị Hoa", PartialDate(1961), Sex.FEMALE, CitizenStatus.DECEASED,
            CardState.WITHHELD, date(2031, 5, 1),
        )
    ]  # fmt: skip
    assert (found.failures, found.miss_wait_s) == ([()], 0.0)
    assert found.now is not None

    without = await records(rt, [(pin, None)], agency_id)
    assert without.records[0] is not None
    assert (without.records[0].card_state, without.records[0].card_expiry) == (None, None)
    # Someone else's card says nothing about this citizen.
    theirs = await card(su, await insert_citizen(su), CardState.ACTIVE, None)
    other = await records(rt, [(pin, theirs)], agency_id)
    assert other.records[0] is not None and other.records[0].card_state is None


async def test_one_unknown_pin_is_no_record_and_no_budget_state(rt, agency_id):
    assert await records(rt, [(fresh_pin(), None)], agency_id) == verification.Found(
        [None], [()], 0.0, None
    )


async def test_many_claims_come_back_in_order_with_the_budgets(rt, su, agency_id, other_agency_id):
    a = await insert_citizen(su, birth_month=2, birth_day=None)
    b = await insert_citizen(su, sex=2)
    serial = await card(su, a, CardState.ACTIVE, None)
    await su.execute(
        "INSERT INTO verification_failures (agency_id, pin, failures) VALUES "
        "($1, $2, ARRAY[now() - interval '10 minutes', now() - interval '2 hours', "
        "now() - interval '20 minutes']), ($3, $4, ARRAY[now()])",
        agency_id, a, other_agency_id, b,
    )  # fmt: skip
    await su.execute(
        "INSERT INTO agency_miss_budgets (agency_id, tat) "
        "VALUES ($1, extract(epoch FROM now()) + 700)",
        agency_id,
    )
    missing = fresh_pin()
    found = await records(rt, [(b, None), (missing, None), (a, serial), (a, None)], agency_id)
    rec_b, rec_missing, rec_a_card, rec_a = found.records
    assert rec_missing is None
    assert rec_b is not None and rec_b.sex is Sex.FEMALE
    assert rec_a_card is not None and rec_a_card.card_state is CardState.ACTIVE
    assert rec_a is not None and rec_a.card_state is None
    assert rec_a.date_of_birth == PartialDate(1980, 2)
    stored = await su.fetchval(
        "SELECT failures FROM verification_failures WHERE agency_id = $1 AND pin = $2",
        agency_id,
        a,
    )
    recent = tuple(sorted(t for t in stored if t > found.now - WINDOW))
    assert len(recent) == 2  # the two-hour-old failure is out of the window
    # b's failure belongs to another agency: not this one's.
    assert found.failures == [(), (), recent, recent]
    assert 105 < found.miss_wait_s <= 110  # tat + interval - period - now
    assert found.now is not None
