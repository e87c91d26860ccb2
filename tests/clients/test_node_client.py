"""A second independent client, in Node.js with `jose`, registers births and deaths.

clients/examples/node/civil_status.mjs loads proto/ at run time with @grpc/proto-loader and
signs its agency token with jose, so it shares neither code nor a JOSE library with the
server. Node.js and npm are required: without them these tests fail rather than skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from registry.rules import pin
from tests.conftest import private_pem

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "examples" / "node"
NODE_TIMEOUT_S = 60
# A cold npm cache downloads ~35 small packages; a warm one installs in a second or two.
NPM_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def node() -> str:
    """Install the client's locked dependencies (npm ci) and return the node executable."""
    node_exe, npm_exe = shutil.which("node"), shutil.which("npm")
    if node_exe is None or npm_exe is None:
        pytest.fail(
            "Node.js 18+ and npm must be on PATH to test clients/examples/node "
            f"(node: {node_exe}, npm: {npm_exe})",
            pytrace=False,
        )
    installed = subprocess.run(
        [npm_exe, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
        check=False,
    )
    if installed.returncode != 0:
        pytest.fail(f"npm ci failed in {CLIENT_DIR}:\n{installed.stderr}", pytrace=False)
    return node_exe


@pytest.fixture
def civil_agency(make_agency, tmp_path):
    """A civil-status agency and its private key written as a PEM file."""
    agency = make_agency(scopes=("birth:register", "death:register"))
    key_file = tmp_path / "agency.pem"
    key_file.write_text(private_pem(agency.private_key))
    return agency, key_file


def run_client(
    node: str, server, civil_agency, command: str, *args: str
) -> tuple[int, dict[str, Any]]:
    """Run `node civil_status.mjs COMMAND ...`; return its exit status and JSON output line."""
    agency, key_file = civil_agency
    done = subprocess.run(
        [
            node,
            str(CLIENT_DIR / "civil_status.mjs"),
            command,
            "--target",
            server.target,
            "--agency",
            agency.id,
            "--kid",
            agency.kid,
            "--key",
            str(key_file),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    assert done.stdout.strip(), f"no output (exit {done.returncode}):\n{done.stderr}"
    return done.returncode, json.loads(done.stdout)


def birth_args(name: str, request_id: str, province: str = "001") -> tuple[str, ...]:
    return (
        *("--name", name, "--sex", "FEMALE", "--born", "2024-03-08"),
        *("--province", province, "--request-id", request_id),
    )


def test_node_client_registers_a_birth_and_replays_it(node, server, civil_agency, db):
    # Sent decomposed (NFD), as some input methods produce; stored and returned NFC.
    name = unicodedata.normalize("NFD", "Trần Thị Mai")
    code, first = run_client(node, server, civil_agency, "birth", *birth_args(name, "node-b-1"))
    assert code == 0, first
    assert first["replayed"] is False
    assert first["status"] == "CITIZEN_STATUS_ALIVE"
    assert first["full_name"] == "Trần Thị Mai"
    issued = first["pin"]
    problems = pin.check_structure(
        issued, pin.PrefixTable.load_default(), sex=pin.Sex.FEMALE, birth_year=2024
    )
    assert problems == []
    assert issued.startswith("001" + str(pin.century_sex_digit(2024, pin.Sex.FEMALE)))
    assert db.fetchval("SELECT full_name FROM citizens WHERE pin = $1", issued) == "Trần Thị Mai"

    code, again = run_client(node, server, civil_agency, "birth", *birth_args(name, "node-b-1"))
    assert code == 0, again
    assert again == {**first, "replayed": True}
    assert db.fetchval("SELECT count(*) FROM citizens WHERE pin = $1", issued) == 1


def test_node_client_registers_a_death(node, server, civil_agency, db):
    code, born = run_client(
        node, server, civil_agency, "birth", *birth_args("Lê Văn Hùng", "node-b-2")
    )
    assert code == 0, born
    code, died = run_client(
        node, server, civil_agency, "death", "--pin", born["pin"], "--died", "2025-01-15"
    )
    assert code == 0, died
    assert died == {
        "pin": born["pin"],
        "replayed": False,
        "status": "CITIZEN_STATUS_DECEASED",
        "date_of_death": "2025-01-15",
    }
    assert db.fetchval("SELECT status FROM citizens WHERE pin = $1", born["pin"]) == 2


def test_node_client_reports_a_bad_request_with_its_details(node, server, civil_agency, db):
    before = db.counts()
    code, refused = run_client(
        node, server, civil_agency, "birth", *birth_args("Phạm Minh Châu", "node-b-3", "999")
    )
    assert code == 1
    assert refused["error"] == "INVALID_ARGUMENT"
    assert refused["message"]
    assert refused["reason"] == "INVALID_FIELDS"
    bad_request = next(d for d in refused["details"] if d["@type"] == "google.rpc.BadRequest")
    fields = [v["field"] for v in bad_request["field_violations"]]
    assert fields == ["registration_province_code"]
    assert db.counts() == before
