"""The oracle budgets (SPEC §6): how many misses an agency may get, and how often it may fail
to verify one citizen, shared exactly by every server process.

- The miss budget: NOT_FOUND answers of every lookup (GetCitizen, ListCards, ResolveLegacyId,
  verification) and NO_MATCH answers of verification, N a minute per agency (its
  `--miss-budget`, refilled continuously). A miss is answered only once the database granted
  it (one UPDATE of the agency's row), so with any number of processes and streams no more
  than the budget is answered; once spent, every lookup and verification of the agency is
  refused with RESOURCE_EXHAUSTED + RetryInfo until it refills.
- The failure budget: after 5 NO_MATCH answers about one citizen within 24 h, that agency's
  verifications of that citizen are refused (CITIZEN_FAILURE_LIMIT) until the oldest of them
  is 24 h old. A NO_MATCH is answered only once the database accepted it under the limit.

Cost: a MATCH (or a found record) costs no statement of its own: the verification query
reads the budget state along with the record (`registry.db.verification`); lookups other than
verification read it with one primary-key SELECT before they look. Misses cost one UPDATE per
call or per batch of a stream, NO_MATCH answers one upsert more. Measured in
docs/benchmarks.md ("Verification with the oracle budgets").

The writes go through the `counters` pool, whose connections commit asynchronously: the row
lock lasts microseconds instead of an fsync, so one agency's charges from several processes do
not queue behind each other's flushes. That is safe because an answer leaves only after its
audit entry commits synchronously, and that flush covers every earlier WAL record, the charge
included: a crash can lose a charge only for an answer that was never given.

Alerts: one log line on `registry.alerts` per episode, naming the agency and never the
citizen; the episode flag lives beside the budget, so one process reports it, not every one.
A process that saw a refusal remembers until when the agency is throttled and refuses its
further calls without asking the database (the database's wait can only be later, never
earlier, than what it said).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg

from registry.db import budgets as store
from registry.db import verification as verification_db
from registry.db.pool import Database
from registry.rules import limits
from registry.rules.errors import Code, RegistryError
from registry.rules.identity import Claim, Outcome, VerifyResult, verify
from registry.rules.model import Caller

alerts = logging.getLogger("registry.alerts")


@dataclass(frozen=True)
class Answer:
    """One verification as it may be answered: an outcome, or a refusal."""

    outcome: Outcome | None
    error: RegistryError | None

    @property
    def stops(self) -> bool:
        """The agency's miss budget is spent: this and every later item go unanswered."""
        return self.error is not None and self.error.reason == limits.MISS_BUDGET_EXHAUSTED


class Budgets:
    """The budget checks every lookup and verification path calls."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.monotonic):
        self._db = db
        self._clock = clock
        self._throttled_until: dict[str, float] = {}

    # -- the agency's miss budget -----------------------------------------------------------

    def _known_wait(self, agency_id: str) -> float:
        until = self._throttled_until.get(agency_id)
        if until is None:
            return 0.0
        wait = until - self._clock()
        if wait <= 0:
            del self._throttled_until[agency_id]
            return 0.0
        return wait

    async def _refuse(self, caller: Caller, wait_s: float, *, alert: bool | None) -> RegistryError:
        """Remember the throttle, report a new episode once, and return the refusal."""
        self._throttled_until[caller.agency_id] = self._clock() + wait_s
        if alert is None:
            alert = await store.mark_miss_alert(self._db.counters, caller.agency_id)
        if alert:
            budget = caller.miss_budget or limits.DEFAULT_MISS_BUDGET_PER_MIN
            alerts.warning(
                "agency %s spent its budget of %d NOT_FOUND/NO_MATCH answers per minute; "
                "its lookups and verifications are throttled (possible enumeration)",
                caller.agency_id,
                budget,
                extra={
                    "fields": {
                        "alert": limits.MISS_BUDGET_EXHAUSTED,
                        "agency": caller.agency_id,
                        "budget_per_min": budget,
                    }
                },
            )
        return limits.miss_budget_exhausted(caller.agency_id, caller.miss_budget, wait_s)

    async def check_agency(self, caller: Caller) -> None:
        """Refuse the agency's lookup while its miss budget is spent (one PK read)."""
        wait = self._known_wait(caller.agency_id)
        if wait <= 0:
            wait = await store.miss_wait(
                self._db.pool,
                caller.agency_id,
                limits.miss_interval_s(caller.miss_budget),
                limits.MISS_PERIOD_S,
            )
            if wait <= 0:
                return
            raise await self._refuse(caller, wait, alert=None)
        raise limits.miss_budget_exhausted(caller.agency_id, caller.miss_budget, wait)

    async def charge_misses(self, caller: Caller, misses: int) -> tuple[int, RegistryError | None]:
        """Take misses from the agency's budget: (how many were granted, the refusal of the
        rest or None). Only granted misses may be answered."""
        if misses <= 0:
            return 0, None
        charge = await store.charge_misses(
            self._db.counters,
            caller.agency_id,
            misses,
            limits.miss_interval_s(caller.miss_budget),
            limits.MISS_PERIOD_S,
        )
        if charge.granted == misses:
            return misses, None
        refusal = await self._refuse(caller, charge.retry_after_s, alert=charge.alert)
        return charge.granted, refusal

    @asynccontextmanager
    async def lookup(self, caller: Caller) -> AsyncIterator[None]:
        """Guard a lookup: refused while the budget is spent; a NOT_FOUND is charged, and
        answered only if granted."""
        await self.check_agency(caller)
        try:
            yield
        except RegistryError as error:
            if error.code is Code.NOT_FOUND:
                _, refusal = await self.charge_misses(caller, 1)
                if refusal is not None:
                    raise refusal from None
            raise

    # -- verification: both budgets ---------------------------------------------------------

    async def verify(self, caller: Caller, claims: Sequence[Claim], today: date) -> list[Answer]:
        """Verify claims in order, as a stream answers them: one query, and one charge per
        call only when there are misses.

        Item by item: once the agency's miss budget runs out at an item, that item and all
        later ones are refused (MISS_BUDGET: a stream ends there); an item about a citizen the
        agency failed on `CITIZEN_FAILURE_LIMIT` times within the window, counting earlier
        items of the same call, is refused on its own (CITIZEN_FAILURE_LIMIT).
        """
        known = self._known_wait(caller.agency_id)
        if known > 0:
            refusal = limits.miss_budget_exhausted(caller.agency_id, caller.miss_budget, known)
            return [Answer(None, refusal)] * len(claims)

        async def query(pool: asyncpg.Pool) -> verification_db.Found:
            async with pool.acquire() as conn:
                return await verification_db.records(
                    conn,
                    [(c.pin, c.card_serial) for c in claims],
                    caller.agency_id,
                    miss_interval_s=limits.miss_interval_s(caller.miss_budget),
                    miss_period_s=limits.MISS_PERIOD_S,
                    failure_window=limits.CITIZEN_FAILURE_WINDOW,
                )

        async def confirm(
            found: verification_db.Found, primary: asyncpg.Pool
        ) -> verification_db.Found:
            # A replica may lag (at most REGISTRY_REPLICA_MAX_LAG_S): anything short of a
            # MATCH is asked again of the primary, so a caller never misses its own write and
            # no failure is charged for a record the replica had not seen yet. The budgets'
            # writes, which make them exact, always go to the primary.
            for claim, record in zip(claims, found.records, strict=True):
                outcome = verify(
                    claim, record, today, diacritic_insensitive=caller.diacritic_insensitive
                )
                if outcome.result is not VerifyResult.MATCH:
                    return await query(primary)
            return found

        found = await self._db.read(query, confirm)
        if found.miss_wait_s > 0:
            refusal = await self._refuse(caller, found.miss_wait_s, alert=None)
            return [Answer(None, refusal)] * len(claims)
        # The database's clock; without a found record (None) no failure needs it.
        now = found.now or datetime.now(UTC)
        answers: list[Answer] = []
        failures = {c.pin: list(f) for c, f in zip(claims, found.failures, strict=True)}
        misses: list[int] = []  # the items whose answer spends the miss budget, in order
        blocked: set[str] = set()
        for claim, record in zip(claims, found.records, strict=True):
            outcome = verify(
                claim, record, today, diacritic_insensitive=caller.diacritic_insensitive
            )
            if outcome.result is not VerifyResult.NOT_FOUND:
                until = limits.citizen_blocked_until(failures[claim.pin])
                if until is not None:
                    blocked.add(claim.pin)
                    answers.append(Answer(None, _citizen_refusal(caller, until, now)))
                    continue
                if outcome.result is VerifyResult.NO_MATCH:
                    failures[claim.pin].append(now)
            if outcome.result is not VerifyResult.MATCH:
                misses.append(len(answers))
            answers.append(Answer(outcome, None))
        granted, spent = await self.charge_misses(caller, len(misses))
        if spent is not None:
            cutoff = misses[granted]
            answers[cutoff:] = [Answer(None, spent)] * (len(answers) - cutoff)
        await self._record_failures(caller, claims, answers, now)
        if blocked:
            await self._report_blocked(caller, blocked)
        return answers

    async def _record_failures(
        self, caller: Caller, claims: Sequence[Claim], answers: list[Answer], now: datetime
    ) -> None:
        """Record the NO_MATCH answers about to be given; refuse those another process's
        failures crowded out meanwhile."""
        failed = [
            i
            for i, a in enumerate(answers)
            if a.outcome is not None and a.outcome.result is VerifyResult.NO_MATCH
        ]
        if not failed:
            return
        accepted = await store.record_failures(
            self._db.counters,
            caller.agency_id,
            [claims[i].pin for i in failed],
            limits.CITIZEN_FAILURE_WINDOW,
            limits.CITIZEN_FAILURE_LIMIT,
        )
        crowded: set[str] = set()
        for i in failed:
            pin = claims[i].pin
            if accepted.get(pin, 0) > 0:
                accepted[pin] -= 1
            else:
                crowded.add(pin)
                until = now + limits.CITIZEN_FAILURE_WINDOW
                answers[i] = Answer(None, _citizen_refusal(caller, until, now))
        if crowded:
            await self._report_blocked(caller, crowded)

    async def _report_blocked(self, caller: Caller, pins: set[str]) -> None:
        new = await store.mark_failure_alerts(self._db.counters, caller.agency_id, sorted(pins))
        if new:
            # Names the agency and how many citizens, never which: alerts carry no PINs.
            alerts.warning(
                "agency %s reached the limit of %d NO_MATCH verifications of one citizen "
                "within 24 h for %d more citizen(s); it is refused their verification "
                "(possible guessing of personal data)",
                caller.agency_id,
                limits.CITIZEN_FAILURE_LIMIT,
                new,
                extra={
                    "fields": {
                        "alert": "CITIZEN_FAILURE_LIMIT",
                        "agency": caller.agency_id,
                        "citizens": new,
                    }
                },
            )


def _citizen_refusal(caller: Caller, until: datetime, now: datetime) -> RegistryError:
    return limits.citizen_failure_limit(caller.agency_id, max((until - now).total_seconds(), 1.0))
