"""The client package's methods for the remaining RPCs: card states, old numbers, keys,
corrections and the access history (sync and async)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import jwt
import pytest

from registry.rules.model import CITIZEN_FIELDS
from tests.conftest import private_pem


@pytest.fixture(scope="module")
def rc(registry_client: Any) -> Any:
    return registry_client


@pytest.fixture(scope="module")
def who(make_agency):
    return make_agency(fields=tuple(CITIZEN_FIELDS))


def test_remaining_rpcs_through_the_client(rc, server, who):
    pem = private_pem(who.private_key)
    with rc.RegistryClient(server.target, who.id, who.kid, pem, purpose="kiểm tra") as client:
        citizen = client.register_birth(
            "Hoàng Văn Nam", rc.Sex.MALE, dt.date(1988, 3, 9), "001",
            place_of_birth="Hà Nội", hometown="Hà Nội", ethnicity="Kinh",
            registration_authority="UBND", registration_number=uuid.uuid4().hex[:8],
        )  # fmt: skip
        serial = "C" + uuid.uuid4().hex[:11].upper()
        client.issue_card(citizen.pin, serial, dt.date(2025, 1, 2), "Cục Cảnh sát")
        assert client.withhold_card(serial, "checks").state == rc.CardState.WITHHELD
        assert client.release_card(serial, "cleared").state == rc.CardState.ACTIVE
        assert client.revoke_card(serial, "lost").state == rc.CardState.REVOKED
        legacy = str(uuid.uuid4().int)[:9]
        assert legacy in client.link_legacy_id(citizen.pin, legacy).legacy_ids
        assert client.resolve_legacy_id(legacy) == citizen.pin
        assert json.loads(client.get_signing_keys())["keys"]
        current = client.get_citizen(citizen.pin)
        moved = client.update_citizen(
            citizen.pin, current.version, current_address="5 Tràng Tiền, Hà Nội"
        )
        assert (moved.pin, moved.current_address) == (citizen.pin, "5 Tràng Tiền, Hà Nội")
        with pytest.raises(rc.Aborted):
            client.update_citizen(citizen.pin, current.version, religion="x")
        reestablished = client.update_citizen(citizen.pin, moved.version, sex=rc.Sex.FEMALE)
        assert reestablished.pin != citizen.pin and reestablished.sex == rc.Sex.FEMALE
        page = client.list_access_log(citizen.pin, page_size=3)
        assert len(page.entries) == 3 and page.next_page_token
        assert page.entries[0]["agency_id"] == who.id
        assert page.entries[0]["purpose"] == "kiểm tra"

    # The session server signs every 10 s; sign its head now rather than wait.
    signed = server.call(server.app.checkpointer.checkpoint()) or server.call(
        server.app.checkpointer.latest()
    )
    with rc.RegistryClient(server.target, who.id, who.kid, pem) as client:
        checkpoint = client.get_audit_checkpoint()
    assert checkpoint.sequence >= signed.seq
    assert (checkpoint.time.tzinfo, len(checkpoint.head_hash)) == (dt.UTC, 32)
    claims = jwt.decode(checkpoint.checkpoint, options={"verify_signature": False})
    assert (claims["seq"], claims["head_hash"]) == (
        checkpoint.sequence,
        checkpoint.head_hash.hex(),
    )

    async def go() -> tuple[str, Any]:
        async with rc.AsyncRegistryClient(server.target, who.id, who.kid, pem) as client:
            return (
                await client.resolve_legacy_id(legacy),
                await client.get_audit_checkpoint(),
            )

    pin, latest = asyncio.run(go())
    assert pin == reestablished.pin  # follows the re-establishment
    assert latest.sequence >= checkpoint.sequence


def test_annul_death_registration_through_the_client(rc, server, who, db):
    pem = private_pem(who.private_key)
    with rc.RegistryClient(server.target, who.id, who.kid, pem) as client:
        citizen = client.register_birth(
            "Đỗ Thị Hạnh", rc.Sex.FEMALE, dt.date(1979, 4, 30), "001",
            place_of_birth="Hà Nội", hometown="Hà Nội", ethnicity="Kinh",
            registration_authority="UBND", registration_number=uuid.uuid4().hex[:8],
        )  # fmt: skip
        dead = client.register_death(
            citizen.pin, "2024-02-03", registration_authority="UBND", registration_number="9"
        )
        rid = str(uuid.uuid4())
        alive = client.annul_death_registration(
            citizen.pin, reason="wrong PIN", decision_reference="QĐ 5/2026", request_id=rid
        )
        assert (alive.status, alive.date_of_death) == (rc.CitizenStatus.ALIVE, None)
        assert (alive.version, alive.replayed) == (dead.version + 1, False)
        again = client.annul_death_registration(
            citizen.pin, reason="wrong PIN", decision_reference="QĐ 5/2026", request_id=rid
        )
        assert again.replayed is True and again.version == alive.version
        with pytest.raises(rc.FailedPrecondition) as info:
            client.annul_death_registration(citizen.pin, reason="x", decision_reference="y")
        assert info.value.reason == "CITIZEN_NOT_DECEASED"

    async def go() -> Any:
        async with rc.AsyncRegistryClient(server.target, who.id, who.kid, pem) as client:
            await client.register_death(
                citizen.pin, "2024-02-04", registration_authority="UBND", registration_number="10"
            )
            return await client.annul_death_registration(
                citizen.pin, reason="again in error", decision_reference="QĐ 6/2026"
            )

    assert asyncio.run(go()).status == rc.CitizenStatus.ALIVE
    row = db.fetch("SELECT status, death_year FROM citizens WHERE pin = $1", citizen.pin)[0]
    assert (row["status"], row["death_year"]) == (1, None)


def test_import_citizens_through_the_client(rc, server, who):
    pem = private_pem(who.private_key)
    family = "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:8]).capitalize()
    records = [
        (f"r{i}", {"full_name": f"{family} Văn {name}", "date_of_birth": dt.date(1970, 1, 1 + i),
                   "sex": rc.Sex.MALE, "registration_province_code": "001"})
        for i, name in enumerate(["An", "Bình"])
    ] + [("bad", {"full_name": "", "sex": rc.Sex.MALE})]  # fmt: skip
    with rc.RegistryClient(server.target, who.id, who.kid, pem) as client:
        summary = client.import_citizens(records)
        assert (summary.received, summary.created, summary.rejected) == (3, 2, 1)
        assert summary.rejects[0][0] == "bad"

    async def again() -> Any:
        async with rc.AsyncRegistryClient(server.target, who.id, who.kid, pem) as client:
            return await client.import_citizens(records)

    rerun = asyncio.run(again())
    assert (rerun.created, rerun.duplicates, rerun.rejected) == (0, 2, 1)
