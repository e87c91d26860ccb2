"""`registry import FILE.csv`: the same import path as ImportCitizens, from the command line."""

from __future__ import annotations

import csv
import os
import subprocess
import time
import uuid

from tests.conftest import server_settings
from tests.ops.cli import REGISTRY, ok, registry, user_error

# The PIN secret of the session's servers: the CLI imports into the same database.
SESSION_KEYS = {"REGISTRY_SIGNING_KEY_DIR": str(server_settings().signing_key_dir)}


def _name(given: str) -> str:
    return f"{given} " + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:10])


def test_import_a_csv_then_re_run_it_harmlessly(tmp_path, dsn, db, make_agency):
    agency = make_agency(scopes=("population:import",))
    path = tmp_path / "population.csv"
    rows = [
        {"source_id": "r1", "full_name": _name("Trần Văn"), "date_of_birth": "1950",
         "sex": "MALE", "registration_province_code": "079", "other_names": "Ba;Tư"},
        {"source_id": "r2", "full_name": _name("Ngô Thị"), "date_of_birth": "1971-08",
         "sex": "NỮ", "registration_province_code": "001", "status": "DECEASED",
         "date_of_death": "2020-01-02"},
        {"source_id": "r3", "full_name": _name("Đỗ Văn"), "date_of_birth": "1999-13-01",
         "sex": "M", "registration_province_code": "001"},
        {"source_id": "r4", "full_name": _name("Vũ Văn"), "date_of_birth": "1980-01-01",
         "sex": "X", "registration_province_code": "001"},
    ]  # fmt: skip
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    first = ok(registry("import", str(path), "--agency", agency.id, dsn=dsn, env=SESSION_KEYS))
    assert "received 4: created 2 (2 with a new PIN" in first
    assert "duplicates 0, rejected 2" in first
    assert "rejected r3: date_of_birth.month" in first and "rejected r4: unreadable" in first
    stored = db.fetch(
        "SELECT c.pin, c.birth_year, c.birth_month, c.other_names, c.status "
        "FROM import_sources s JOIN citizens c USING (pin) "
        "WHERE s.agency_id = $1 ORDER BY s.source_id",
        agency.id,
    )
    assert [(r["birth_year"], r["birth_month"], r["status"]) for r in stored][-2:] == [
        (1950, None, 1),
        (1971, 8, 2),
    ]
    assert list(stored[-2]["other_names"]) == ["Ba", "Tư"]
    again = ok(registry("import", str(path), "--agency", agency.id, dsn=dsn, env=SESSION_KEYS))
    assert "created 0" in again and "duplicates 2, rejected 2" in again
    audited = db.fetch(
        "SELECT outcome, pins FROM audit_log WHERE agency_id = $1 AND method = 'registry import' "
        "ORDER BY seq",
        agency.id,
    )
    # The second run created nothing; the citizens its records matched are in the log.
    assert [r["outcome"] for r in audited] == ["OK", "ALREADY_EXISTS"]
    assert set(audited[1]["pins"]) == {r["pin"] for r in stored}


def test_a_source_id_holding_nul_is_rejected_not_a_crash(tmp_path, dsn, db, make_agency):
    """A NUL in a CSV's source_id (Python's csv reads it) cannot be stored with the batch's
    rejects: the row is rejected, reported with U+FFFD, and the rest imported."""
    agency = make_agency(scopes=("population:import",))
    path = tmp_path / "nul.csv"
    path.write_text(
        "source_id,full_name,date_of_birth,sex,registration_province_code\n"
        f"n\x00l,{_name('Lý Thị')},1960,FEMALE,001\n"
        f"fine,{_name('Lý Văn')},1961,MALE,001\n",
        encoding="utf-8",
    )
    out = ok(registry("import", str(path), "--agency", agency.id, dsn=dsn, env=SESSION_KEYS))
    assert "received 2: created 1" in out and "rejected 1" in out, out
    assert "rejected n\ufffdl: source_id" in out, out
    assert "\x00" not in out
    stored = db.fetch("SELECT source_id FROM import_sources WHERE agency_id = $1", agency.id)
    assert [r["source_id"] for r in stored] == ["fine"]


def test_import_names_an_unknown_agency(tmp_path, dsn):
    path = tmp_path / "empty.csv"
    path.write_text("source_id,full_name\n", encoding="utf-8")
    user_error(
        registry("import", str(path), "--agency", "nobody-here", dsn=dsn, env=SESSION_KEYS),
        "nobody-here",
    )


def test_a_killed_import_resumed_continues_without_duplicates(tmp_path, dsn, db, make_agency):
    agency = make_agency(scopes=("population:import",))
    path = tmp_path / "big.csv"
    family = _name("Lý")
    n = 10_000  # five batches of imports.BATCH (2,000): killed after the first
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["source_id", "full_name", "date_of_birth", "sex", "registration_province_code"]
        )
        for i in range(n):
            given = "".join(chr(ord("a") + int(c)) for c in f"{i:05d}")
            writer.writerow([f"k{i}", f"{family} {given}", f"{1940 + i % 60}", "MF"[i % 2], "001"])
    env = dict(os.environ, REGISTRY_DATABASE_URL=dsn, **SESSION_KEYS)
    killed = subprocess.Popen(
        [str(REGISTRY), "import", str(path), "--agency", agency.id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Killed once its first batches are written, long before the end.
    deadline = time.monotonic() + 60
    while not db.fetchval("SELECT count(*) FROM import_batches WHERE agency_id = $1", agency.id):
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.02)
    killed.kill()
    killed.wait()
    written = db.fetchval("SELECT count(*) FROM import_sources WHERE agency_id = $1", agency.id)
    assert 0 < written < n
    out = ok(
        registry("import", str(path), "--agency", agency.id, "--resume", dsn=dsn, env=SESSION_KEYS)
    )
    skipped = int(out.split("resumed after ")[1].split(" rows")[0].replace(",", ""))
    assert skipped >= written  # the rows of every acknowledged batch are not read again
    assert f"received {n - skipped:,}: created {n - skipped:,}" in out
    assert "duplicates 0" in out
    assert db.fetchval("SELECT count(*) FROM import_sources WHERE agency_id = $1", agency.id) == n
    # Resuming a finished import does nothing.
    out = ok(
        registry("import", str(path), "--agency", agency.id, "--resume", dsn=dsn, env=SESSION_KEYS)
    )
    assert f"resumed after {n:,} rows" in out and "received 0" in out
