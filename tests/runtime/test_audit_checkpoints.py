"""Signed checkpoints of the audit log (SPEC §7): tamper-evidence against the database's owner.

A server on a private database writes entries in rounds, signing a checkpoint after each (a
short REGISTRY_AUDIT_CHECKPOINT_S), while an agency saves one from GetAuditCheckpoint. Then,
acting as the database superuser on fresh copies of that database, each test does what a
holder of the database credentials can: rewrite an entry and re-hash every later one, cut the
tail and rewind the head, forge checkpoint rows or file lines. The hash chain alone is
consistent after each; `registry audit verify` must exit 1 naming the checkpoint that does not
hold. An outside party verifies the RPC's JWS with the GetSigningKeys JWKS using pyjwt.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import jwt
import pytest

from registry.config import Settings
from registry.rules.audit import Entry, link
from registry.v1 import audit_service_pb2 as pb
from registry.v1 import (
    audit_service_pb2_grpc,
    civil_registration_service_pb2_grpc,
    identity_service_pb2_grpc,
)
from registry.v1 import identity_service_pb2 as id_pb
from tests.conftest import (
    ServerThread,
    make_agency_factory,
    new_private_key,
    run,
    server_settings,
    wait_serving,
)
from tests.grpc.audit_log import (
    REPLICA,
    database_dsn,
    execute,
    private_database,
    registry_cli,
)
from tests.helpers import birth_request, call_error

CHECKPOINT_AUDIENCE = "citizen-registry/audit-checkpoint"
INTERVAL_S = 0.3
ROUNDS = 5
SIGNED = re.compile(r"\(signed \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)")


def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return run(go())


def head(dsn: str) -> tuple[int, bytes]:
    row = fetch(dsn, "SELECT seq, hash FROM audit_head")[0]
    return row["seq"], row["hash"]


def checkpoint_rows(dsn: str) -> list[asyncpg.Record]:
    return fetch(dsn, "SELECT seq, head_hash, time, jws FROM audit_checkpoints ORDER BY seq")


def wait_for_checkpoint_at(dsn: str, seq: int, timeout: float = 10.0) -> float:
    """Wait until a checkpoint pins entry `seq`; return how long it took."""
    started = time.monotonic()
    while not fetch(dsn, "SELECT 1 FROM audit_checkpoints WHERE seq = $1", seq):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no checkpoint at entry {seq} within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def file_lines(settings: Settings) -> list[str]:
    path = settings.checkpoint_file
    return path.read_text().splitlines() if path.exists() else []


class Running:
    """A server on a private database with its own data directory, and an agency."""

    def __init__(self, dsn: str, **overrides: Any):
        self.dsn = dsn
        self.settings = server_settings(**overrides)
        self.agency = make_agency_factory(dsn)(miss_budget=1_000_000)
        self.server = ServerThread(self.settings, dsn).start()
        wait_serving(self.server.target)
        self.channel = grpc.insecure_channel(self.server.target)
        self.civil = civil_registration_service_pb2_grpc.CivilRegistrationServiceStub(self.channel)
        self.audit = audit_service_pb2_grpc.AuditServiceStub(self.channel)
        self.identity = identity_service_pb2_grpc.IdentityServiceStub(self.channel)

    def births(self, n: int = 2) -> int:
        """Register n births (each writes an audit entry); return the head after them."""
        for _ in range(n):
            self.civil.RegisterBirth(birth_request(), metadata=self.agency.metadata())
        return head(self.dsn)[0]

    def checkpoint(self) -> pb.GetAuditCheckpointResponse:
        response: pb.GetAuditCheckpointResponse = self.audit.GetAuditCheckpoint(
            pb.GetAuditCheckpointRequest(), metadata=self.agency.metadata()
        )
        return response

    def stop(self) -> None:
        self.channel.close()
        self.server.stop()


@contextlib.contextmanager
def running(dsn: str, **overrides: Any) -> Iterator[Running]:
    server = Running(dsn, **overrides)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Signed:
    """The private database a server wrote and checkpointed in rounds."""

    name: str
    dsn: str
    settings: Settings
    rows: list[asyncpg.Record]
    """audit_log, by position."""
    checkpoints: list[asyncpg.Record]
    saved: pb.GetAuditCheckpointResponse
    """What an agency got from GetAuditCheckpoint after the second round."""
    jwks_json: str
    """What an agency got from GetSigningKeys."""
    appeared_s: list[float]
    """How long each round's checkpoint took to appear after its last call."""
    quiet: tuple[tuple[int, int], tuple[int, int]]
    """Checkpoints (rows, file lines) before and after a quiet second with no calls."""


@pytest.fixture(scope="module")
def signed(dsn: str) -> Iterator[Signed]:
    with private_database(dsn) as name:
        private = database_dsn(dsn, name)
        with running(private, audit_checkpoint_s=INTERVAL_S) as server:
            appeared = []
            saved = None
            for round_ in range(ROUNDS):
                seq = server.births(2)
                appeared.append(wait_for_checkpoint_at(private, seq))
                if round_ == 1:
                    saved = server.checkpoint()
            stored = (len(checkpoint_rows(private)), len(file_lines(server.settings)))
            time.sleep(4 * INTERVAL_S)
            quiet = (stored, (len(checkpoint_rows(private)), len(file_lines(server.settings))))
            jwks = server.identity.GetSigningKeys(
                id_pb.GetSigningKeysRequest(), metadata=server.agency.metadata()
            ).jwks_json
        assert saved is not None
        rows = fetch(private, "SELECT * FROM audit_log ORDER BY seq")
        yield Signed(
            name,
            private,
            server.settings,
            rows,
            checkpoint_rows(private),
            saved,
            jwks,
            appeared,
            quiet,
        )


@contextlib.contextmanager
def copy_of(signed: Signed, *, with_file: bool = True) -> Iterator[tuple[str, Settings]]:
    """A fresh copy of the signed database and of its server's data directory (the
    checkpoint file; without it when `with_file` is false): (dsn, settings for the CLI)."""
    name = f"ckpt_{uuid.uuid4().hex[:10]}"
    execute(signed.dsn, f'CREATE DATABASE "{name}" TEMPLATE "{signed.name}"')
    data_dir = Path(tempfile.mkdtemp(prefix="registry-ckpt-copy-"))
    if with_file:
        shutil.copy(signed.settings.checkpoint_file, data_dir)
    try:
        yield database_dsn(signed.dsn, name), replace(signed.settings, data_dir=data_dir)
    finally:
        execute(signed.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(data_dir, ignore_errors=True)


def verify(
    dsn: str, settings: Settings, *checkpoints: str
) -> tuple[int, list[str], subprocess.CompletedProcess[str]]:
    args = [a for c in checkpoints for a in ("--checkpoint", c)]
    result = registry_cli("audit", "verify", *args, dsn=dsn, settings=settings)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines(), result


# -- what the superuser does -------------------------------------------------------------------


def rewrite_and_rehash(dsn: str, rows: list[asyncpg.Record], at: int) -> None:
    """Give entry `at` another purpose, recompute every hash from it on, move the head."""

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(REPLICA)
            previous = rows[at - 2]["hash"] if at > 1 else bytes(32)
            for row in rows[at - 1 :]:
                entry = Entry(
                    row["time"], row["agency_id"], row["method"], tuple(row["pins"]),
                    row["outcome"], row["purpose"], row["request_id"],
                )  # fmt: skip
                if row["seq"] == at:
                    entry = entry._replace(purpose="nothing to see here")
                previous = link(previous, row["seq"], entry)
                await conn.execute(
                    "UPDATE audit_log SET purpose = $2, hash = $3 WHERE seq = $1",
                    row["seq"],
                    entry.purpose,
                    previous,
                )
            await conn.execute("UPDATE audit_head SET hash = $1", previous)
        finally:
            await conn.close()

    run(go())


def cut_tail(dsn: str, rows: list[asyncpg.Record], keep: int) -> None:
    """Delete every entry after `keep` and rewind the head to it."""
    execute(
        dsn,
        REPLICA,
        f"DELETE FROM audit_log WHERE seq > {keep}",
        f"UPDATE audit_head SET seq = {keep}, hash = '\\x{rows[keep - 1]['hash'].hex()}'",
    )


def forged_checkpoint(signed: Signed, seq: int, head_hash: bytes) -> str:
    """A checkpoint made by someone without the registry's key: same claims, same kid."""
    kid = jwt.get_unverified_header(signed.checkpoints[0]["jws"])["kid"]
    payload = {
        "iss": "citizen-registry", "aud": CHECKPOINT_AUDIENCE, "sub": "audit-log", "seq": seq,
        "head_hash": head_hash.hex(), "iat": int(time.time()),
    }  # fmt: skip
    return jwt.encode(
        payload,
        new_private_key("ES256"),
        algorithm="ES256",
        headers={"kid": kid, "typ": "audit-checkpoint+jwt"},
    )


def insert_checkpoint_row(dsn: str, seq: int, head_hash: bytes, jws: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO audit_checkpoints (seq, head_hash, time, jws) "
                "VALUES ($1, $2, now(), $3)",
                seq,
                head_hash,
                jws,
            )
        finally:
            await conn.close()

    run(go())


def wipe_checkpoint_rows(dsn: str) -> None:
    execute(dsn, REPLICA, "DELETE FROM audit_checkpoints")


# -- the server signs ---------------------------------------------------------------------------


def test_checkpoints_appear_within_the_interval_while_entries_are_written(signed):
    assert len(signed.appeared_s) == ROUNDS
    # Each round's head was signed within a few intervals of its last entry.
    assert max(signed.appeared_s) < 10 * INTERVAL_S, signed.appeared_s
    assert len(signed.checkpoints) >= ROUNDS


def test_nothing_is_signed_while_the_log_is_quiet(signed):
    before, after = signed.quiet
    assert before == after


def test_every_checkpoint_pins_the_entry_it_names_and_is_in_the_file(signed):
    hashes = {r["seq"]: r["hash"] for r in signed.rows}
    for row in signed.checkpoints:
        assert row["head_hash"] == hashes[row["seq"]]
    # One JWS per line, in the order signed, the same as the table's.
    assert file_lines(signed.settings) == [r["jws"] for r in signed.checkpoints]


def test_a_checkpoint_is_signed_at_shutdown(dsn):
    # An interval longer than the server lives: only the drain can sign.
    with private_database(dsn) as name:
        private = database_dsn(dsn, name)
        with running(private, audit_checkpoint_s=10.0) as server:
            seq = server.births(3)
            assert checkpoint_rows(private) == []
            settings = server.settings
        rows = checkpoint_rows(private)
        assert [(r["seq"], r["head_hash"]) for r in rows] == [head(private)]
        assert rows[0]["seq"] == seq
        assert file_lines(settings) == [rows[0]["jws"]]


# -- GetAuditCheckpoint, as an outside party sees it ----------------------------------------------


def verified_with_jwks(token: str, jwks_json: str) -> dict[str, Any]:
    """Verify a checkpoint as another agency would: pyjwt and the published JWKS only."""
    keys = jwt.PyJWKSet.from_json(jwks_json)
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=CHECKPOINT_AUDIENCE,
        issuer="citizen-registry",
        options={"require": ["iss", "aud", "iat"]},
    )
    return claims


def test_the_rpc_returns_a_jws_that_verifies_with_the_published_keys(signed):
    saved = signed.saved
    claims = verified_with_jwks(saved.checkpoint, signed.jwks_json)
    assert claims["seq"] == saved.sequence
    assert claims["head_hash"] == saved.head_hash.hex()
    assert claims["iat"] == int(saved.time.ToDatetime(UTC).timestamp())
    assert jwt.get_unverified_header(saved.checkpoint)["typ"] == "audit-checkpoint+jwt"
    # It pins what the log held then: the entry's stored hash, a stored checkpoint.
    assert signed.rows[saved.sequence - 1]["hash"] == saved.head_hash
    assert saved.checkpoint in [r["jws"] for r in signed.checkpoints]
    assert 0 < saved.sequence < signed.checkpoints[-1]["seq"]


def test_a_checkpoint_is_not_taken_for_an_attestation(signed):
    # An attestation verifier (no audience expected) refuses a token with an audience.
    key = jwt.PyJWKSet.from_json(signed.jwks_json).keys[-1]
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(signed.saved.checkpoint, key.key, algorithms=["ES256"])


def test_the_rpc_serves_the_latest_checkpoint(dsn):
    with private_database(dsn) as name:
        private = database_dsn(dsn, name)
        with running(private, audit_checkpoint_s=INTERVAL_S) as server:
            error = call_error(
                server.audit.GetAuditCheckpoint,
                pb.GetAuditCheckpointRequest(),
                metadata=server.agency.metadata(),
            )
            assert error.code == grpc.StatusCode.NOT_FOUND
            assert error.reason == "NO_AUDIT_CHECKPOINT"
            for _ in range(2):
                seq = server.births(1)
                wait_for_checkpoint_at(private, seq)
                got = server.checkpoint()
                assert (got.sequence, got.head_hash) == head(private)
            # Not an access to a citizen: fetching it writes no entry.
            assert head(private)[0] == seq


def test_any_authenticated_agency_may_fetch_it_and_nobody_else(dsn, signed):
    with running(signed.dsn) as server:
        lone = make_agency_factory(signed.dsn)(scopes=("identity:verify",))
        got = server.audit.GetAuditCheckpoint(
            pb.GetAuditCheckpointRequest(), metadata=lone.metadata()
        )
        assert got.checkpoint
        error = call_error(server.audit.GetAuditCheckpoint, pb.GetAuditCheckpointRequest())
        assert error.code == grpc.StatusCode.UNAUTHENTICATED


# -- registry audit verify -----------------------------------------------------------------------


def test_an_honest_log_with_many_checkpoints_verifies(signed):
    with copy_of(signed) as (private, settings):
        code, lines, result = verify(private, settings, signed.saved.checkpoint)
    assert code == 0, result.stdout + result.stderr
    n = len(signed.rows)
    assert lines[0] == f"audit log intact: {n} entries, head entry {n}, hash " + (
        signed.rows[-1]["hash"].hex()
    )
    k = len(signed.checkpoints)
    assert lines[2].startswith(
        f"  {k} signed checkpoint(s) hold ({k} in the table, {k} in {settings.checkpoint_file}, "
        "1 given); the latest: checkpoint at sequence "
        f"{signed.checkpoints[-1]['seq']} "
    ), lines


def test_a_rewritten_and_rehashed_entry_is_detected(signed):
    at = 3
    first = min(r["seq"] for r in signed.checkpoints if r["seq"] >= at)
    with copy_of(signed) as (private, settings):
        rewrite_and_rehash(private, signed.rows, at)
        code, lines, result = verify(private, settings)
    assert code == 1, result.stdout
    assert lines[0].startswith(f"audit log BROKEN: checkpoint at sequence {first} (signed "), lines
    assert SIGNED.search(lines[0])
    assert lines[0].endswith(
        f"in {settings.checkpoint_file} line "
        f"{[r['seq'] for r in signed.checkpoints].index(first) + 1}, in the table: head hash "
        f"differs — entries up to {first} were rewritten"
    ), lines[0]
    # Every later checkpoint is named too.
    later = [r["seq"] for r in signed.checkpoints if r["seq"] > first]
    assert [int(re.search(r"sequence (\d+)", x).group(1)) for x in lines[2:]] == later


def test_a_cut_tail_with_the_head_rewound_is_detected(signed):
    last = signed.checkpoints[-1]["seq"]
    keep = last - 1
    earlier = [r["seq"] for r in signed.checkpoints if r["seq"] <= keep]
    with copy_of(signed) as (private, settings):
        cut_tail(private, signed.rows, keep)
        code, lines, result = verify(private, settings)
    assert code == 1, result.stdout
    assert lines[0].startswith(f"audit log BROKEN: checkpoint at sequence {last} (signed "), lines
    assert lines[0].endswith(
        f"the log ends at entry {keep} — entries after it, up to {last} at least, were cut "
        "off and the head rewound"
    ), lines[0]
    assert earlier, "the checkpoints below the cut must still hold"
    assert len(lines) == 2


def test_a_forged_checkpoint_row_is_detected(signed):
    n = len(signed.rows)
    # What a forger would store to bless a rewritten head: a valid-looking checkpoint.
    forged = forged_checkpoint(signed, n + 5, bytes(range(32)))
    with copy_of(signed) as (private, settings):
        insert_checkpoint_row(private, n + 5, bytes(range(32)), forged)
        code, lines, result = verify(private, settings)
    assert code == 1, result.stdout
    kid = jwt.get_unverified_header(forged)["kid"]
    assert lines[0] == (
        f"audit log BROKEN: checkpoint at sequence {n + 5} (in the table) is forged or corrupt: "
        f"its signature does not verify with the registry's key {kid}"
    )


def test_a_forged_line_in_the_file_is_detected(signed):
    forged = forged_checkpoint(signed, 2, signed.rows[1]["hash"])
    with copy_of(signed) as (private, settings):
        with settings.checkpoint_file.open("a") as handle:
            handle.write("not a checkpoint at all\n" + forged + "\n")
        code, lines, result = verify(private, settings)
    assert code == 1, result.stdout
    lines_in_file = len(signed.checkpoints)
    assert lines[0] == (
        f"audit log BROKEN: checkpoint (in {settings.checkpoint_file} line {lines_in_file + 1}) "
        "is forged or corrupt: not a compact JWS"
    )
    assert lines[2] == (
        f"  also: checkpoint at sequence 2 (in {settings.checkpoint_file} line "
        f"{lines_in_file + 2}) is forged or corrupt: its signature does not verify with the "
        f"registry's key {jwt.get_unverified_header(forged)['kid']}"
    )


def test_an_attestation_is_not_accepted_as_a_checkpoint(dsn, signed):
    # Signed with the same key ring (tests' servers share it), on a database of its own.
    with private_database(dsn) as name, running(database_dsn(dsn, name)) as server:
        pin = server.civil.RegisterBirth(
            birth_request(), metadata=server.agency.metadata()
        ).citizen.pin
        attestation = server.identity.VerifyIdentity(
            id_pb.VerifyIdentityRequest(pin=pin, want_attestation=True, full_name="x"),
            metadata=server.agency.metadata(),
        ).attestation
    assert attestation
    with copy_of(signed) as (private, settings):
        code, lines, _ = verify(private, settings, attestation)
    assert code == 1
    assert lines[0] == (
        "audit log BROKEN: checkpoint (given with --checkpoint) is forged or corrupt: signed by "
        "the registry, but not an audit checkpoint"
    )


def test_an_old_checkpoint_held_by_an_agency_detects_a_later_rewrite(signed):
    saved = signed.saved
    # The owner rewrites history and removes every trace the registry kept of its checkpoints:
    # the rows (and the server's file is not available to this verifier).
    with copy_of(signed, with_file=False) as (private, settings):
        rewrite_and_rehash(private, signed.rows, 2)
        wipe_checkpoint_rows(private)
        alone, _, result_alone = verify(private, settings)
        with tempfile.NamedTemporaryFile("w", suffix=".jws") as kept:
            kept.write(saved.checkpoint + "\n")
            kept.flush()
            code, lines, result = verify(private, settings, saved.checkpoint)
            from_file, file_lines_, _ = verify(private, settings, kept.name)
    # Without the agency's copy nothing contradicts the rewritten chain…
    assert alone == 0, result_alone.stdout
    # …with it, verify names it.
    assert code == 1, result.stdout
    assert lines[0].startswith(f"audit log BROKEN: checkpoint at sequence {saved.sequence} ")
    assert lines[0].endswith(
        f"given with --checkpoint: head hash differs — entries up to {saved.sequence} were "
        "rewritten"
    ), lines[0]
    assert from_file == 1
    assert f"in {kept.name} line 1: head hash differs" in file_lines_[0]


def test_a_malformed_checkpoint_argument_is_a_usage_error(signed):
    with copy_of(signed) as (private, settings):
        _, _, result = verify(private, settings, "no-such-file")
    assert result.returncode == 2
    assert "neither a file nor a compact JWS" in result.stderr


def test_the_checkpoint_table_is_append_only(signed):
    async def refused(statement: str) -> asyncpg.PostgresError | None:
        conn = await asyncpg.connect(signed.dsn)
        try:
            async with conn.transaction():
                await conn.execute(statement)
                raise AssertionError(f"{statement} was not refused")
        except asyncpg.PostgresError as exc:
            return exc
        finally:
            await conn.close()

    for statement in (
        "UPDATE audit_checkpoints SET seq = seq + 1",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_checkpoints",
    ):
        error = run(refused(statement))
        assert isinstance(error, asyncpg.InsufficientPrivilegeError), (statement, error)


def test_two_servers_sharing_the_database_sign_each_head_once(dsn):
    with private_database(dsn) as name:
        private = database_dsn(dsn, name)
        with (
            running(private, audit_checkpoint_s=0.05) as one,
            running(private, audit_checkpoint_s=0.05) as two,
        ):
            for _ in range(15):
                one.births(1)
                two.births(1)
                time.sleep(0.05)
            settings = (one.settings, two.settings)
        rows = checkpoint_rows(private)
        lines = [line for s in settings for line in file_lines(s)]
        # Each checkpoint was signed by one server only: every line is a stored row, once.
        assert sorted(lines) == sorted(r["jws"] for r in rows)
        assert all(file_lines(s) for s in settings), "both servers should have signed some"
        code, out, result = verify(private, settings[0], *file_lines(settings[1]))
        assert code == 0, result.stdout
        assert out[2].startswith(f"  {len(rows)} signed checkpoint(s) hold"), out


def test_a_server_refuses_to_sign_a_history_rewritten_below_its_latest_checkpoint(signed):
    latest = signed.checkpoints[-1]
    with copy_of(signed) as (private, _):
        rewrite_and_rehash(private, signed.rows, 3)
        with running(private, audit_checkpoint_s=INTERVAL_S) as server:
            seq = server.births(1)
            time.sleep(6 * INTERVAL_S)
            assert [r["seq"] for r in checkpoint_rows(private)][-1] == latest["seq"] < seq
            # It keeps serving the last checkpoint it signed honestly.
            assert server.checkpoint().checkpoint == latest["jws"]
            log_lines = file_lines(server.settings)
        assert log_lines == []  # nothing signed, at shutdown either
