"""Use cases of the civil-status systems: register a birth (issue a PIN), register a death,
annul a death registered in error.

Each takes `render`, the API layer's rendering of the resulting record as the caller may see
it: it is kept with the idempotency key in the transaction that makes the change, and is what
the call and every replay of it answer (`idempotency.Answer`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import asyncpg

from registry.db import citizens, idempotency
from registry.db.pool import Database
from registry.rules import pin as pins
from registry.rules.civil_registration import Checked
from registry.rules.errors import (
    Code,
    PreconditionViolation,
    QuotaViolation,
    RegistryError,
    failed_precondition,
    not_found,
    pin_cancelled,
)
from registry.rules.fingerprints import request_hash
from registry.rules.model import (
    BirthRegistration,
    Caller,
    Citizen,
    CitizenStatus,
    DeathAnnulment,
    DeathRegistration,
)
from registry.runtime import clock

log = logging.getLogger(__name__)

REGISTER_BIRTH = "RegisterBirth"
REGISTER_DEATH = "RegisterDeath"
ANNUL_DEATH_REGISTRATION = "AnnulDeathRegistration"
Render = Callable[[Citizen], bytes]
# A number already held by an imported record is skipped; the permutation makes such hits
# independent, so even a bucket that is half taken needs more than 16 draws about once
# in 65,000 births.
MAX_TAKEN_NUMBERS = 16


def born(pin: str, birth: BirthRegistration, at: datetime) -> Citizen:
    """Return the record a birth registration creates (what `citizens.insert_birth` stores)."""
    return Citizen(
        pin=pin,
        full_name=birth.full_name,
        date_of_birth=birth.date_of_birth,
        sex=birth.sex,
        registration_province_code=birth.registration_province_code,
        place_of_birth=birth.place_of_birth,
        hometown=birth.hometown,
        ethnicity=birth.ethnicity,
        nationality=birth.nationality,
        father_pin=birth.father_pin,
        mother_pin=birth.mother_pin,
        status=CitizenStatus.ALIVE,
        version=1,
        create_time=at,
        update_time=at,
    )


async def _check_parents(conn: asyncpg.Connection, birth: BirthRegistration) -> None:
    given = {"father_pin": birth.father_pin, "mother_pin": birth.mother_pin}
    wanted = [p for p in given.values() if p is not None]
    if not wanted:
        return
    found = await citizens.get_many(conn, wanted)
    violations: list[PreconditionViolation] = []
    for field, parent_pin in given.items():
        if parent_pin is None:
            continue
        parent = found.get(parent_pin)
        if parent is None:
            violations.append(
                PreconditionViolation("PARENT_NOT_FOUND", field, f"no citizen has PIN {parent_pin}")
            )
        elif parent.status == CitizenStatus.PIN_CANCELLED:
            violations.append(
                PreconditionViolation(
                    "PARENT_PIN_CANCELLED",
                    field,
                    f"PIN {parent_pin} was cancelled and replaced by {parent.replaced_by_pin}; "
                    "use the new PIN",
                )
            )
        elif parent.date_of_birth.earliest() >= birth.date_of_birth.latest():
            violations.append(
                PreconditionViolation(
                    "PARENT_BORN_AFTER_CHILD",
                    field,
                    f"the citizen with PIN {parent_pin} was born on or after the child",
                )
            )
    if violations:
        raise failed_precondition(
            violations[0].type,
            "the parents' records do not allow this registration: "
            + "; ".join(v.description for v in violations),
            violations,
        )


async def register_birth(
    db: Database,
    caller: Caller,
    request_id: str,
    checked: Checked[BirthRegistration],
    render: Render,
    reached: Callable[[str], None] = lambda pin: None,
) -> tuple[idempotency.Answer, bool]:
    """Create the citizen and issue the PIN; return (answer, replayed).

    `reached` hears each PIN before the statement that may commit it: a caller cancelled
    while that statement runs may have created the citizen, and its audit entry must name it.
    """
    birth = checked.value
    digest = request_hash(REGISTER_BIRTH, birth)
    async with db.pool.acquire() as conn:
        # The key is looked up before anything is reserved: a retry is answered from its
        # stored result even when the request would now fail (a province code closed, a
        # parent's PIN cancelled since), and a reused key is refused without drawing a number.
        stored = await idempotency.lookup(conn, caller.agency_id, request_id)
        if stored is not None:
            return idempotency.replayed_answer(stored, REGISTER_BIRTH, digest, request_id), True
        checked.check()
        if birth.registered_on is None:
            birth = replace(birth, registered_on=clock.today())
        bucket = pins.bucket_for(
            birth.registration_province_code, birth.sex, birth.date_of_birth.year
        )
        await _check_parents(conn, birth)
        for _ in range(MAX_TAKEN_NUMBERS):
            reserved = await db.ranges.take(bucket)
            if reserved is None:
                raise bucket_full(bucket)
            counter, key = reserved
            pin = pins.allocate(bucket, key, counter)
            reached(pin)
            # The answer is rendered before the insert so that it is kept by the same single
            # statement (no transaction round trips per birth): the record is known in full
            # once its PIN and time are chosen.
            at = clock.now()
            answer = render(born(pin, birth, at))
            try:
                await citizens.insert_birth(
                    conn,
                    pin,
                    birth,
                    at=at,
                    agency_id=caller.agency_id,
                    request_id=request_id,
                    method=REGISTER_BIRTH,
                    request_hash=digest,
                    answer=answer,
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "idempotency_keys_pkey":
                    # The same key was carried out by a concurrent call: answer as a replay.
                    stored = await idempotency.lookup(conn, caller.agency_id, request_id)
                    assert stored is not None
                    replayed = idempotency.replayed_answer(
                        stored, REGISTER_BIRTH, digest, request_id
                    )
                    return replayed, True
                if exc.constraint_name == "citizens_pkey":
                    log.warning("PIN number in bucket %s already held; drawing the next", bucket)
                    continue
                raise
            except asyncpg.ForeignKeyViolationError:
                # A parent vanished between the check and the insert: cannot happen while
                # citizens are never deleted; re-check to answer precisely.
                await _check_parents(conn, birth)
                raise
            return idempotency.Answer(pin, answer), False
    raise bucket_congested(bucket)


def bucket_congested(bucket: pins.Bucket) -> RegistryError:
    """No free number after MAX_TAKEN_NUMBERS draws (numbers held by imported records)."""
    return RegistryError(
        Code.RESOURCE_EXHAUSTED,
        "PIN_BUCKET_CONGESTED",
        f"could not find a free PIN in bucket {bucket} after {MAX_TAKEN_NUMBERS} draws",
        quota_violations=(QuotaViolation(f"pin-bucket:{bucket}", "too many numbers taken"),),
    )


def bucket_full(bucket: pins.Bucket) -> RegistryError:
    """Every number of the bucket was issued: births (and corrections) there are refused."""
    return RegistryError(
        Code.RESOURCE_EXHAUSTED,
        "PIN_BUCKET_EXHAUSTED",
        f"all {pins.BUCKET_SIZE:,} PINs of bucket {bucket} (province {bucket.province_code}, "
        f"birth year {bucket.birth_year}, {bucket.sex.name.lower()}) have been issued; "
        "an operator must open a new province code for this registration",
        quota_violations=(
            QuotaViolation(f"pin-bucket:{bucket}", "no unissued numbers left in this bucket"),
        ),
        metadata={"bucket": str(bucket)},
    )


async def register_death(
    db: Database, caller: Caller, request_id: str, death: DeathRegistration, render: Render
) -> tuple[idempotency.Answer, bool]:
    """Mark a living citizen deceased; return (answer, replayed)."""
    async with db.pool.acquire() as conn:

        async def work() -> Citizen:
            citizen = await citizens.get(conn, death.pin, for_update=True)
            _check_can_die(citizen, death)
            return await citizens.mark_deceased(conn, death)

        return await idempotency.run_once_answered(
            conn,
            agency_id=caller.agency_id,
            request_id=request_id,
            method=REGISTER_DEATH,
            request_hash=request_hash(REGISTER_DEATH, death),
            result_key=death.pin,
            work=work,
            render=render,
        )


def _check_can_die(citizen: Citizen | None, death: DeathRegistration) -> None:
    if citizen is None:
        raise not_found("CITIZEN_NOT_FOUND", f"no citizen has PIN {death.pin}", pin=death.pin)
    if citizen.status == CitizenStatus.DECEASED:
        raise failed_precondition(
            "CITIZEN_DECEASED",
            f"the death of the citizen with PIN {death.pin} is already registered",
            [
                PreconditionViolation(
                    "CITIZEN_DECEASED", death.pin, "already registered as deceased"
                )
            ],
        )
    if citizen.status == CitizenStatus.PIN_CANCELLED:
        raise pin_cancelled(
            death.pin, citizen.replaced_by_pin, "register the death against the new PIN"
        )
    if death.date_of_death.latest() < citizen.date_of_birth.earliest():
        # The rule, never the register's date of birth (SPEC §6: errors repeat no stored data).
        raise failed_precondition(
            "DEATH_BEFORE_BIRTH",
            "date_of_death is before the citizen's recorded date of birth",
            [PreconditionViolation("DEATH_BEFORE_BIRTH", "date_of_death", "before the birth")],
        )


async def annul_death_registration(
    db: Database, caller: Caller, request_id: str, annulment: DeathAnnulment, render: Render
) -> tuple[idempotency.Answer, bool]:
    """Reverse a death registered in error: ALIVE again, date of death cleared, the deceased
    version kept in the history with the decision; return (answer, replayed).

    The citizen's cards are left as they are: a card withheld or superseded stays so, and an
    ACTIVE one verifies again because its holder is alive.
    """
    async with db.pool.acquire() as conn:

        async def work() -> Citizen:
            citizen = await citizens.get(conn, annulment.pin, for_update=True)
            _check_can_annul(citizen, annulment)
            await citizens.keep_history(
                conn,
                annulment.pin,
                ("status", "date_of_death"),
                agency_id=caller.agency_id,
                request_id=request_id,
                reason=annulment.reason,
                decision_reference=annulment.decision_reference,
            )
            return await citizens.annul_death(conn, annulment.pin)

        return await idempotency.run_once_answered(
            conn,
            agency_id=caller.agency_id,
            request_id=request_id,
            method=ANNUL_DEATH_REGISTRATION,
            request_hash=request_hash(ANNUL_DEATH_REGISTRATION, annulment),
            result_key=annulment.pin,
            work=work,
            render=render,
        )


def _check_can_annul(citizen: Citizen | None, annulment: DeathAnnulment) -> None:
    pin = annulment.pin
    if citizen is None:
        raise not_found("CITIZEN_NOT_FOUND", f"no citizen has PIN {pin}", pin=pin)
    if citizen.status == CitizenStatus.PIN_CANCELLED:
        raise pin_cancelled(
            pin, citizen.replaced_by_pin, "annul the death registration under the new PIN"
        )
    if citizen.status != CitizenStatus.DECEASED:
        raise failed_precondition(
            "CITIZEN_NOT_DECEASED",
            f"the citizen with PIN {pin} is not registered as deceased: there is no death "
            "registration to annul",
            [PreconditionViolation("CITIZEN_NOT_DECEASED", pin, "no death is registered")],
        )
