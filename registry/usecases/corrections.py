"""UpdateCitizen: corrections of records, and PIN re-establishment when they need one."""

from __future__ import annotations

import logging
from collections.abc import Callable

import asyncpg

from registry.db import citizens, idempotency
from registry.db.pool import Database
from registry.rules import pin as pins
from registry.rules.civil_registration import Violations
from registry.rules.errors import (
    Code,
    PreconditionViolation,
    RegistryError,
    failed_precondition,
    not_found,
    pin_cancelled,
)
from registry.rules.fingerprints import request_hash
from registry.rules.model import REFERENCE_PIN_FIELDS, Caller, Citizen, CitizenStatus
from registry.rules.updates import Update, apply, check_related, needs_new_pin
from registry.usecases.civil_registration import (
    MAX_TAKEN_NUMBERS,
    bucket_congested,
    bucket_full,
)

log = logging.getLogger(__name__)

UPDATE_CITIZEN = "/registry.v1.PopulationService/UpdateCitizen"


async def update_citizen(
    db: Database,
    caller: Caller,
    request_id: str,
    update: Update,
    render: Callable[[Citizen], bytes],
) -> tuple[idempotency.Answer, bool]:
    """Apply an update (re-establishing the PIN if needed); return (answer, replayed).

    `render` makes the answer kept with the idempotency key: a replay returns the record as
    this call left it, never as it is by then.
    """
    async with db.pool.acquire() as conn:

        async def work() -> Citizen:
            current = await citizens.get(conn, update.pin, for_update=True)
            if current is None:
                raise not_found(
                    "CITIZEN_NOT_FOUND", f"no citizen has PIN {update.pin}", pin=update.pin
                )
            if current.status == CitizenStatus.PIN_CANCELLED:
                raise pin_cancelled(
                    update.pin, current.replaced_by_pin, "update the record under the new PIN"
                )
            if current.version != update.expected_version:
                # The version is all the record this tells (SPEC §6 allows it on every answer).
                raise RegistryError(
                    Code.ABORTED,
                    "VERSION_MISMATCH",
                    f"the record is at version {current.version}, not {update.expected_version}: "
                    "it changed since you read it; read it again, reapply your change and send "
                    "it with a new request_id",
                    metadata={"version": str(current.version)},
                )
            changed = apply(current, update)
            v = Violations()
            check_related(changed, v)
            v.raise_if_any()
            await _check_references(conn, changed, update)
            if not needs_new_pin(current, changed):
                await citizens.keep_history(
                    conn, current.pin, update.fields, agency_id=caller.agency_id,
                    request_id=request_id,
                )  # fmt: skip
                return await citizens.update_fields(conn, current.pin, update.changes)
            return await _reestablish(db, conn, caller, request_id, current, changed, update)

        return await idempotency.run_once_answered(
            conn,
            agency_id=caller.agency_id,
            request_id=request_id,
            method=UPDATE_CITIZEN,
            request_hash=request_hash(UPDATE_CITIZEN, update),
            result_key=update.pin,
            work=work,
            render=render,
        )


async def _check_references(conn: asyncpg.Connection, changed: Citizen, update: Update) -> None:
    wanted = {
        f: getattr(changed, f)
        for f in REFERENCE_PIN_FIELDS
        if f in update.fields and getattr(changed, f)
    }
    if not wanted:
        return
    found = await citizens.get_many(conn, list(wanted.values()))
    missing = [
        PreconditionViolation(
            "RELATED_CITIZEN_NOT_FOUND", f"citizen.{f}", f"no citizen has PIN {p}"
        )
        for f, p in wanted.items()
        if p not in found
    ]
    if missing:
        raise failed_precondition(
            "RELATED_CITIZEN_NOT_FOUND",
            "; ".join(m.description for m in missing),
            missing,
        )


async def _reestablish(
    db: Database,
    conn: asyncpg.Connection,
    caller: Caller,
    request_id: str,
    current: Citizen,
    changed: Citizen,
    update: Update,
) -> Citizen:
    """Cancel the PIN and issue a new one for the corrected data (Circular 59/2021 art. 6)."""
    bucket = pins.bucket_for(
        changed.registration_province_code, changed.sex, changed.date_of_birth.year
    )
    for _ in range(MAX_TAKEN_NUMBERS):
        reserved = await db.ranges.take(bucket)
        if reserved is None:
            raise bucket_full(bucket)
        counter, key = reserved
        new_pin = pins.allocate(bucket, key, counter)
        if await citizens.get(conn, new_pin) is None:
            break
        log.warning("PIN number in bucket %s already held; drawing the next", bucket)
    else:
        raise bucket_congested(bucket)
    await citizens.keep_history(
        conn, current.pin, update.fields, agency_id=caller.agency_id,
        request_id=request_id, replaced_by_pin=new_pin,
    )  # fmt: skip
    record = await citizens.insert_reestablished(
        conn, new_pin, changed, old_pin=current.pin, agency_id=caller.agency_id
    )
    await citizens.cancel_pin(conn, current.pin, new_pin)
    log.info("PIN re-established in bucket %s", bucket)
    return record
