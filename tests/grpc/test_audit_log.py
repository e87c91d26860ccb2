"""The audit log (SPEC §7) through real channels and the real database.

- Tamper detection end to end: calls through a server write entries to a private database
  (never the shared session database, whose chain other tests verify); `registry audit
  verify` accepts it, then the database superuser edits, deletes, swaps or truncates entries
  behind the triggers' back, each on a fresh copy, and verify names the first broken entry.
- Append-only for the server's own role: the triggers refuse every change of the log and
  any backwards move of its head.
- AuditService.ListAccessLog: a citizen's history, paging, validation, scope.
- What writes entries: every RPC that touches a citizen, refusals included, and the entry is
  in the table when the call answers (durable before the answer); what must not: calls that
  are unauthenticated, rate limited, name no well-formed PIN, or touch no citizen.
- Group commit: concurrent calls share transactions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from registry.config import Settings
from registry.db.migrate import migrate
from registry.rules.audit import GENESIS, Entry, link
from registry.v1 import audit_service_pb2 as pb
from registry.v1 import (
    audit_service_pb2_grpc,
    card_service_pb2_grpc,
    citizen_pb2,
    civil_registration_service_pb2_grpc,
    identity_service_pb2_grpc,
)
from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import identity_service_pb2 as id_pb
from tests.conftest import (
    ServerThread,
    make_agency_factory,
    new_private_key,
    run,
    server_settings,
    wait_serving,
)
from tests.conftest import TestAgency as Agency
from tests.grpc.cards import issue, issue_request, legacy, new_rid, person
from tests.helpers import birth_request, call_error, death_request

REGISTRY = Path(sys.executable).parent / "registry"
V1 = "/registry.v1."
MALE = citizen_pb2.SEX_MALE
FEMALE = citizen_pb2.SEX_FEMALE
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
TRIGGER_REFUSAL = asyncpg.exceptions.InsufficientPrivilegeError


# -- helpers ------------------------------------------------------------------------------------


def unique_unknown_pin() -> str:
    """A well-formed PIN no citizen holds and no other test names (province 998 is unused)."""
    return "998" + str(uuid.uuid4().int)[:9]


def head_seq(db: Any) -> int:
    return int(db.fetchval("SELECT seq FROM audit_head"))


def entries_by(db: Any, agency: Agency, after: int) -> list[dict[str, Any]]:
    """The audit entries an agency's calls wrote after position `after`, in chain order."""
    rows = db.fetch(
        "SELECT seq, time, agency_id, method, pins, outcome, purpose, request_id "
        "FROM audit_log WHERE seq > $1 AND agency_id = $2 ORDER BY seq",
        after,
        agency.id,
    )
    return [dict(r) for r in rows]


def naming(db: Any, pin: str, after: int) -> list[dict[str, Any]]:
    """The audit entries naming a PIN written after position `after`."""
    rows = db.fetch(
        "SELECT seq, agency_id, method, pins, outcome FROM audit_log "
        "WHERE seq > $1 AND pins @> ARRAY[$2::text] ORDER BY seq",
        after,
        pin,
    )
    return [dict(r) for r in rows]


def assert_entry(
    row: dict[str, Any],
    agency: Agency,
    method: str,
    pins: list[str],
    *,
    outcome: str = "OK",
    purpose: str = "",
    request_id: str = "",
    window: tuple[float, float] | None = None,
) -> None:
    assert row["agency_id"] == agency.id
    assert row["method"] == V1 + method
    assert sorted(row["pins"]) == sorted(pins)
    assert row["outcome"] == outcome
    assert row["purpose"] == purpose
    assert row["request_id"] == request_id
    if window is not None:
        # The entry's time is when the call was made.
        assert window[0] - 0.001 <= row["time"].timestamp() <= window[1] + 0.001


class Calls:
    """An agency's calls, each followed by a direct read of the audit table."""

    def __init__(self, db: Any, agency: Agency, purpose: str):
        self.db = db
        self.agency = agency
        self.purpose = purpose
        self.md = agency.metadata(purpose=purpose)
        self.before = head_seq(db)
        self.window = (0.0, 0.0)

    def __call__(self, fn: Callable[..., Any], request: Any) -> Any:
        self.before = head_seq(self.db)
        started = time.time()
        try:
            return fn(request, metadata=self.md)
        finally:
            self.window = (started, time.time())

    def fails(self, fn: Callable[..., Any], request: Any) -> Any:
        self.before = head_seq(self.db)
        started = time.time()
        try:
            return call_error(fn, request, metadata=self.md)
        finally:
            self.window = (started, time.time())

    def written(self) -> list[dict[str, Any]]:
        """The entries written by the last call (read as soon as it answered)."""
        return entries_by(self.db, self.agency, self.before)

    def one(self, method: str, pins: list[str], **expected: Any) -> dict[str, Any]:
        written = self.written()
        assert len(written) == 1, written
        expected.setdefault("purpose", self.purpose)
        assert_entry(written[0], self.agency, method, pins, window=self.window, **expected)
        return written[0]


def history(audit: Any, agency: Agency, pin: str, **kw: Any) -> pb.ListAccessLogResponse:
    request = pb.ListAccessLogRequest(pin=pin, **kw)
    return audit.ListAccessLog(request, metadata=agency.metadata(purpose="citizen portal"))


def registry_cli(
    *args: str, dsn: str, settings: Settings | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `registry` command on dsn; with `settings`, with the signing keys and data
    directory (audit checkpoint file) of the server that ran with them."""
    env = dict(os.environ, REGISTRY_DATABASE_URL=dsn)
    if settings is not None:
        env.update(
            REGISTRY_DATA_DIR=str(settings.data_dir),
            REGISTRY_SIGNING_KEY_DIR=str(settings.signing_keys_path),
        )
    return subprocess.run(
        [str(REGISTRY), *args], capture_output=True, text=True, env=env, timeout=60
    )


def verify_chain(dsn: str, settings: Settings | None = None) -> subprocess.CompletedProcess[str]:
    result = registry_cli("audit", "verify", dsn=dsn, settings=settings)
    assert "Traceback" not in result.stderr, result.stderr
    return result


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def execute(dsn: str, *statements: str) -> None:
    run(_execute(dsn, *statements))


@pytest.fixture(scope="module")
def audit(channel: grpc.Channel) -> audit_service_pb2_grpc.AuditServiceStub:
    return audit_service_pb2_grpc.AuditServiceStub(channel)


@pytest.fixture(scope="module")
def auditor(make_agency: Callable[..., Agency]) -> Agency:
    return make_agency(scopes=("audit:read",))


# -- tamper detection on a private database -----------------------------------------------------


def database_dsn(dsn: str, name: str) -> str:
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


@contextlib.contextmanager
def private_database(dsn: str) -> Iterator[str]:
    """A database of its own in the test cluster, migrated; yields its name."""
    name = f"audit_{uuid.uuid4().hex[:10]}"
    execute(dsn, f'CREATE DATABASE "{name}"')
    try:

        async def go() -> None:
            conn = await asyncpg.connect(database_dsn(dsn, name))
            try:
                await migrate(conn)
            finally:
                await conn.close()

        run(go())
        yield name
    finally:
        execute(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


DISABLE = "ALTER TABLE audit_log DISABLE TRIGGER USER"
REPLICA = "SET session_replication_role = replica"
LAST = "(SELECT max(seq) FROM audit_log)"
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


# -- ListAccessLog ------------------------------------------------------------------------------


def test_a_citizens_history_lists_every_agency_newest_first(
    civil, cards, identity, audit, db, make_agency, auditor
):
    registrar = make_agency(scopes=("birth:register",))
    reader = make_agency(scopes=("citizen:read",), fields=("full_name",))
    bank = make_agency(scopes=("identity:verify",), miss_budget=1000)
    station = make_agency(scopes=("card:read",))
    windows = []

    def timed(fn: Callable[[], Any]) -> Any:
        started = time.time()
        try:
            return fn()
        finally:
            windows.append((started, time.time()))

    request = birth_request()
    pin = timed(
        lambda: civil.RegisterBirth(request, metadata=registrar.metadata(purpose="birth"))
    ).citizen.pin
    timed(
        lambda: identity.GetCitizen(
            id_pb.GetCitizenRequest(pin=pin), metadata=reader.metadata(purpose="tax file")
        )
    )
    timed(
        lambda: identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pin, full_name=request.full_name),
            metadata=bank.metadata(purpose="account opening"),
        )
    )
    timed(
        lambda: cards.ListCards(
            card_pb.ListCardsRequest(pin=pin), metadata=station.metadata(purpose="counter")
        )
    )
    mask = field_mask_pb2.FieldMask(paths=["religion"])
    denied = timed(
        lambda: call_error(
            identity.GetCitizen,
            id_pb.GetCitizenRequest(pin=pin, read_mask=mask),
            metadata=reader.metadata(purpose="curiosity"),
        )
    )
    assert denied.code == DENIED

    first = history(audit, auditor, pin)
    assert first.next_page_token == ""
    expected = [
        (reader, "IdentityService/GetCitizen", "curiosity", "PERMISSION_DENIED"),
        (station, "CardService/ListCards", "counter", "OK"),
        (bank, "IdentityService/VerifyIdentity", "account opening", "OK"),
        (reader, "IdentityService/GetCitizen", "tax file", "OK"),
        (registrar, "CivilRegistrationService/RegisterBirth", "birth", "OK"),
    ]
    got = [(e.agency_id, e.agency_name, e.method, e.purpose, e.outcome) for e in first.entries]
    assert got == [
        (a.id, f"Test agency {a.id}", V1 + method, purpose, outcome)
        for a, method, purpose, outcome in expected
    ]
    times = [e.time.ToDatetime(tzinfo=UTC).timestamp() for e in first.entries]
    for when, (started, ended) in zip(times, reversed(windows), strict=True):
        assert started - 0.001 <= when <= ended + 0.001

    # The reading itself is recorded: a second reading sees the first, on top.
    second = history(audit, auditor, pin)
    assert len(second.entries) == len(first.entries) + 1
    top = second.entries[0]
    assert (top.agency_id, top.agency_name, top.method, top.purpose, top.outcome) == (
        auditor.id,
        f"Test agency {auditor.id}",
        V1 + "AuditService/ListAccessLog",
        "citizen portal",
        "OK",
    )
    assert list(second.entries[1:]) == list(first.entries)


@pytest.fixture(scope="module")
def known_history(civil, identity, make_agency) -> tuple[str, Agency]:
    """A citizen with 7 entries: a birth and 6 verifications."""
    agency = make_agency(miss_budget=1000)
    pin = person(civil, agency).pin
    for i in range(6):
        identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pin, sex=MALE),
            metadata=agency.metadata(purpose=f"check {i}"),
        )
    return pin, agency


def stored_history(db: Any, pin: str) -> list[tuple[Any, ...]]:
    rows = db.fetch(
        "SELECT time, agency_id, method, purpose, outcome FROM audit_log "
        "WHERE pins @> ARRAY[$1::text] ORDER BY seq DESC",
        pin,
    )
    return [(r["time"], r["agency_id"], r["method"], r["purpose"], r["outcome"]) for r in rows]


def as_rows(entries: Any) -> list[tuple[Any, ...]]:
    return [
        (e.time.ToDatetime(tzinfo=UTC), e.agency_id, e.method, e.purpose, e.outcome)
        for e in entries
    ]


def test_paging_walks_every_entry_exactly_once(audit, db, auditor, known_history):
    pin, _ = known_history
    expected = stored_history(db, pin)
    assert len(expected) >= 7
    pages = []
    token = ""
    while True:
        page = history(audit, auditor, pin, page_size=2, page_token=token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
        assert len(pages) <= len(expected), "paging does not end"
    walked = [row for page in pages for row in as_rows(page.entries)]
    assert walked == expected
    assert all(len(page.entries) == 2 for page in pages[:-1])
    assert 1 <= len(pages[-1].entries) <= 2
    assert len(pages) == (len(expected) + 1) // 2


def test_a_page_holding_exactly_the_rest_has_no_next_token(audit, db, auditor, known_history):
    pin, _ = known_history
    expected = stored_history(db, pin)
    page = history(audit, auditor, pin, page_size=len(expected))
    assert as_rows(page.entries) == expected
    assert page.next_page_token == ""
    shorter = history(audit, auditor, pin, page_size=len(expected) - 1)
    assert len(shorter.entries) == len(expected) - 1
    assert shorter.next_page_token != ""


@pytest.fixture(scope="module")
def crowded_citizen(civil, identity, make_agency) -> str:
    """A citizen with 1,002 entries: a birth and 1,001 verifications over one stream."""
    bank = make_agency(scopes=("identity:verify", "birth:register"), miss_budget=1000)
    pin = person(civil, bank).pin
    items = [
        id_pb.VerifyIdentityRequest(pin=pin, sex=MALE, correlation_id=str(i)) for i in range(1001)
    ]
    answers = batch(identity)(items, metadata=bank.metadata(purpose="campaign"))
    assert len(answers) == 1001
    return pin


@pytest.mark.parametrize("size", [1001, 5000, 2**31 - 1])
def test_a_page_size_above_the_maximum_is_capped(audit, auditor, crowded_citizen, size):
    page = history(audit, auditor, crowded_citizen, page_size=size)
    assert len(page.entries) == 1000
    assert page.next_page_token != ""
    rest = history(audit, auditor, crowded_citizen, page_size=size, page_token=page.next_page_token)
    assert len(rest.entries) >= 2
    assert rest.next_page_token == ""


def test_page_size_0_is_the_default_of_50(audit, auditor, crowded_citizen):
    page = history(audit, auditor, crowded_citizen, page_size=0)
    assert len(page.entries) == 50
    assert page.next_page_token != ""
    again = history(audit, auditor, crowded_citizen, page_token=page.next_page_token)
    assert len(again.entries) == 50
    assert again.entries[0].time.ToDatetime() <= page.entries[-1].time.ToDatetime()


def bad_request(err: Any, field: str) -> None:
    assert err.code == INVALID, err
    assert err.bad_fields == [field], err


@pytest.mark.parametrize("size", [-1, -(2**31)])
def test_a_negative_page_size_is_invalid(audit, auditor, known_history, size):
    err = call_error(history, audit, auditor, known_history[0], page_size=size)
    bad_request(err, "page_size")


def token_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


GARBAGE_TOKENS = {
    "not-base64": lambda pin: "this is not a token!",
    "base64-of-text": lambda pin: token_of("hello world"),
    "wrong-version": lambda pin: token_of(f"v2:{pin}:5"),
    "position-zero": lambda pin: token_of(f"v1:{pin}:0"),
    "position-negative": lambda pin: token_of(f"v1:{pin}:-3"),
    "position-not-a-number": lambda pin: token_of(f"v1:{pin}:five"),
    "position-beyond-bigint": lambda pin: token_of(f"v1:{pin}:{2**64}"),
    "extra-part": lambda pin: token_of(f"v1:{pin}:5:6"),
    "non-ascii": lambda pin: "dg€x",
}


@pytest.mark.parametrize("kind", list(GARBAGE_TOKENS))
def test_a_garbage_page_token_is_invalid(audit, auditor, known_history, kind):
    pin = known_history[0]
    err = call_error(history, audit, auditor, pin, page_token=GARBAGE_TOKENS[kind](pin))
    bad_request(err, "page_token")


def test_a_page_token_of_another_pin_is_invalid(audit, auditor, known_history, crowded_citizen):
    token = history(audit, auditor, crowded_citizen, page_size=1).next_page_token
    assert token
    err = call_error(history, audit, auditor, known_history[0], page_token=token)
    bad_request(err, "page_token")


@pytest.mark.parametrize("pin", ["", "12345", "0012000000012", "00120000000x", "٠٠١٢٠٠٠٠٠٠٠١"])
def test_a_malformed_pin_is_invalid(audit, auditor, pin):
    err = call_error(history, audit, auditor, pin)
    bad_request(err, "pin")


def test_an_unknown_pin_has_an_empty_history(audit, auditor):
    page = history(audit, auditor, unique_unknown_pin())
    assert list(page.entries) == []
    assert page.next_page_token == ""


def test_listing_needs_audit_read(audit, make_agency, known_history):
    everything_else = make_agency(scopes=("citizen:read", "identity:verify", "card:read"))
    err = call_error(history, audit, everything_else, known_history[0])
    assert (err.code, err.reason) == (DENIED, "SCOPE_MISSING")
    assert err.metadata.get("required_scope") == "audit:read"


# -- what writes entries ------------------------------------------------------------------------


@pytest.fixture
def calls(db, make_agency) -> Callable[..., Calls]:
    def make(purpose: str = "audit coverage", **kw: Any) -> Calls:
        kw.setdefault("miss_budget", 1000)
        return Calls(db, make_agency(**kw), purpose)

    return make


def test_register_birth_records_the_child_and_the_parents(civil, agency, calls):
    father = person(civil, agency, full_name="Ngô Văn Cha", sex=MALE)
    mother = person(civil, agency, full_name="Đặng Thị Mẹ", sex=FEMALE)
    c = calls("birth registration")
    request = birth_request(father_pin=father.pin, mother_pin=mother.pin)
    child = c(civil.RegisterBirth, request).citizen
    c.one(
        "CivilRegistrationService/RegisterBirth",
        [child.pin, father.pin, mother.pin],
        request_id=request.request_id,
    )
    # A replay is a call too.
    assert c(civil.RegisterBirth, request).replayed
    c.one(
        "CivilRegistrationService/RegisterBirth",
        [child.pin, father.pin, mother.pin],
        request_id=request.request_id,
    )


def test_a_refused_birth_naming_a_parent_records_the_parent(civil, calls):
    c = calls()
    unknown = unique_unknown_pin()
    request = birth_request(mother_pin=unknown)
    err = c.fails(civil.RegisterBirth, request)
    c.one(
        "CivilRegistrationService/RegisterBirth",
        [unknown],
        outcome=err.code.name,
        request_id=request.request_id,
    )


def test_register_death(civil, agency, calls):
    pin = person(civil, agency).pin
    c = calls("death registration")
    request = death_request(pin)
    c(civil.RegisterDeath, request)
    c.one("CivilRegistrationService/RegisterDeath", [pin], request_id=request.request_id)


def test_issue_card_and_card_state_changes_record_the_holder(civil, cards, agency, calls):
    pin = person(civil, agency).pin
    c = calls("card station")
    issued = issue_request(pin)
    serial = c(cards.IssueCard, issued).card.serial
    c.one("CardService/IssueCard", [pin], request_id=issued.request_id)
    # The state changes name only a serial: the entry names the holder.
    for method, message in [
        ("WithholdCard", card_pb.WithholdCardRequest),
        ("ReleaseCard", card_pb.ReleaseCardRequest),
        ("RevokeCard", card_pb.RevokeCardRequest),
    ]:
        request = message(request_id=new_rid(), serial=serial, reason="audit test")
        c(getattr(cards, method), request)
        c.one(f"CardService/{method}", [pin], request_id=request.request_id)
    # A refused change of a known card names its holder too.
    again = card_pb.RevokeCardRequest(request_id=new_rid(), serial=serial, reason="twice")
    err = c.fails(cards.RevokeCard, again)
    c.one("CardService/RevokeCard", [pin], outcome=err.code.name, request_id=again.request_id)


def test_list_cards(civil, cards, agency, calls):
    pin = person(civil, agency).pin
    c = calls("card lookup")
    c(cards.ListCards, card_pb.ListCardsRequest(pin=pin))
    c.one("CardService/ListCards", [pin])


def test_link_and_resolve_legacy_id(civil, cards, identity, agency, calls):
    pin = person(civil, agency).pin
    number = legacy(9)
    c = calls("legacy number")
    request = card_pb.LinkLegacyIdRequest(request_id=new_rid(), pin=pin, legacy_id=number)
    c(cards.LinkLegacyId, request)
    c.one("CardService/LinkLegacyId", [pin], request_id=request.request_id)
    # The resolution names only the old number: the entry names the PIN it resolved to.
    assert c(identity.ResolveLegacyId, id_pb.ResolveLegacyIdRequest(legacy_id=number)).pin == pin
    c.one("IdentityService/ResolveLegacyId", [pin])


def test_verify_identity_known_and_unknown_pin(civil, identity, agency, calls):
    pin = person(civil, agency).pin
    c = calls("account opening")
    answer = c(identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin=pin, sex=MALE))
    assert answer.result == id_pb.VERIFY_RESULT_MATCH
    c.one("IdentityService/VerifyIdentity", [pin])
    unknown = unique_unknown_pin()
    answer = c(identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin=unknown, sex=MALE))
    assert answer.result == id_pb.VERIFY_RESULT_NOT_FOUND
    c.one("IdentityService/VerifyIdentity", [unknown])


def test_verify_identity_records_its_correlation_id(civil, identity, agency, calls):
    """The same check is recorded alike whether it came alone or in a BatchVerify stream."""
    pin = person(civil, agency).pin
    c = calls()
    c(identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin=pin, sex=MALE, correlation_id="k"))
    c.one("IdentityService/VerifyIdentity", [pin], request_id="k")


def batch(identity: Any) -> Callable[..., list[Any]]:
    """BatchVerify as a call taking a list of items."""
    return lambda items, metadata: list(identity.BatchVerify(iter(items), metadata=metadata))


def test_batch_verify_records_one_entry_per_item(civil, identity, agency, calls):
    pin = person(civil, agency).pin
    unknown = unique_unknown_pin()
    c = calls("data cleaning")
    requests = [
        id_pb.VerifyIdentityRequest(pin=pin, sex=MALE, correlation_id="c-match"),
        id_pb.VerifyIdentityRequest(pin=unknown, sex=MALE, correlation_id="c-unknown"),
        id_pb.VerifyIdentityRequest(pin=pin, sex=FEMALE, correlation_id="c-no-match"),
        # Malformed claims: a well-formed PIN is recorded with the refusal; a malformed one
        # names no citizen.
        id_pb.VerifyIdentityRequest(pin=pin, correlation_id="c-nothing-to-check"),
        id_pb.VerifyIdentityRequest(pin="12345", sex=MALE, correlation_id="c-bad-pin"),
    ]
    answers = c(batch(identity), requests)
    assert len(answers) == len(requests)
    written = c.written()
    got = sorted((e["request_id"], tuple(e["pins"]), e["outcome"]) for e in written)
    assert got == sorted(
        [
            ("c-match", (pin,), "OK"),
            ("c-unknown", (unknown,), "OK"),
            ("c-no-match", (pin,), "OK"),
            ("c-nothing-to-check", (pin,), "INVALID_ARGUMENT"),
        ]
    )
    for e in written:
        assert (e["method"], e["purpose"]) == (V1 + "IdentityService/BatchVerify", c.purpose)
        assert c.window[0] - 0.001 <= e["time"].timestamp() <= c.window[1] + 0.001


def test_get_citizen_and_its_refusals(civil, identity, agency, calls):
    pin = person(civil, agency).pin
    c = calls("tax file", scopes=("citizen:read",), fields=("full_name",))
    c(identity.GetCitizen, id_pb.GetCitizenRequest(pin=pin))
    c.one("IdentityService/GetCitizen", [pin])
    mask = field_mask_pb2.FieldMask(paths=["religion"])
    err = c.fails(identity.GetCitizen, id_pb.GetCitizenRequest(pin=pin, read_mask=mask))
    assert err.code == DENIED
    c.one("IdentityService/GetCitizen", [pin], outcome="PERMISSION_DENIED")
    unknown = unique_unknown_pin()
    err = c.fails(identity.GetCitizen, id_pb.GetCitizenRequest(pin=unknown))
    assert err.code == grpc.StatusCode.NOT_FOUND
    c.one("IdentityService/GetCitizen", [unknown], outcome="NOT_FOUND")
    # Authenticated but without the scope: the refusal is recorded.
    err = c.fails(identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin=pin, sex=MALE))
    assert err.code == DENIED
    c.one("IdentityService/VerifyIdentity", [pin], outcome="PERMISSION_DENIED")


def test_list_access_log_is_recorded(audit, civil, agency, calls):
    pin = person(civil, agency).pin
    c = calls("citizen portal", scopes=("audit:read",))
    c(audit.ListAccessLog, pb.ListAccessLogRequest(pin=pin))
    c.one("AuditService/ListAccessLog", [pin])


PADDED: dict[str, Callable[[str], Any]] = {
    "IdentityService/VerifyIdentity": lambda pin: id_pb.VerifyIdentityRequest(pin=pin, sex=MALE),
    "IdentityService/GetCitizen": lambda pin: id_pb.GetCitizenRequest(pin=pin),
    "CardService/ListCards": lambda pin: card_pb.ListCardsRequest(pin=pin),
    "CardService/IssueCard": lambda pin: issue_request(pin),
    "CivilRegistrationService/RegisterDeath": death_request,
    "AuditService/ListAccessLog": lambda pin: pb.ListAccessLogRequest(pin=pin),
}


@pytest.mark.parametrize("method", list(PADDED))
def test_a_pin_with_surrounding_spaces_is_still_recorded(
    civil, cards, identity, audit, agency, calls, method
):
    """The servicers accept a PIN with surrounding ASCII whitespace (they trim it): the call
    reached that citizen, so its entry must name the citizen like any other."""
    pin = person(civil, agency).pin
    stubs = {"IdentityService": identity, "CardService": cards, "AuditService": audit,
             "CivilRegistrationService": civil}  # fmt: skip
    service, name = method.split("/")
    c = calls("padded pin")
    request = PADDED[method](f" {pin}\t")
    c(getattr(stubs[service], name), request)  # accepted: the servicer trimmed the PIN
    c.one(method, [pin], request_id=getattr(request, "request_id", ""))


def test_a_parent_pin_with_surrounding_spaces_is_still_recorded(civil, agency, calls):
    father = person(civil, agency, full_name="Ngô Văn Cha", sex=MALE)
    c = calls("birth registration")
    request = birth_request(father_pin=f" {father.pin}\t")
    child = c(civil.RegisterBirth, request).citizen
    assert child.father_pin == father.pin  # accepted: the PIN was trimmed
    c.one(
        "CivilRegistrationService/RegisterBirth",
        [child.pin, father.pin],
        request_id=request.request_id,
    )


def test_the_whole_request_id_is_recorded(civil, identity, agency, calls):
    """request_id may be up to 128 characters (correlation_id too): the entry keeps all of it,
    or two calls differing only after the 64th character could not be told apart."""
    c = calls()
    request = birth_request(request_id="r" * 64 + uuid.uuid4().hex + "-" * 31)
    assert len(request.request_id) == 127
    pin = c(civil.RegisterBirth, request).citizen.pin
    c.one("CivilRegistrationService/RegisterBirth", [pin], request_id=request.request_id)
    correlation = "c" * 100 + uuid.uuid4().hex[:28]
    item = id_pb.VerifyIdentityRequest(pin=pin, sex=MALE, correlation_id=correlation)
    c(batch(identity), [item])
    c.one("IdentityService/BatchVerify", [pin], request_id=correlation)


@pytest.mark.parametrize("refused", [False, True], ids=["answered", "refused"])
def test_no_answer_leaves_before_its_entry_is_committed(civil, identity, agency, db, refused):
    """While the chain's head is locked (so no audit group can commit) a call touching a
    citizen does not answer; once the lock is released it answers, its entry in the table."""
    pin = unique_unknown_pin() if refused else person(civil, agency).pin
    reader = Calls(db, agency, "held")

    async def scenario() -> Any:
        conn = await asyncpg.connect(db.dsn)
        try:
            transaction = conn.transaction()
            await transaction.start()
            try:
                await conn.execute("SELECT 1 FROM audit_head FOR UPDATE")
                future = identity.GetCitizen.future(
                    id_pb.GetCitizenRequest(pin=pin), metadata=reader.md, timeout=30
                )
                await asyncio.sleep(0.5)
                assert not future.done(), "answered before its audit entry could be written"
            finally:
                await transaction.rollback()
            try:
                return await asyncio.get_running_loop().run_in_executor(None, future.result, 30)
            except grpc.RpcError as exc:
                return exc.code()
        finally:
            await conn.close()

    outcome = run(scenario())
    if refused:
        assert outcome == grpc.StatusCode.NOT_FOUND
    else:
        assert outcome.citizen.pin == pin
    written = reader.written()
    assert [(e["method"], e["pins"], e["outcome"]) for e in written] == [
        (V1 + "IdentityService/GetCitizen", [pin], "NOT_FOUND" if refused else "OK")
    ]


# -- what must not write entries ----------------------------------------------------------------


def test_unauthenticated_calls_write_nothing(civil, identity, agency, db, make_agency):
    pin = person(civil, agency).pin
    before = head_seq(db)
    stranger = make_agency()
    forged = stranger.token(key=new_private_key())  # signed with a key it never registered
    expired = stranger.token(iat_offset=-1000)
    for metadata in [(), (("authorization", f"Bearer {forged}"),), stranger.metadata(expired)]:
        err = call_error(identity.GetCitizen, id_pb.GetCitizenRequest(pin=pin), metadata=metadata)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert naming(db, pin, before) == []


def test_rate_limited_calls_write_nothing(civil, identity, agency, db, make_agency):
    pin = person(civil, agency).pin
    limited = make_agency(rate_limit=1, fields=("full_name",))
    before = head_seq(db)
    md = limited.metadata()
    identity.GetCitizen(id_pb.GetCitizenRequest(pin=pin), metadata=md)
    err = call_error(identity.GetCitizen, id_pb.GetCitizenRequest(pin=pin), metadata=md)
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    written = entries_by(db, limited, before)
    assert [(e["method"], e["outcome"]) for e in written] == [
        (V1 + "IdentityService/GetCitizen", "OK")
    ]


def test_calls_naming_no_well_formed_pin_write_nothing(civil, cards, identity, audit, calls):
    c = calls()
    for fn, request in [
        (identity.GetCitizen, id_pb.GetCitizenRequest(pin="12345")),
        (identity.VerifyIdentity, id_pb.VerifyIdentityRequest(pin="00120000000x", sex=MALE)),
        (cards.ListCards, card_pb.ListCardsRequest(pin="0012000000012")),
        (audit.ListAccessLog, pb.ListAccessLogRequest(pin="abc")),
        (civil.RegisterDeath, death_request("1")),
        (civil.RegisterBirth, birth_request(full_name="")),
        (civil.RegisterBirth, birth_request(father_pin="123")),
    ]:
        assert c.fails(fn, request).code == INVALID
        assert c.written() == []


def test_calls_reaching_no_citizen_write_nothing(cards, identity, calls):
    c = calls()
    c(identity.GetSigningKeys, id_pb.GetSigningKeysRequest())
    assert c.written() == []
    request = card_pb.RevokeCardRequest(request_id=new_rid(), serial="T-NOSUCHCARD", reason="x")
    assert c.fails(cards.RevokeCard, request).code == grpc.StatusCode.NOT_FOUND
    assert c.written() == []
    unknown = id_pb.ResolveLegacyIdRequest(legacy_id=legacy(9))
    assert c.fails(identity.ResolveLegacyId, unknown).code == grpc.StatusCode.NOT_FOUND
    assert c.written() == []


# -- group commit -------------------------------------------------------------------------------

CONCURRENT = 64


@pytest.fixture(scope="module")
def busy_citizen(civil, identity, db, make_agency) -> tuple[str, Agency, int, tuple[float, float]]:
    """A citizen verified by 64 concurrent calls: (pin, agency, head before, time window)."""
    bank = make_agency(scopes=("identity:verify", "birth:register"), miss_budget=1000)
    pin = person(civil, bank).pin
    before = head_seq(db)
    md = bank.metadata(purpose="concurrent")
    request = id_pb.VerifyIdentityRequest(pin=pin, sex=MALE)
    started = time.time()
    futures = [identity.VerifyIdentity.future(request, metadata=md) for _ in range(CONCURRENT)]
    answers = [f.result(timeout=60) for f in futures]
    window = (started, time.time())
    assert all(a.result == id_pb.VERIFY_RESULT_MATCH for a in answers)
    return pin, bank, before, window


def test_concurrent_calls_share_transactions(db, dsn, server, busy_citizen):
    pin, bank, before, _ = busy_citizen
    written = entries_by(db, bank, before)
    assert len(written) == CONCURRENT
    assert all(e["pins"] == [pin] for e in written)
    # Rows inserted by one transaction share its xmin.
    transactions = db.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM audit_log WHERE seq > $1 AND agency_id = $2",
        before,
        bank.id,
    )
    assert 1 <= transactions < CONCURRENT
    result = verify_chain(dsn, server.settings)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("audit log intact: ")


def test_concurrent_entries_are_complete(db, busy_citizen):
    pin, bank, before, window = busy_citizen
    for e in entries_by(db, bank, before):
        assert_entry(
            e, bank, "IdentityService/VerifyIdentity", [pin], purpose="concurrent", window=window
        )
