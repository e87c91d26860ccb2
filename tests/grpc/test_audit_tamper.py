"""The audit log (SPEC §7) against tampering, through real channels and the real database.

- Tamper detection end to end: calls through a server write entries to a private database
  (never the shared session database, whose chain other tests verify); `registry audit
  verify` accepts it, then the database superuser edits, deletes, swaps or truncates entries
  behind the triggers' back, each on a fresh copy, and verify names the first broken entry.
- Append-only for the server's own role: the triggers refuse every change of the log and
  any backwards move of its head.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import grpc
import pytest

from registry.config import Settings
from registry.rules.audit import GENESIS, Entry, link
from registry.v1 import audit_service_pb2 as pb
from registry.v1 import (
    audit_service_pb2_grpc,
    card_service_pb2_grpc,
    civil_registration_service_pb2_grpc,
    identity_service_pb2_grpc,
)
from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import identity_service_pb2 as id_pb
from tests.conftest import (
    ServerThread,
    make_agency_factory,
    run,
    server_settings,
    wait_serving,
)
from tests.grpc.audit_log import (
    DISABLE,
    FEMALE,
    LAST,
    MALE,
    REPLICA,
    TRIGGER_REFUSAL,
    database_dsn,
    private_database,
    registry_cli,
    verify_chain,
)
from tests.grpc.cards import issue, person
from tests.helpers import birth_request

# -- tamper detection on a private database -----------------------------------------------------


def seed_through_a_server(private: str, settings: Settings) -> None:
    """Make calls through a server on the private database so that it holds entries."""
    agency = make_agency_factory(private)(miss_budget=1_000_000)
    server = ServerThread(settings, private).start()
    try:
        wait_serving(server.target)
        with grpc.insecure_channel(server.target) as channel:
            civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(channel)
            cards = card_service_pb2_grpc.CardServiceStub(channel)
            identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
            audit = audit_service_pb2_grpc.AuditServiceStub(channel)
            md = agency.metadata(purpose="seeding the private chain")
            mother = person(civil, agency, full_name="Trần Thị Mẹ", sex=FEMALE)
            child = civil.RegisterBirth(birth_request(mother_pin=mother.pin), metadata=md)
            pin = child.citizen.pin
            issue(cards, agency, mother.pin)
            identity.VerifyIdentity(id_pb.VerifyIdentityRequest(pin=pin, sex=MALE), metadata=md)
            identity.GetCitizen(id_pb.GetCitizenRequest(pin=pin), metadata=md)
            cards.ListCards(card_pb.ListCardsRequest(pin=mother.pin), metadata=md)
            audit.ListAccessLog(pb.ListAccessLogRequest(pin=pin), metadata=md)
            identity.VerifyIdentity(id_pb.VerifyIdentityRequest(pin=pin, sex=MALE), metadata=md)
    finally:
        server.stop()


class Seeded:
    """The private database a server wrote a chain to."""

    def __init__(self, name: str, dsn: str, rows: list[asyncpg.Record], settings: Settings):
        self.name = name
        self.dsn = dsn
        self.settings = settings
        """The seeding server's settings: its signing keys and checkpoint file."""
        self.rows = rows
        self.hashes = [GENESIS] + [r["hash"] for r in rows]
        """hashes[k] is entry k's stored hash; hashes[0] the genesis hash."""
        self.n = len(rows)


@pytest.fixture(scope="module")
def seeded(dsn: str) -> Iterator[Seeded]:
    with private_database(dsn) as name:
        private = database_dsn(dsn, name)
        settings = server_settings()
        seed_through_a_server(private, settings)

        async def read() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(private)
            try:
                rows = await conn.fetch("SELECT * FROM audit_log ORDER BY seq")
                head = await conn.fetchrow("SELECT seq, hash FROM audit_head")
            finally:
                await conn.close()
            assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
            assert (head["seq"], head["hash"]) == (len(rows), rows[-1]["hash"])
            return list(rows)

        rows = run(read())
        assert len(rows) >= 8, "the seeding calls should have written 8 entries or more"
        yield Seeded(name, private, rows, settings)


def forged_3(row: asyncpg.Record) -> Entry:
    """Entry 3 with another purpose."""
    return Entry(
        row["time"], row["agency_id"], row["method"], tuple(row["pins"]), row["outcome"],
        "forged purpose", row["request_id"],
    )  # fmt: skip


async def forge_entry_3(conn: asyncpg.Connection, seeded: Seeded) -> None:
    """Edit entry 3 and store the hash the edited entry would have: a careful forger."""
    forged = forged_3(seeded.rows[2])
    await conn.execute(REPLICA)
    await conn.execute(
        "UPDATE audit_log SET purpose = $1, hash = $2 WHERE seq = 3",
        forged.purpose,
        link(seeded.hashes[2], 3, forged),
    )


Tamper = list[str] | Callable[[asyncpg.Connection, Seeded], Awaitable[None]]
TAMPERING: dict[str, tuple[Tamper, Callable[[int], int]]] = {
    # case: (what the superuser does, with n entries -> the entry verify must name)
    "purpose-edited": (
        [DISABLE, "UPDATE audit_log SET purpose = 'nothing to see' WHERE seq = 3"],
        lambda n: 3,
    ),
    "first-entry-agency-edited": (
        [REPLICA, "UPDATE audit_log SET agency_id = 'someone-else' WHERE seq = 1"],
        lambda n: 1,
    ),
    "time-and-pins-edited": (
        [
            REPLICA,
            "UPDATE audit_log SET time = time - interval '1 day' WHERE seq = 6",
            "UPDATE audit_log SET pins = pins[2:] WHERE seq = 2",
        ],
        lambda n: 2,
    ),
    "outcome-of-last-edited": (
        [DISABLE, f"UPDATE audit_log SET outcome = 'NOT_FOUND' WHERE seq = {LAST}"],
        lambda n: n,
    ),
    "middle-deleted": ([REPLICA, "DELETE FROM audit_log WHERE seq = 4"], lambda n: 4),
    "seq-swapped": (
        [
            DISABLE,
            "UPDATE audit_log SET seq = 1000000 WHERE seq = 2",
            "UPDATE audit_log SET seq = 2 WHERE seq = 5",
            "UPDATE audit_log SET seq = 5 WHERE seq = 1000000",
        ],
        lambda n: 2,
    ),
    "last-two-deleted": (
        [DISABLE, f"DELETE FROM audit_log WHERE seq >= {LAST} - 1"],
        lambda n: n - 1,
    ),
    "head-altered": (
        [
            "ALTER TABLE audit_head DISABLE TRIGGER USER",
            "UPDATE audit_head SET hash = sha256(hash)",
        ],
        lambda n: n + 1,
    ),
    # Re-hashing the edited entry does not help: the next entry no longer chains to it.
    "edited-and-rehashed": (forge_entry_3, lambda n: 4),
}


async def restore(conn: asyncpg.Connection, seeded: Seeded) -> None:
    """Put the seeded chain back as it was, triggers enabled."""
    async with conn.transaction():
        await conn.execute(REPLICA)
        await conn.execute("DELETE FROM audit_log")
        columns = list(seeded.rows[0].keys())
        await conn.copy_records_to_table(
            "audit_log", records=[tuple(r.values()) for r in seeded.rows], columns=columns
        )
        await conn.execute("UPDATE audit_head SET seq = $1, hash = $2", seeded.n, seeded.hashes[-1])
        await conn.execute("RESET session_replication_role")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
        await conn.execute("ALTER TABLE audit_head ENABLE TRIGGER USER")
    assert list(await conn.fetch("SELECT * FROM audit_log ORDER BY seq")) == seeded.rows
    assert tuple(await conn.fetchrow("SELECT seq, hash FROM audit_head")) == (
        seeded.n,
        seeded.hashes[-1],
    )


@pytest.fixture(scope="module")
def verified(seeded) -> dict[str, tuple[int, str, str]]:
    """`registry audit verify` after each case's tampering, the seeded chain restored after
    each: (exit code, stdout, stderr) by case; "untouched" is verified last, after every
    restoration."""

    async def tamper(how: Tamper) -> None:
        conn = await asyncpg.connect(seeded.dsn)
        try:
            if callable(how):
                await how(conn, seeded)
            else:
                for statement in how:
                    await conn.execute(statement)
        finally:
            await conn.close()

    async def put_back() -> None:
        conn = await asyncpg.connect(seeded.dsn)
        try:
            await restore(conn, seeded)
        finally:
            await conn.close()

    results: dict[str, tuple[int, str, str]] = {}
    for case, (how, _) in TAMPERING.items():
        run(tamper(how))
        try:
            result = registry_cli("audit", "verify", dsn=seeded.dsn, settings=seeded.settings)
        finally:
            run(put_back())
        results[case] = (result.returncode, result.stdout, result.stderr)
    result = registry_cli("audit", "verify", dsn=seeded.dsn, settings=seeded.settings)
    results["untouched"] = (result.returncode, result.stdout, result.stderr)
    return results


def test_the_triggers_are_back_after_the_tampering(seeded, verified):
    error = run(_refused(seeded.dsn, "DELETE FROM audit_log WHERE seq = 1"))
    assert isinstance(error, TRIGGER_REFUSAL), error


def test_verify_accepts_the_chain_a_server_wrote(seeded):
    n = seeded.n
    result = verify_chain(seeded.dsn, seeded.settings)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        f"audit log intact: {n} entries, head entry {n}, hash {seeded.hashes[n].hex()}",
        "  keep the head hash: a later verify must show this entry with this hash",
    ]
    # The server signed its head when it stopped (the table and its file hold that checkpoint).
    assert lines[2].startswith("  1 signed checkpoint(s) hold (1 in the table, 1 in "), lines
    assert re.search(
        rf"the latest: checkpoint at sequence {n} \(signed \d{{4}}-\d\d-\d\dT[\d:]{{8}}Z\)$",
        lines[2],
    ), lines


def test_verify_accepts_the_restored_chain(seeded, verified):
    code, stdout, stderr = verified["untouched"]
    assert code == 0, stdout + stderr
    assert stdout.startswith(f"audit log intact: {seeded.n} entries, head entry {seeded.n}, ")


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_names_the_first_broken_entry(seeded, verified, case):
    n = seeded.n
    at = TAMPERING[case][1](n)
    code, stdout, stderr = verified[case]
    assert "Traceback" not in stderr, stderr
    assert code == 1, stdout + stderr
    lines = stdout.splitlines()
    assert lines[0].startswith(f"audit log BROKEN at entry {at}: "), stdout
    good = min(at - 1, n)
    last_good = seeded.hashes[good]
    if case == "edited-and-rehashed":
        last_good = link(seeded.hashes[2], 3, forged_3(seeded.rows[2]))
    assert lines[1].strip() == (
        f"{good} entries before it are intact (last good entry {good}, hash {last_good.hex()})"
    )


# -- append-only for the server's own role ------------------------------------------------------


async def _refused(dsn: str, statement: str, *args: Any) -> asyncpg.PostgresError | None:
    """Run a statement in a transaction that is always rolled back; return its error."""
    conn = await asyncpg.connect(dsn)
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            # The head's "names an appended entry" check is deferred to commit; this
            # transaction never commits, so make every check fire at the statement.
            await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            await conn.execute(statement, *args)
        except asyncpg.PostgresError as exc:
            return exc
        finally:
            await transaction.rollback()
        return None
    finally:
        await conn.close()


@pytest.fixture
def last_entry(db, civil, agency) -> tuple[int, bytes]:
    """The session chain's head after a call made sure it has a few entries."""
    for _ in range(2):
        civil.RegisterBirth(birth_request(), metadata=agency.metadata())
    row = db.fetch("SELECT seq, hash FROM audit_head")[0]
    assert row["seq"] >= 2
    return row["seq"], row["hash"]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET purpose = 'edited' WHERE seq = $1",
        "UPDATE audit_log SET outcome = outcome WHERE seq = $1",
        "DELETE FROM audit_log WHERE seq = $1",
        "DELETE FROM audit_log WHERE seq <= $1",
    ],
)
def test_the_log_refuses_update_and_delete(db, last_entry, statement):
    seq, stored = last_entry
    before = db.fetch("SELECT * FROM audit_log WHERE seq = $1", seq)
    error = run(_refused(db.dsn, statement, seq))
    assert isinstance(error, TRIGGER_REFUSAL), error
    assert "append-only" in str(error)
    assert db.fetch("SELECT * FROM audit_log WHERE seq = $1", seq) == before
    assert before[0]["hash"] == stored


@pytest.mark.parametrize("table", ["audit_log", "audit_head"])
def test_truncate_is_refused(db, last_entry, table):
    error = run(_refused(db.dsn, f"TRUNCATE {table}"))
    assert isinstance(error, TRIGGER_REFUSAL), error
    assert int(db.fetchval("SELECT count(*) FROM audit_log")) >= last_entry[0]


def test_the_head_cannot_move_backwards_stay_or_be_deleted(db, last_entry):
    seq, _ = last_entry
    previous = db.fetchval("SELECT hash FROM audit_log WHERE seq = $1", seq - 1)
    cases = [
        ("UPDATE audit_head SET seq = $1, hash = $2", (seq - 1, previous)),
        ("UPDATE audit_head SET seq = 0, hash = $1", (GENESIS,)),
        ("UPDATE audit_head SET seq = seq", ()),
        # Forward, but to an entry that does not exist (or with another hash).
        ("UPDATE audit_head SET seq = seq + 1000000", ()),
        ("UPDATE audit_head SET seq = $1, hash = $2", (seq, bytes(32))),
        ("DELETE FROM audit_head", ()),
    ]
    for statement, args in cases:
        error = run(_refused(db.dsn, statement, *args))
        assert isinstance(error, TRIGGER_REFUSAL), (statement, error)
    assert db.fetchval("SELECT count(*) FROM audit_head") == 1
    assert db.fetchval("SELECT seq FROM audit_head") >= seq


def test_there_is_only_one_head(db, last_entry):
    for value in ("true", "false"):
        error = run(
            _refused(
                db.dsn, f"INSERT INTO audit_head (id, seq, hash) VALUES ({value}, 0, $1)", GENESIS
            )
        )
        assert isinstance(error, asyncpg.IntegrityConstraintViolationError), (value, error)
