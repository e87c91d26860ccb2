"""An independent client (own stubs from proto/, another JOSE library) registers a birth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from registry import pin
from tests.conftest import private_pem

EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "examples" / "register_birth.py"


def _run(server, agency, key_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--target",
            server.target,
            "--agency",
            agency.id,
            "--kid",
            agency.kid,
            "--key",
            str(key_file),
            "--name",
            "Trần Thị Mai",
            "--sex",
            "FEMALE",
            "--born",
            "1990-07-15",
            "--province",
            "079",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_example_client_registers_a_birth_and_replays(server, agency, db, tmp_path):
    key_file = tmp_path / "agency.pem"
    key_file.write_text(private_pem(agency.private_key))
    first = _run(server, agency, key_file, "--request-id", "example-birth-1")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["replayed"] is False
    assert (
        pin.check_structure(
            result["pin"], pin.PrefixTable.load_default(), sex=pin.Sex.FEMALE, birth_year=1990
        )
        == []
    )
    assert result["pin"].startswith("079190")
    again = json.loads(_run(server, agency, key_file, "--request-id", "example-birth-1").stdout)
    assert again == {**result, "replayed": True}
    assert db.fetchval("SELECT count(*) FROM citizens WHERE pin = $1", result["pin"]) == 1
