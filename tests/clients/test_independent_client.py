"""An independent client (own stubs from proto/, another JOSE library) registers births, deaths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from registry.rules import pin
from tests.conftest import private_pem

EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "examples" / "civil_status.py"


def _run(server, agency, key_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            args[0],
            "--target",
            server.target,
            "--agency",
            agency.id,
            "--kid",
            agency.kid,
            "--key",
            str(key_file),
            *args[1:],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_example_client_registers_a_birth_replays_it_and_registers_the_death(
    server, agency, db, tmp_path
):
    key_file = tmp_path / "agency.pem"
    key_file.write_text(private_pem(agency.private_key))
    birth = (
        "birth",
        "--name",
        "Trần Thị Mai",
        "--sex",
        "FEMALE",
        "--born",
        "1990-07-15",
        "--province",
        "079",
        "--request-id",
        "example-birth-1",
    )
    first = _run(server, agency, key_file, *birth)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["replayed"] is False
    assert result["status"] == "CITIZEN_STATUS_ALIVE"
    assert (
        pin.check_structure(
            result["pin"], pin.PrefixTable.load_default(), sex=pin.Sex.FEMALE, birth_year=1990
        )
        == []
    )
    assert result["pin"].startswith("079190")
    again = json.loads(_run(server, agency, key_file, *birth).stdout)
    assert again == {**result, "replayed": True}
    assert db.fetchval("SELECT count(*) FROM citizens WHERE pin = $1", result["pin"]) == 1

    death = _run(server, agency, key_file, "death", "--pin", result["pin"], "--died", "2026-01-02")
    assert death.returncode == 0, death.stderr
    assert json.loads(death.stdout)["status"] == "CITIZEN_STATUS_DECEASED"
    assert db.fetchval("SELECT status FROM citizens WHERE pin = $1", result["pin"]) == 2


def test_example_client_reports_refusals(server, agency, tmp_path):
    key_file = tmp_path / "agency.pem"
    key_file.write_text(private_pem(agency.private_key))
    refused = _run(
        server, agency, key_file, "death", "--pin", "001000000000", "--died", "2026-01-02"
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"] == "NOT_FOUND"
