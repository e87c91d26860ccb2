"""The `registry` operator command run as a subprocess, and its results checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REGISTRY = Path(sys.executable).parent / "registry"


def registry(
    *args: str, dsn: str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the registry command; dsn None removes REGISTRY_DATABASE_URL (embedded default)."""
    environment = dict(os.environ)
    environment.pop("REGISTRY_DATABASE_URL", None)
    if dsn is not None:
        environment["REGISTRY_DATABASE_URL"] = dsn
    environment.update(env or {})
    return subprocess.run(
        [str(REGISTRY), *args], capture_output=True, text=True, env=environment, timeout=120
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def user_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Assert exit code 2 with one line on stderr (no traceback) containing words; return it."""
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr!r}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    line = lines[0]
    assert line.startswith("registry: error: "), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line
