"""registry/db/idempotency.py against PostgreSQL, as the server's runtime role."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from registry.db import idempotency
from registry.db.idempotency import Answer, StoredRequest
from registry.rules.errors import Code, RegistryError
from tests.db.conftest import connected
from tests.db.records import request_id

HASH = b"\x07" * 32


def agency() -> str:
    return f"idem-{uuid.uuid4().hex[:10]}"


async def test_claim_then_lookup(rt, su):
    who, key = agency(), request_id()
    assert await idempotency.lookup(rt, who, key) is None
    assert await idempotency.claim(rt, who, key, "IssueCard", HASH, "S-1") is True
    assert await idempotency.lookup(rt, who, key) == StoredRequest("IssueCard", HASH, "S-1", None)
    # Taken: refused without an error, the first claim kept.
    assert await idempotency.claim(rt, who, key, "RevokeCard", b"\x00" * 32, "S-2") is False
    assert await idempotency.lookup(rt, who, key) == StoredRequest("IssueCard", HASH, "S-1", None)
    # The same request_id of another agency is another key.
    assert await idempotency.lookup(rt, agency(), key) is None
    assert await idempotency.lookup(rt, who, request_id()) is None
    rows = await su.fetch("SELECT * FROM idempotency_keys WHERE agency_id = $1", who)
    assert [(r["request_id"], r["result_key"]) for r in rows] == [(key, "S-1")]


async def test_a_concurrent_claim_waits_for_the_first_to_end(rt, runtime_dsn):
    async with connected(runtime_dsn) as other:
        for first_commits in (True, False):
            who, key = agency(), request_id()
            tx = rt.transaction()
            await tx.start()
            assert await idempotency.claim(rt, who, key, "M", HASH, "first")
            second = asyncio.create_task(idempotency.claim(other, who, key, "M", HASH, "second"))
            await asyncio.sleep(0.3)
            assert not second.done()  # blocked on the unique index
            await (tx.commit() if first_commits else tx.rollback())
            # Exactly one of them carries the request out.
            assert await asyncio.wait_for(second, 10) is (not first_commits)
            stored = await idempotency.lookup(rt, who, key)
            assert stored is not None
            assert stored.result_key == ("first" if first_commits else "second")


def test_check_replay_answers_the_same_request_and_refuses_another():
    stored = StoredRequest("UpdateCitizen", HASH, "012345678901")
    assert idempotency.check_replay(stored, "UpdateCitizen", HASH, "r1") == "012345678901"
    for method, digest in (("RegisterDeath", HASH), ("UpdateCitizen", b"\x08" * 32)):
        with pytest.raises(RegistryError) as reused:
            idempotency.check_replay(stored, method, digest, "r1")
        assert (reused.value.code, reused.value.reason) == (
            Code.ALREADY_EXISTS,
            "REQUEST_ID_REUSED",
        )
        assert reused.value.metadata == {"request_id": "r1", "original_method": "UpdateCitizen"}
        assert "'r1'" in reused.value.message and "(UpdateCitizen)" in reused.value.message


async def test_run_once_works_once_and_replays_from_the_result_key(rt):
    who, key = agency(), request_id()
    done: list[str] = []

    async def work() -> str:
        done.append("work")
        return "made"

    async def replay(result_key: str) -> str:
        return f"replayed {result_key}"

    args = {"agency_id": who, "request_id": key, "method": "M", "request_hash": HASH}
    first = await idempotency.run_once(rt, **args, result_key="K1", work=work, replay=replay)
    assert first == ("made", False)
    again = await idempotency.run_once(rt, **args, result_key="K2", work=work, replay=replay)
    assert again == ("replayed K1", True)
    assert done == ["work"]
    with pytest.raises(RegistryError) as reused:
        await idempotency.run_once(
            rt, **{**args, "method": "Other"}, result_key="K3", work=work, replay=replay
        )
    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert done == ["work"]


async def test_run_once_rolls_the_claim_back_when_the_work_fails(rt):
    who, key = agency(), request_id()

    async def refuse() -> str:
        await rt.execute(
            "INSERT INTO idempotency_keys (agency_id, request_id, method, request_hash, "
            "result_key) VALUES ($1, 'side effect', 'M', $2, 'x')",
            who,
            HASH,
        )
        raise RegistryError(Code.FAILED_PRECONDITION, "NOPE", "refused")

    async def work() -> str:
        return "made"

    async def replay(result_key: str) -> str:
        raise AssertionError("nothing to replay")

    args = {"agency_id": who, "request_id": key, "method": "M", "request_hash": HASH}
    with pytest.raises(RegistryError):
        await idempotency.run_once(rt, **args, result_key="K", work=refuse, replay=replay)
    assert await idempotency.lookup(rt, who, key) is None
    assert await idempotency.lookup(rt, who, "side effect") is None
    assert not rt.is_in_transaction()
    # Corrected and sent again under the same key: carried out.
    assert await idempotency.run_once(rt, **args, result_key="K", work=work, replay=replay) == (
        "made",
        False,
    )


async def test_run_once_answered_replays_the_kept_answer(rt, su):
    who, key = agency(), request_id()
    record = {"name": "before"}

    async def work() -> dict[str, str]:
        return dict(record)

    def render(result: dict[str, str]) -> bytes:
        return result["name"].encode()

    args = {"agency_id": who, "request_id": key, "method": "M", "request_hash": HASH}
    first = await idempotency.run_once_answered(
        rt, **args, result_key="P1", work=work, render=render
    )
    assert first == (Answer("P1", b"before"), False)
    assert (
        await su.fetchval(
            "SELECT answer FROM idempotency_keys WHERE agency_id = $1 AND request_id = $2", who, key
        )
        == b"before"
    )
    record["name"] = "after"  # the record changed since: the replay still says what was said
    again = await idempotency.run_once_answered(
        rt, **args, result_key="P2", work=work, render=render
    )
    assert again == (Answer("P1", b"before"), True)
    stored = await idempotency.lookup(rt, who, key)
    assert stored is not None and stored.answer == b"before"
    assert idempotency.replayed_answer(stored, "M", HASH, key) == Answer("P1", b"before")
    with pytest.raises(RegistryError):
        await idempotency.run_once_answered(
            rt, **{**args, "request_hash": b"\x09" * 32}, result_key="P", work=work, render=render
        )
