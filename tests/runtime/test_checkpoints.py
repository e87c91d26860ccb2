"""Checkpoint JWS encoding (registry.runtime.checkpoints): round trip, and keys retired by prune."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from registry.config import ConfigError, Settings
from registry.runtime import checkpoints
from registry.runtime.attestation import SigningKeys, public_keys

HEAD = bytes(range(32))


def test_a_signed_checkpoint_reads_back(tmp_path):
    ring = SigningKeys.open(tmp_path)
    at = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    signed = checkpoints.sign(ring, 42, HEAD, at)
    read = checkpoints.decode(signed.jws, ring.public_keys())
    assert (read.seq, read.head_hash, read.kid) == (42, HEAD, ring.current.kid)
    assert read.time == at.replace(microsecond=0) == signed.time
    assert read.describe() == "checkpoint at sequence 42 (signed 2026-01-02T03:04:05Z)"


def test_a_checkpoint_of_a_pruned_key_still_verifies(tmp_path):
    ring = SigningKeys.open(tmp_path, lifetime_s=60)
    old = checkpoints.sign(ring, 7, HEAD, datetime.now(UTC))
    ring.rotate()
    assert ring.prune(now=time.time() + 3600) == [old.kid]
    assert old.kid not in ring.kids  # no longer published in the JWKS
    for keys in (public_keys(tmp_path), ring.public_keys()):
        assert checkpoints.decode(old.jws, keys).seq == 7


@pytest.mark.parametrize(
    "claims",
    [{"seq": True}, {"seq": 0}, {"seq": "5"}, {"head_hash": "00"}, {"iat": 1.5}, {"iss": "x"}],
)
def test_signed_tokens_with_malformed_claims_are_refused(tmp_path, claims):
    ring = SigningKeys.open(tmp_path)
    payload = {
        "iss": "citizen-registry", "aud": checkpoints.AUDIENCE, "sub": checkpoints.SUBJECT,
        "seq": 3, "head_hash": HEAD.hex(), "iat": 1_700_000_000, **claims,
    }  # fmt: skip
    token, _ = ring.sign_payload(payload, checkpoints.TYPE)
    with pytest.raises(checkpoints.CheckpointInvalid, match="claims are malformed"):
        checkpoints.decode(token, ring.public_keys())


def test_public_keys_of_a_missing_directory_is_empty(tmp_path):
    assert public_keys(tmp_path / "absent") == {}
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("value", ["0", "-1", "10.5", "soon"])
def test_the_checkpoint_interval_must_be_within_10_s(value):
    with pytest.raises(ConfigError, match="REGISTRY_AUDIT_CHECKPOINT_S"):
        Settings.from_env({"REGISTRY_AUDIT_CHECKPOINT_S": value})


def test_the_checkpoint_interval_is_read_from_the_environment():
    assert Settings.from_env({}).audit_checkpoint_s == 10.0
    assert Settings.from_env({"REGISTRY_AUDIT_CHECKPOINT_S": "0.5"}).audit_checkpoint_s == 0.5
