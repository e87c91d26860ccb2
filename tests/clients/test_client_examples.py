"""The agency examples in clients/examples, run as programs against the test server."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import private_pem

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "python"
EXAMPLES = ROOT / "clients" / "examples"


@pytest.fixture(scope="module")
def run_example(server, make_agency, tmp_path_factory, registry_client) -> Any:
    agency = make_agency(miss_budget=1_000_000)
    work = tmp_path_factory.mktemp("examples")
    key = work / "agency.pem"
    key.write_text(private_pem(agency.private_key))
    env = {**os.environ, "PYTHONPATH": str(PACKAGE / "src")}
    connection = [
        "--target",
        server.target,
        "--agency",
        agency.id,
        "--kid",
        "k1",
        "--key",
        str(key),
    ]

    def run(name: str, *args: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / name), *connection, *args],
            capture_output=True, text=True, timeout=60, env=env, cwd=work, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    run.work = work  # type: ignore[attr-defined]
    return run


def test_birth_registration_is_retry_safe(run_example):
    number = f"{uuid.uuid4().hex[:6]}/2026"
    args = ("--name", "Nguyễn Thị Mai", "--sex", "FEMALE", "--born", "2026-11-20",
            "--province", "001", "--registration-number", number)  # fmt: skip
    [first] = run_example("birth_registration.py", *args)
    [again] = run_example("birth_registration.py", *args)
    assert (again["pin"], first["replayed"], again["replayed"]) == (first["pin"], False, True)


def test_card_station_then_bank_cleaning_then_change_feed(run_example):
    [mother] = run_example(
        "birth_registration.py", "--name", "Trần Thị Lan", "--sex", "FEMALE", "--born",
        "1990-05-17", "--province", "079", "--registration-number", uuid.uuid4().hex[:8],
    )  # fmt: skip
    serial = "S" + uuid.uuid4().hex[:11].upper()
    [card] = run_example(
        "card_station.py", "--pin", mother["pin"], "--serial", serial, "--issued", "2025-01-02"
    )
    assert (card["serial"], card["state"]) == (serial, "ACTIVE") and card["expires"]
    customers = run_example.work / "customers.csv"
    with customers.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "pin", "full_name", "date_of_birth", "sex"])
        writer.writerow(["k1", mother["pin"], "TRẦN THỊ LAN", "1990-05-17", "FEMALE"])
        writer.writerow(["k2", mother["pin"], "Trần Thị Lành", "1990-05-17", ""])
        writer.writerow(["k3", "not-a-pin", "X", "", ""])
    [summary] = run_example("bank_cleaning.py", str(customers))
    assert summary["results"] == {"MATCH": 1, "NO_MATCH": 1, "INVALID": 1}
    with (run_example.work / "customers.checked.csv").open(encoding="utf-8") as f:
        checked = {row["id"]: (row["result"], row["differs"]) for row in csv.DictReader(f)}
    assert checked == {
        "k1": ("MATCH", ""),
        "k2": ("NO_MATCH", "full_name"),
        "k3": ("INVALID", ""),
    }
    # The change feed from a cursor (this test made at least two events): a first run stops
    # after one event, the next resumes after it.
    cursor = run_example.work / "feed.cursor"
    first = run_example("change_subscriber.py", "--cursor", str(cursor), "--limit", "1")
    second = run_example("change_subscriber.py", "--cursor", str(cursor), "--limit", "1")
    assert len(first) == len(second) == 1
    assert second[0]["sequence"] > first[-1]["sequence"]
    assert int(cursor.read_text()) == second[-1]["sequence"]
