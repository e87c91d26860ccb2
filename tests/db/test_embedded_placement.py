"""`make run` from a checkout anywhere (issue 18): a private home, a path with spaces.

As root, PostgreSQL runs as an unprivileged account that cannot enter a 0700 home directory.
The registry then keeps the cluster where that account can reach it, says where in one log
line, and leaves the user's directories' modes alone.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from registry.embedded import EmbeddedCluster
from tests.conftest import wait_serving

ROOT = Path(__file__).resolve().parents[2]


def test_a_clone_in_a_private_directory_with_spaces_serves(tmp_path):
    private = Path(tempfile.mkdtemp(prefix="registry-home-"))
    private.chmod(0o700)
    clone = private / "my registry clone"
    data_dir = clone / "var"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        # Generated code is not committed (make proto makes it); bring this checkout's.
        for generated in (ROOT / "registry" / "v1").glob("*_pb2*.py"):
            shutil.copy(generated, clone / "registry" / "v1" / generated.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(REGISTRY_LISTEN="127.0.0.1:0", GRPC_VERBOSITY="ERROR", PYTHONPATH=str(clone))
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "server.py"], cwd=clone, env=env, stdout=stdout, stderr=stderr
            )
        try:
            deadline = time.monotonic() + 120
            while not (found := re.search(r"listening on (\S+)", out.read_text())):
                assert proc.poll() is None, f"server exited {proc.returncode}: {err.read_text()}"
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.1)
            wait_serving(found.group(1))
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, err.read_text()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # not widened
        log = err.read_text()
        assert "Traceback" not in log
        cluster = EmbeddedCluster(data_dir)
        if os.geteuid() == 0:
            # One line says where the cluster went; it is outside the private directory.
            moved = [line for line in log.splitlines() if "cannot enter" in line]
            assert len(moved) == 1, log
            assert str(cluster.pgdata) in moved[0]
            assert private not in cluster.pgdata.parents
        else:
            assert cluster.pgdata == data_dir / "pg"
        assert (cluster.pgdata / "PG_VERSION").exists()
        assert not cluster.is_running()  # the server stopped the cluster it started
    finally:
        EmbeddedCluster(data_dir).remove()
        shutil.rmtree(private, ignore_errors=True)
