"""`registry status` (issue 18 item 6): one command that says whether anything is wrong."""

from __future__ import annotations

import json
import os
import uuid

from tests.ops.cli import registry


def _env(server, **extra: str) -> dict[str, str]:
    return {"REGISTRY_LISTEN": server.target, **extra}


def test_status_of_a_healthy_registry(server, dsn, civil, agency):
    from tests.helpers import birth_request

    civil.RegisterBirth(birth_request(), metadata=agency.metadata())
    done = registry("status", dsn=dsn, env=_env(server))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip()}
    assert "SERVING" in lines["server"] and lines["server"].startswith("ok")
    assert "version" in lines["schema"] and "pending" not in lines["schema"]
    assert "head entry" in lines["audit"]
    assert "fullest" in done.stdout
    assert "checkpoint" in lines
    as_json = registry("status", "--json", dsn=dsn, env=_env(server))
    assert as_json.returncode == 0
    findings = {f["name"]: f for f in json.loads(as_json.stdout)}
    assert findings["server"]["details"]["health"] == "SERVING"
    assert findings["audit"]["details"]["head_seq"] > 0
    assert findings["schema"]["details"]["pending"] == []
    assert {f["verdict"] for f in findings.values()} <= {"ok", "warn"}


def test_status_fails_when_the_server_does_not_answer(server, dsn):
    done = registry("status", dsn=dsn, env={"REGISTRY_LISTEN": "127.0.0.1:1"})
    assert done.returncode == 1
    assert any(line.startswith("FAIL") and "server" in line for line in done.stdout.splitlines())
    assert "Traceback" not in done.stderr


def test_status_of_a_database_without_the_schema(server, dsn, db):
    name = f"status_{uuid.uuid4().hex[:8]}"
    db.execute(f'CREATE DATABASE "{name}"')
    empty = dsn.rsplit("/", 1)[0] + "/" + name
    done = registry("status", dsn=empty, env=_env(server))
    assert done.returncode == 1
    assert "pending" in done.stdout and "registry migrate" in done.stdout


def test_status_never_starts_a_stopped_embedded_cluster(server, tmp_path):
    data_dir = tmp_path / "var"
    env = {"REGISTRY_DATA_DIR": str(data_dir), "REGISTRY_LISTEN": "127.0.0.1:1"}
    done = registry("status", dsn=None, env=env)
    assert done.returncode == 1
    assert "stopped" in done.stdout
    assert not (data_dir / "pg").exists() and not os.path.exists(data_dir / "db.json")
