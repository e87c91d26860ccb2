"""The `registry` operator command, run as a subprocess against the real database and server.

Agencies the CLI adds are used at once by the running server (fixture `server`), so these
tests prove the CLI writes exactly what the server reads.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from registry.embedded import EmbeddedCluster
from registry.v1.identity_service_pb2 import GetSigningKeysRequest
from tests.conftest import AUDIENCE, public_pem
from tests.helpers import ErrorDetails, birth_request, call_error, decode
from tests.ops.cli import ok, registry, user_error

PROPAGATION_S = 5.0


# -- helpers ------------------------------------------------------------------------------------


def write_key(directory: Path, private_key: Any, name: str | None = None) -> Path:
    path = directory / (name or f"{uuid.uuid4().hex[:8]}.pem")
    path.write_text(public_pem(private_key))
    return path


def new_id() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def token(agency_id: str, private_key: Any, algorithm: str, kid: str = "k1") -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": agency_id, "aud": AUDIENCE, "iat": now, "exp": now + 300},
        private_key,
        algorithm=algorithm,
        headers={"kid": kid},
    )


def md(bearer: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {bearer}"),)


def probe(civil: Any, bearer: str) -> ErrorDetails:
    """Call RegisterBirth with an invalid request: INVALID_ARGUMENT means the gate admitted it."""
    return call_error(civil.RegisterBirth, birth_request(full_name=""), metadata=md(bearer))


def wait_known(civil: Any, bearer: str) -> None:
    """Wait until the server knows the token's key (the CLI process has exited by now)."""
    deadline = time.monotonic() + PROPAGATION_S
    while probe(civil, bearer).reason == "TOKEN_KEY_UNKNOWN":
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not learn the key within {PROPAGATION_S} s")
        time.sleep(0.05)


def registers(civil: Any, db: Any, bearer: str) -> None:
    wait_known(civil, bearer)
    pin = civil.RegisterBirth(birth_request(), metadata=md(bearer)).citizen.pin
    assert db.fetchval("SELECT count(*) FROM citizens WHERE pin = $1", pin) == 1


def refused_within(civil: Any, bearer: str, reason: str) -> None:
    deadline = time.monotonic() + PROPAGATION_S
    while True:
        err = probe(civil, bearer)
        if err.code == grpc.StatusCode.UNAUTHENTICATED:
            assert err.reason == reason, err
            return
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
        if time.monotonic() > deadline:
            pytest.fail(f"still admitted {PROPAGATION_S} s later")
        time.sleep(0.2)


def listing_of(stdout: str, agency_id: str) -> str:
    """The block `agency list` printed for one agency."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        if not line.startswith(" "):
            current = line.split("\t")[0]
            blocks[current] = []
        assert current is not None
        blocks[current].append(line)
    assert agency_id in blocks, f"{agency_id} not listed:\n{stdout}"
    return "\n".join(blocks[agency_id])


def add(
    dsn: str, agency_id: str, key_file: Path, *extra: str, scopes: str = "birth:register"
) -> Any:
    return registry(
        "agency", "add", "--id", agency_id, "--name", f"Sở Tư pháp {agency_id}",
        "--kind", "JUSTICE", "--scopes", scopes, "--public-key", str(key_file), "--kid", "k1",
        *extra,
        dsn=dsn,
    )  # fmt: skip


# -- add, list, use ------------------------------------------------------------------------------


def test_add_es256_agency_then_list_it_and_call_with_its_key(tmp_path, dsn, db, civil, server):
    key = ec.generate_private_key(ec.SECP256R1())
    agency_id = new_id()
    out = ok(
        add(dsn, agency_id, write_key(tmp_path, key), "--fields", "full_name,date_of_birth",
            "--rate-limit", "50", scopes="birth:register,death:register")
    )  # fmt: skip
    assert agency_id in out and "ES256" in out

    block = listing_of(ok(registry("agency", "list", dsn=dsn)), agency_id)
    assert "JUSTICE\tenabled" in block
    assert "scopes: birth:register,death:register" in block
    assert "fields: full_name,date_of_birth" in block
    assert "rate limit: 50 calls/s\n" in block
    assert "key k1\tES256\tactive" in block

    assert "miss budget: 600 per minute (default)" in block
    row = db.fetch(
        "SELECT scopes, fields, rate_limit, enabled FROM agencies WHERE id = $1", agency_id
    )[0]
    assert (list(row["scopes"]), list(row["fields"]), row["rate_limit"], row["enabled"]) == (
        ["birth:register", "death:register"],
        ["full_name", "date_of_birth"],
        50,
        True,
    )
    registers(civil, db, token(agency_id, key, "ES256"))


def test_an_agency_added_without_a_rate_limit_gets_the_default_and_is_held_to_it(
    tmp_path, dsn, db, identity, server
):
    key = ec.generate_private_key(ec.SECP256R1())
    agency_id = new_id()
    out = ok(add(dsn, agency_id, write_key(tmp_path, key), scopes="identity:verify"))
    assert "rate limit: 100 calls/s (default)" in out, out
    assert "miss budget: 600 per minute (default)" in out, out
    block = listing_of(ok(registry("agency", "list", dsn=dsn)), agency_id)
    assert "rate limit: 100 calls/s (default)" in block
    assert "default" not in block.replace("calls/s (default)", "").replace(
        "per minute (default)", ""
    )

    # What it prints is what the server applies: a burst of 100 calls, then refusals.
    bearer = token(agency_id, key, "ES256")
    refused: list[ErrorDetails] = []
    for _ in range(400):
        try:
            identity.GetSigningKeys(GetSigningKeysRequest(), metadata=md(bearer), timeout=10)
        except grpc.RpcError as error:
            details = decode(error)
            if details.reason == "TOKEN_KEY_UNKNOWN":
                time.sleep(0.05)  # the server has not heard of the agency yet
                continue
            refused.append(details)
            break
    assert refused, "400 calls in a row and no rate limit"
    assert refused[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused[0]
    assert refused[0].reason == "RATE_LIMITED"
    assert refused[0].metadata["rate_limit_per_s"] == "100"
    assert refused[0].quota_subjects == [f"agency:{agency_id}"]


@pytest.mark.parametrize("kid", ["k" * 129, "k\x01", "k\u200b"], ids=["long", "control", "zwsp"])
def test_a_kid_no_token_could_name_is_refused(tmp_path, dsn, db, kid):
    key = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    agency_id = new_id()
    user_error(add(dsn, agency_id, key, "--kid", kid), "--kid")
    assert _agency_count(db, agency_id) == 0


def test_miss_budget_is_registered_and_must_be_positive(tmp_path, dsn, db):
    key = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    refused = new_id()
    user_error(add(dsn, refused, key, "--miss-budget", "0"), "--miss-budget")
    assert _agency_count(db, refused) == 0
    agency_id = new_id()
    ok(add(dsn, agency_id, key, "--miss-budget", "50000", scopes="identity:verify"))
    assert "miss budget: 50000" in listing_of(ok(registry("agency", "list", dsn=dsn)), agency_id)
    assert db.fetchval("SELECT miss_budget FROM agencies WHERE id = $1", agency_id) == 50000


def test_watch_types_and_confidentiality_are_registered_and_listed(tmp_path, dsn, db):
    key = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    refused = new_id()
    user_error(add(dsn, refused, key, "--watch-types", "BORN,MARRIED"), "MARRIED")
    assert _agency_count(db, refused) == 0
    plain, police = new_id(), new_id()
    ok(add(dsn, plain, key, scopes="changes:watch"))
    ok(add(dsn, police, key, "--watch-types", "born,DIED", "--confidential"))
    listing = ok(registry("agency", "list", dsn=dsn))
    # None by default: an agency receives only the change types its registration names.
    assert "watch types: -" in listing_of(listing, plain)
    assert "confidential: no" in listing_of(listing, plain)
    assert "watch types: BORN,DIED" in listing_of(listing, police)
    assert "confidential: yes" in listing_of(listing, police)
    row = db.fetch("SELECT watch_types, confidential FROM agencies WHERE id = $1", police)[0]
    assert (list(row["watch_types"]), row["confidential"]) == (["BORN", "DIED"], True)


@pytest.mark.parametrize(
    "algorithm, private_key",
    [
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ],
    ids=["ed25519", "rsa2048"],
)
def test_add_accepts_ed25519_and_rsa_2048_keys(
    tmp_path, dsn, db, civil, server, algorithm, private_key
):
    agency_id = new_id()
    out = ok(add(dsn, agency_id, write_key(tmp_path, private_key)))
    assert f"({algorithm})" in out
    block = listing_of(ok(registry("agency", "list", dsn=dsn)), agency_id)
    assert f"key k1\t{algorithm}\tactive" in block
    registers(civil, db, token(agency_id, private_key, algorithm))


def test_scope_granted_by_the_cli_is_all_the_agency_gets(tmp_path, dsn, civil, server):
    key = ec.generate_private_key(ec.SECP256R1())
    agency_id = new_id()
    ok(add(dsn, agency_id, write_key(tmp_path, key), scopes="death:register"))
    bearer = token(agency_id, key, "ES256")
    wait_known(civil, bearer)
    err = probe(civil, bearer)
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")


# -- rejected input -----------------------------------------------------------------------------


def _agency_count(db: Any, agency_id: str) -> int:
    return int(db.fetchval("SELECT count(*) FROM agencies WHERE id = $1", agency_id))


def test_unknown_scope_is_refused(tmp_path, dsn, db):
    agency_id = new_id()
    key_file = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    user_error(add(dsn, agency_id, key_file, scopes="birth:register,birth:delete"), "birth:delete")
    assert _agency_count(db, agency_id) == 0


def test_unknown_citizen_field_is_refused(tmp_path, dsn, db):
    agency_id = new_id()
    key_file = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    user_error(add(dsn, agency_id, key_file, "--fields", "full_name,shoe_size"), "shoe_size")
    assert _agency_count(db, agency_id) == 0


@pytest.mark.parametrize(
    "private_key, words",
    [
        (ec.generate_private_key(ec.SECP384R1()), ("P-256",)),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), ("2048",)),
    ],
    ids=["p384", "rsa1024"],
)
def test_weak_or_wrong_curve_keys_are_refused(tmp_path, dsn, db, private_key, words):
    agency_id = new_id()
    user_error(add(dsn, agency_id, write_key(tmp_path, private_key)), *words)
    assert _agency_count(db, agency_id) == 0


def test_a_text_file_that_is_not_a_pem_key_is_refused(tmp_path, dsn, db):
    agency_id = new_id()
    path = tmp_path / "notes.txt"
    path.write_text("this is not a key\n")
    user_error(add(dsn, agency_id, path), "PEM")
    assert _agency_count(db, agency_id) == 0


def test_a_private_key_pem_is_refused(tmp_path, dsn, db):
    agency_id = new_id()
    path = tmp_path / "private.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    user_error(add(dsn, agency_id, path), "PEM")
    assert _agency_count(db, agency_id) == 0


def test_a_binary_file_that_is_not_a_pem_key_is_refused(tmp_path, dsn, db):
    # A DER key (or any binary file) handed over by mistake: not UTF-8 text.
    agency_id = new_id()
    path = tmp_path / "key.der"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(UnicodeDecodeError):  # what makes this case different from a text file
        path.read_bytes().decode()
    user_error(add(dsn, agency_id, path), str(path))
    assert _agency_count(db, agency_id) == 0


def test_a_missing_key_file_is_refused(tmp_path, dsn, db):
    agency_id = new_id()
    user_error(add(dsn, agency_id, tmp_path / "absent.pem"), "absent.pem")
    assert _agency_count(db, agency_id) == 0


def test_duplicate_agency_id_is_refused_and_the_first_is_kept(tmp_path, dsn, db):
    agency_id = new_id()
    first = ec.generate_private_key(ec.SECP256R1())
    ok(add(dsn, agency_id, write_key(tmp_path, first)))
    second = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    user_error(add(dsn, agency_id, second, scopes="audit:read"), agency_id, "already exists")
    assert list(db.fetchval("SELECT scopes FROM agencies WHERE id = $1", agency_id)) == [
        "birth:register"
    ]
    assert db.fetchval(
        "SELECT public_key_pem FROM agency_keys WHERE agency_id = $1", agency_id
    ) == public_pem(first)


def test_add_key_to_an_unknown_agency_is_refused(tmp_path, dsn, db):
    agency_id = new_id()
    key_file = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    user_error(
        registry(
            "agency",
            "add-key",
            "--id",
            agency_id,
            "--public-key",
            str(key_file),
            "--kid",
            "k2",
            dsn=dsn,
        ),
        agency_id,
    )
    assert db.fetchval("SELECT count(*) FROM agency_keys WHERE agency_id = $1", agency_id) == 0


def test_add_key_with_a_kid_already_used_is_refused(tmp_path, dsn):
    agency_id = new_id()
    ok(add(dsn, agency_id, write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))))
    other = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    user_error(
        registry(
            "agency",
            "add-key",
            "--id",
            agency_id,
            "--public-key",
            str(other),
            "--kid",
            "k1",
            dsn=dsn,
        ),
        "k1",
    )


def test_disable_or_revoke_unknown_targets_are_refused(dsn):
    ghost = new_id()
    user_error(registry("agency", "disable", "--id", ghost, dsn=dsn), ghost)
    user_error(registry("agency", "revoke-key", "--id", ghost, "--kid", "k1", dsn=dsn), ghost)


# -- lifecycle ----------------------------------------------------------------------------------


def test_disable_locks_the_agency_out_within_seconds(tmp_path, dsn, db, civil, server):
    key = ec.generate_private_key(ec.SECP256R1())
    agency_id = new_id()
    ok(add(dsn, agency_id, write_key(tmp_path, key)))
    bearer = token(agency_id, key, "ES256")
    registers(civil, db, bearer)  # admitted once: the token is in the server's cache

    ok(registry("agency", "disable", "--id", agency_id, dsn=dsn))
    refused_within(civil, bearer, "AGENCY_DISABLED")
    assert (
        "DISABLED" in listing_of(ok(registry("agency", "list", dsn=dsn)), agency_id).splitlines()[0]
    )

    out = ok(registry("agency", "enable", "--id", agency_id, dsn=dsn))
    assert "tokens it signed before now stay refused" in out
    # The token signed before the disable stays refused; a new one is admitted.
    deadline = time.monotonic() + PROPAGATION_S
    while (err := probe(civil, bearer)).reason != "TOKEN_ISSUED_BEFORE_ENABLE":
        assert err.reason == "AGENCY_DISABLED", err  # until the server hears of the enable
        assert time.monotonic() < deadline, "the enable never reached the server"
        time.sleep(0.1)
    block = listing_of(ok(registry("agency", "list", dsn=dsn)), agency_id)
    assert "enabled again: " in block and "enabled" in block.splitlines()[0]
    enabled_at = db.fetchval("SELECT enabled_at FROM agencies WHERE id = $1", agency_id)
    while int(time.time()) < enabled_at.timestamp():
        time.sleep(0.05)
    registers(civil, db, token(agency_id, key, "ES256"))


def test_revoke_key_refuses_its_tokens_within_seconds(tmp_path, dsn, db, civil, server):
    key = ec.generate_private_key(ec.SECP256R1())
    agency_id = new_id()
    ok(add(dsn, agency_id, write_key(tmp_path, key)))
    bearer = token(agency_id, key, "ES256")
    registers(civil, db, bearer)

    ok(registry("agency", "revoke-key", "--id", agency_id, "--kid", "k1", dsn=dsn))
    refused_within(civil, bearer, "TOKEN_KEY_REVOKED")
    assert "key k1\tES256\trevoked " in listing_of(
        ok(registry("agency", "list", dsn=dsn)), agency_id
    )
    # Revoking twice says so.
    user_error(registry("agency", "revoke-key", "--id", agency_id, "--kid", "k1", dsn=dsn), "k1")


def test_add_key_then_the_new_kid_works(tmp_path, dsn, db, civil, server):
    k1 = ec.generate_private_key(ec.SECP256R1())
    agency_id = new_id()
    ok(add(dsn, agency_id, write_key(tmp_path, k1)))
    k2 = ed25519.Ed25519PrivateKey.generate()
    out = ok(
        registry("agency", "add-key", "--id", agency_id,
                 "--public-key", str(write_key(tmp_path, k2)), "--kid", "2026-k2", dsn=dsn)
    )  # fmt: skip
    assert "2026-k2" in out and "EdDSA" in out
    block = listing_of(ok(registry("agency", "list", dsn=dsn)), agency_id)
    assert "key k1\tES256\tactive" in block and "key 2026-k2\tEdDSA\tactive" in block

    registers(civil, db, token(agency_id, k2, "EdDSA", kid="2026-k2"))
    registers(civil, db, token(agency_id, k1, "ES256"))  # the old key still works until revoked


# -- the embedded default -----------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_default_database(tmp_path):
    # Not pytest's tmp_path for the data: root runs PostgreSQL as an unprivileged account,
    # which cannot traverse pytest's 0700 base directory.
    data_dir = Path(tempfile.mkdtemp(prefix="registry-cli-"))
    data_dir.chmod(0o755)
    env = {"REGISTRY_DATA_DIR": str(data_dir)}
    agency_id = new_id()
    try:
        key_file = write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
        out = ok(_add_embedded(agency_id, key_file, env))
        assert agency_id in out
        cluster = EmbeddedCluster(data_dir)
        assert (cluster.pgdata / "PG_VERSION").exists(), "no cluster was created"
        assert not cluster.is_running(), "the CLI left the PostgreSQL it started running"

        listing = ok(registry("agency", "list", dsn=None, env=env))
        assert "scopes: birth:register" in listing_of(listing, agency_id)
        assert not cluster.is_running()
    finally:
        leftover = EmbeddedCluster(data_dir)
        if leftover.is_running():
            leftover.stop("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)


def _add_embedded(
    agency_id: str, key_file: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return registry(
        "agency", "add", "--id", agency_id, "--name", "Embedded", "--kind", "OTHER",
        "--scopes", "birth:register", "--public-key", str(key_file), "--kid", "k1",
        dsn=None, env=env,
    )  # fmt: skip
