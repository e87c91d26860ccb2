"""PIN bucket keys out of the database (issue 12, item 3).

A copy of the database must not let anyone predict the next PINs: new buckets store only a
salt, and their permutation key needs the registry's PIN secret, kept beside the signing keys.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from registry.db.pins import SecretMismatch
from registry.rules import pin as pins
from registry.runtime import pin_secret
from registry.v1 import citizen_pb2
from tests.conftest import SESSION_PIN_SECRET, ServerThread, server_settings
from tests.helpers import birth_request, date

MALE = citizen_pb2.SEX_MALE


def _register(civil, agency, province: str, year: int) -> str:
    request = birth_request(
        sex=MALE, date_of_birth=date(year, 3, 3), registration_province_code=province
    )
    return civil.RegisterBirth(request, metadata=agency.metadata()).citizen.pin


def _bucket(db, province: str, g: int, yy: int):
    return db.fetch(
        "SELECT key, key_version, issued FROM pin_buckets "
        "WHERE province_code = $1 AND g = $2 AND yy = $3",
        province,
        g,
        yy,
    )


def test_a_new_bucket_cannot_be_predicted_from_the_database(civil, agency, db):
    province, year = "093", 1921
    g, yy = 0, year % 100
    assert not _bucket(db, province, g, yy), "bucket used by another test"
    issued = [_register(civil, agency, province, year) for _ in range(3)]
    (row,) = _bucket(db, province, g, yy)
    assert row["key_version"] == pins.KEY_VERSION_SECRET
    bucket = pins.Bucket(province, g, yy)
    stored = bytes(row["key"])
    # What someone holding only a database dump would compute for the first counters...
    from_dump = {pins.allocate(bucket, stored, c) for c in range(row["issued"])}
    assert not from_dump & set(issued)
    # ...and what the registry's secret gives: exactly the issued PINs, in order.
    key = pins.bucket_key(stored, row["key_version"], SESSION_PIN_SECRET)
    assert issued == [pins.allocate(bucket, key, c) for c in range(3)]


def test_a_bucket_keyed_before_the_secret_keeps_its_stored_key(civil, agency, db):
    province, year = "093", 1922
    g, yy = 0, year % 100
    assert not _bucket(db, province, g, yy), "bucket used by another test"
    stored = os.urandom(32)
    bucket = pins.Bucket(province, g, yy)
    db.execute(
        "INSERT INTO pin_buckets (province_code, g, yy, key, issued, key_version) "
        "VALUES ($1, $2, $3, $4, 5, 0)",
        province,
        g,
        yy,
        stored,
    )
    pin = _register(civil, agency, province, year)
    # The next counter value with the stored key: the bucket's order is unchanged, so no number
    # issued before (counters 0-4) can come out again.
    assert pin == pins.allocate(bucket, stored, 5)
    assert pin not in {pins.allocate(bucket, stored, c) for c in range(5)}


def test_the_secret_file_is_private_and_stable(tmp_path):
    first = pin_secret.load_or_create(tmp_path / "keys")
    path = tmp_path / "keys" / pin_secret.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == pin_secret.SECRET_BYTES
    assert pin_secret.load_or_create(tmp_path / "keys") == first
    path.write_text("not hex\n")
    with pytest.raises(pin_secret.PinSecretError):
        pin_secret.load_or_create(tmp_path / "keys")


def test_a_server_with_another_secret_refuses_to_start(server, runtime_dsn):
    other_keys = Path(tempfile.mkdtemp(prefix="registry-keys-other-"))
    (other_keys / pin_secret.FILE_NAME).write_text(os.urandom(32).hex() + "\n")
    with pytest.raises(SecretMismatch, match=r"pin-secret\.key"):
        ServerThread(server_settings(signing_key_dir=other_keys), runtime_dsn).start()


def test_the_fingerprint_does_not_reveal_the_secret(db):
    stored = bytes(db.fetchval("SELECT fingerprint FROM pin_key_secret"))
    assert stored == pins.secret_fingerprint(SESSION_PIN_SECRET)
    assert SESSION_PIN_SECRET not in stored and stored != SESSION_PIN_SECRET
