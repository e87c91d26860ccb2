"""registry/usecases/budgets.py against PostgreSQL as the runtime role: the miss budget as a
process applies it (what it remembers of a throttled agency, on a clock the test controls),
its alerts, and verification under both budgets.

The budgets' SQL is tested in tests/db/test_budgets.py; the RPCs that spend them in
tests/grpc/test_oracle_budgets.py.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import date

import asyncpg
import pytest

from registry.db import budgets as store
from registry.db.pool import Database
from registry.db.replicas import Replicas
from registry.rules import limits
from registry.rules.dates import PartialDate
from registry.rules.errors import Code, RegistryError
from registry.rules.identity import Claim, VerifyResult
from registry.rules.model import Caller, Sex
from registry.usecases.budgets import Answer, Budgets
from tests.conftest import AgencyFactory
from tests.db.records import fresh_name, insert_citizen

ALERTS = "registry.alerts"


class Clock:
    """The process's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def caller(agency_id: str, miss_budget: int | None = None) -> Caller:
    return Caller(agency_id, frozenset(), frozenset(), "k1", miss_budget=miss_budget)


@pytest.fixture
def agency_id(make_agency: AgencyFactory) -> str:
    return make_agency().id


async def refill(su, agency_id: str) -> None:
    """Refill the agency's budget behind the processes' backs (as if a minute had passed)."""
    await su.execute("UPDATE agency_miss_budgets SET tat = 0 WHERE agency_id = $1", agency_id)


def exhausted(error: BaseException | None) -> RegistryError:
    assert isinstance(error, RegistryError), error
    assert (error.code, error.reason) == (Code.RESOURCE_EXHAUSTED, limits.MISS_BUDGET_EXHAUSTED)
    return error


async def test_charging_no_miss_grants_none_and_writes_nothing(database, su, agency_id):
    budgets = Budgets(database, Clock())
    for misses in (0, -1):
        assert await budgets.charge_misses(caller(agency_id), misses) == (0, None)
    rows = await su.fetchval(
        "SELECT count(*) FROM agency_miss_budgets WHERE agency_id = $1", agency_id
    )
    assert rows == 0


async def test_misses_within_the_budget_are_granted_and_lookups_stop_when_it_is_spent(
    database, agency_id
):
    budgets = Budgets(database, Clock())
    who = caller(agency_id, miss_budget=60)
    assert await budgets.charge_misses(who, 59) == (59, None)
    await budgets.check_agency(who)  # one miss left: lookups go on
    assert await budgets.charge_misses(who, 1) == (1, None)
    with pytest.raises(RegistryError) as refused:  # spent: the next miss would not fit
        await Budgets(database, Clock()).check_agency(who)
    exhausted(refused.value)


async def test_a_spent_budget_is_remembered_by_the_process_until_its_wait_is_over(
    database, su, agency_id
):
    clock = Clock()
    budgets = Budgets(database, clock)
    who = caller(agency_id, miss_budget=60)  # a miss frees up every second
    granted, refusal = await budgets.charge_misses(who, 61)
    assert granted == 60
    wait = exhausted(refusal).retry_after_s
    assert wait is not None and 0 < wait <= 1.0
    # The database is refilled, but this process remembers the throttle: it refuses without
    # asking, lookups and verifications alike, until the wait it was told is over.
    await refill(su, agency_id)
    with pytest.raises(RegistryError) as refused:
        await budgets.check_agency(who)
    assert exhausted(refused.value).retry_after_s == pytest.approx(wait)
    clock.now += wait - 0.5
    with pytest.raises(RegistryError) as refused:
        await budgets.check_agency(who)
    assert exhausted(refused.value).retry_after_s == pytest.approx(0.5)
    clock.now += 0.6  # the wait is over: the process asks the database again, which allows
    await budgets.check_agency(who)
    # Another process never saw the refusal: it asks the database every time.
    other = Budgets(database, Clock())
    await other.check_agency(who)


async def test_a_process_that_saw_no_refusal_asks_the_database_and_is_refused(database, agency_id):
    who = caller(agency_id, miss_budget=60)
    granted, _ = await Budgets(database, Clock()).charge_misses(who, 61)
    assert granted == 60
    with pytest.raises(RegistryError) as refused:
        await Budgets(database, Clock()).check_agency(who)  # wait under a second: still no
    wait = exhausted(refused.value).retry_after_s
    assert wait is not None and 0 < wait <= 1.0


async def test_a_lookup_not_found_is_charged_and_answered_only_if_granted(database, agency_id):
    budgets = Budgets(database, Clock())
    who = caller(agency_id, miss_budget=60)
    not_found = RegistryError(Code.NOT_FOUND, "CITIZEN_NOT_FOUND", "no citizen has this PIN")
    for _ in range(60):
        with pytest.raises(RegistryError) as answered:
            async with budgets.lookup(who):
                raise not_found
        assert answered.value is not_found
    with pytest.raises(RegistryError) as refused:
        async with budgets.lookup(who):
            raise not_found
    exhausted(refused.value)
    # A process that never saw the refusal is refused before it looks: the database says so.
    other = Budgets(database, Clock())
    with pytest.raises(RegistryError) as refused:
        async with other.lookup(who):
            pass  # refused before it looks
    exhausted(refused.value)


async def test_an_episode_is_alerted_once_naming_the_agency_and_its_budget(
    database, agency_id, caplog
):
    caplog.set_level(logging.WARNING, logger=ALERTS)
    who = caller(agency_id, miss_budget=60)
    await Budgets(database, Clock()).charge_misses(who, 61)
    await Budgets(database, Clock()).charge_misses(who, 5)  # another process, same episode
    with pytest.raises(RegistryError):
        await Budgets(database, Clock()).check_agency(who)
    alerts = [r for r in caplog.records if r.name == ALERTS]
    assert [r.getMessage() for r in alerts] == [
        f"agency {agency_id} spent its budget of 60 NOT_FOUND/NO_MATCH answers per minute; "
        "its lookups and verifications are throttled (possible enumeration)"
    ]
    assert alerts[0].fields == {  # type: ignore[attr-defined]
        "alert": limits.MISS_BUDGET_EXHAUSTED,
        "agency": agency_id,
        "budget_per_min": 60,
    }


async def test_the_alert_of_an_agency_without_a_budget_names_the_default(
    database, agency_id, caplog
):
    caplog.set_level(logging.WARNING, logger=ALERTS)
    granted, refusal = await Budgets(database, Clock()).charge_misses(caller(agency_id), 601)
    assert granted == limits.DEFAULT_MISS_BUDGET_PER_MIN == 600
    exhausted(refusal)
    [alert] = [r for r in caplog.records if r.name == ALERTS]
    assert f"budget of {limits.DEFAULT_MISS_BUDGET_PER_MIN} NOT_FOUND" in alert.getMessage()
    assert alert.fields["budget_per_min"] == 600  # type: ignore[attr-defined]


def test_an_answer_is_a_value_and_only_a_spent_miss_budget_stops_a_stream():
    answer = Answer(None, limits.miss_budget_exhausted("a", None, 1.0))
    assert answer.stops
    with pytest.raises(dataclasses.FrozenInstanceError):
        answer.error = None  # type: ignore[misc]
    assert not Answer(None, limits.citizen_failure_limit("a", 5.0)).stops
    assert not Answer(None, None).stops


# -- verification under both budgets --------------------------------------------------------

TODAY = date(2026, 1, 1)


async def citizen(su) -> Claim:
    """A citizen in the register, and a claim that matches them."""
    name = fresh_name()
    pin = await insert_citizen(su, full_name=name, birth_year=1980, birth_month=5, birth_day=17)
    return Claim(pin, name, PartialDate(1980, 5, 17), Sex.MALE, None, "")


async def test_a_spent_budget_refuses_even_a_true_claim(database, su, agency_id):
    true_claim = await citizen(su)
    who = caller(agency_id, miss_budget=60)
    budgets = Budgets(database, Clock())
    assert [a.outcome.result for a in await budgets.verify(who, [true_claim], TODAY)] == [
        VerifyResult.MATCH
    ]
    await budgets.charge_misses(who, 61)
    # A process that remembers the refusal, and one that learns it from the verification
    # query itself (a wait under a second): neither answers, not even a MATCH.
    for process in (budgets, Budgets(database, Clock())):
        [answer] = await process.verify(who, [true_claim], TODAY)
        assert answer.outcome is None and exhausted(answer.error)


async def test_a_remembered_refusal_holds_for_verification_though_the_database_refilled(
    database, su, agency_id
):
    true_claim = await citizen(su)
    who = caller(agency_id, miss_budget=60)
    clock = Clock()
    budgets = Budgets(database, clock)
    _, refusal = await budgets.charge_misses(who, 61)
    wait = exhausted(refusal).retry_after_s
    assert wait is not None
    await refill(su, agency_id)
    clock.now += wait - 0.5
    answers = await budgets.verify(who, [true_claim, true_claim], TODAY)
    assert [exhausted(a.error).retry_after_s for a in answers] == pytest.approx([0.5, 0.5])
    clock.now += 0.6
    assert [a.outcome.result for a in await budgets.verify(who, [true_claim], TODAY)] == [
        VerifyResult.MATCH
    ]


@pytest.fixture
async def lagging_replica(database, private_db) -> AsyncIterator[Replicas]:
    """A healthy-looking replica that has seen none of the session's citizens: a migrated
    database of its own (tests/db/conftest.py) standing in for a standby behind the primary."""
    replicas = Replicas((private_db.runtime,), max_lag_s=10)
    replica = replicas.replicas[0]
    replica.pool = await asyncpg.create_pool(private_db.runtime, min_size=1, max_size=2)
    replica.healthy = True
    database.replicas = replicas
    try:
        yield replicas
    finally:
        database.replicas = None
        await replica.pool.close()


async def test_what_a_lagging_replica_does_not_match_is_asked_of_the_primary(
    database, su, agency_id, lagging_replica
):
    true_claim = await citizen(su)
    who = caller(agency_id, miss_budget=60)
    [answer] = await Budgets(database, Clock()).verify(who, [true_claim], TODAY)
    assert answer.outcome is not None and answer.outcome.result is VerifyResult.MATCH
    assert lagging_replica.replicas[0].reads == 1  # the replica was asked first
    # Nothing was charged for the replica's NOT_FOUND: the budget is untouched.
    rows = await su.fetchval(
        "SELECT count(*) FROM agency_miss_budgets WHERE agency_id = $1", agency_id
    )
    assert rows == 0


# -- the per-citizen failure budget ----------------------------------------------------------


def wrong(claim: Claim) -> Claim:
    """The same citizen with a wrong date of birth: NO_MATCH."""
    return dataclasses.replace(claim, date_of_birth=PartialDate(1981, 5, 17))


async def fail(database: Database, agency_id: str, pin: str, times: int) -> None:
    """Record NO_MATCH answers about the citizen as another process would."""
    accepted = await store.record_failures(
        database.pool,
        agency_id,
        [pin] * times,
        limits.CITIZEN_FAILURE_WINDOW,
        limits.CITIZEN_FAILURE_LIMIT,
    )
    assert accepted == {pin: times}


def refused_for_the_citizen(answer: Answer) -> float:
    assert answer.outcome is None and isinstance(answer.error, RegistryError)
    assert answer.error.reason == "CITIZEN_FAILURE_LIMIT"
    assert answer.error.retry_after_s is not None
    return answer.error.retry_after_s


async def test_failures_crowded_out_by_another_process_are_refused_and_alerted_once(
    database, su, agency_id, caplog
):
    caplog.set_level(logging.WARNING, logger=ALERTS)
    claim = await citizen(su)
    await fail(database, agency_id, claim.pin, 3)
    read = database.read

    async def read_then_another_process_fails(*args, **kwargs):
        # Between this call's query (3 failures seen) and its recording, another process
        # answers one more NO_MATCH about the same citizen.
        found = await read(*args, **kwargs)
        await fail(database, agency_id, claim.pin, 1)
        return found

    database.read = read_then_another_process_fails
    who = caller(agency_id, miss_budget=1000)
    first, second = await Budgets(database, Clock()).verify(
        who, [wrong(claim), wrong(claim)], TODAY
    )
    database.read = read
    # This call counted 3 + 2 = 5, within the limit; the database holds room for one only.
    assert first.error is None and first.outcome is not None
    assert first.outcome.result is VerifyResult.NO_MATCH
    wait = refused_for_the_citizen(second)
    window = limits.CITIZEN_FAILURE_WINDOW.total_seconds()
    assert window - 60 < wait <= window  # blocked for the whole window from now
    stored = await su.fetchval(
        "SELECT cardinality(failures) FROM verification_failures WHERE agency_id = $1 AND pin = $2",
        agency_id,
        claim.pin,
    )
    assert stored == limits.CITIZEN_FAILURE_LIMIT
    # The next call sees the citizen blocked; the episode was alerted once, naming the
    # agency and how many citizens, never which.
    [again] = await Budgets(database, Clock()).verify(who, [claim], TODAY)
    refused_for_the_citizen(again)
    alerts = [r for r in caplog.records if r.name == ALERTS]
    assert [r.getMessage() for r in alerts] == [
        f"agency {agency_id} reached the limit of 5 NO_MATCH verifications of one citizen "
        "within 24 h for 1 more citizen(s); it is refused their verification "
        "(possible guessing of personal data)"
    ]
    assert alerts[0].fields == {  # type: ignore[attr-defined]
        "alert": "CITIZEN_FAILURE_LIMIT",
        "agency": agency_id,
        "citizens": 1,
    }
    assert claim.pin not in alerts[0].getMessage()


async def test_a_block_about_to_end_is_refused_for_at_least_a_second(database, su, agency_id):
    claim = await citizen(su)
    await fail(database, agency_id, claim.pin, limits.CITIZEN_FAILURE_LIMIT)
    # The oldest of the five failures turns 24 h old in 0.95 s (a lookup takes milliseconds).
    await su.execute(
        "UPDATE verification_failures SET failures = array_fill("
        "now() - $3::interval + interval '950 milliseconds', ARRAY[5]) "
        "WHERE agency_id = $1 AND pin = $2",
        agency_id,
        claim.pin,
        limits.CITIZEN_FAILURE_WINDOW,
    )
    who = caller(agency_id, miss_budget=1000)
    [answer] = await Budgets(database, Clock()).verify(who, [claim], TODAY)
    assert refused_for_the_citizen(answer) == 1.0
