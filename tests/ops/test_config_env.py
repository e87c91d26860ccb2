"""Every variable of README.md's configuration table, set, reaches the setting it names.

The behaviour behind the settings is pinned where it needs a server: REGISTRY_JWT_AUDIENCE,
REGISTRY_ATTESTATION_LIFETIME_S, REGISTRY_POOL_MIN/MAX, REGISTRY_AGENCY_REFRESH_S and
REGISTRY_LOG_LEVEL in tests/ops/test_served_process.py (a `registry serve` process configured by
them), TLS in tests/ops/test_tls.py, the data directory and REGISTRY_PG_BIN in tests/db/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from registry.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]


def _readme_variables() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return {
        name
        for line in table.splitlines()
        if line.startswith("| `REGISTRY_")
        for name in re.findall(r"`(REGISTRY_[A-Z_]+)`", line.split("|")[1])
    }


def _read_by_config() -> set[str]:
    source = (ROOT / "registry" / "config.py").read_text()
    return set(re.findall(r'"(REGISTRY_[A-Z_]+)"', source))


def test_the_readme_documents_exactly_the_variables_the_server_reads():
    assert _readme_variables() == _read_by_config()


def test_defaults_when_nothing_is_set():
    s = Settings.from_env({})
    assert (s.listen, s.database_url, s.owner_database_url, s.replica_urls) == (
        "127.0.0.1:50051",
        None,
        None,
        (),
    )
    assert (s.data_dir, s.signing_keys_path) == (Path("var"), Path("var/signing-keys"))
    assert (s.jwt_audience, s.attestation_lifetime_s) == ("citizen-registry", 30 * 24 * 3600)
    assert (s.tls_cert, s.tls_key, s.tls_client_ca, s.allow_insecure_listen) == (
        None,
        None,
        None,
        False,
    )
    assert (s.pg_bin_dir, s.pool_min_size, s.pool_max_size) == (None, 4, 16)
    assert (s.agency_refresh_s, s.log_level) == (5.0, "INFO")
    assert (s.audit_checkpoint_s, s.metrics_listen, s.change_retention_days) == (10, None, 35)
    assert (s.clock_skew_s, s.token_max_lifetime_s, s.shutdown_grace_s) == (30, 900, 10.0)


def test_every_variable_reaches_its_setting(tmp_path):
    env = {
        "REGISTRY_LISTEN": "0.0.0.0:6000",
        "REGISTRY_DATABASE_URL": " postgresql://runtime@db/registry ",
        "REGISTRY_OWNER_DATABASE_URL": "postgresql://owner@db/registry",
        "REGISTRY_REPLICA_URLS": "postgresql://r1/registry, ,postgresql://r2/registry",
        "REGISTRY_DATA_DIR": str(tmp_path / "data"),
        "REGISTRY_JWT_AUDIENCE": "registry.example",
        "REGISTRY_SIGNING_KEY_DIR": str(tmp_path / "keys"),
        "REGISTRY_ATTESTATION_LIFETIME_S": "3600",
        "REGISTRY_TLS_CERT": str(tmp_path / "cert.pem"),
        "REGISTRY_TLS_KEY": str(tmp_path / "key.pem"),
        "REGISTRY_TLS_CLIENT_CA": str(tmp_path / "ca.pem"),
        "REGISTRY_ALLOW_INSECURE_LISTEN": "yes",
        "REGISTRY_PG_BIN": str(tmp_path / "bin"),
        "REGISTRY_POOL_MIN": "2",
        "REGISTRY_POOL_MAX": "3",
        "REGISTRY_AGENCY_REFRESH_S": "0.5",
        "REGISTRY_LOG_LEVEL": "debug",
        "REGISTRY_AUDIT_CHECKPOINT_S": "2.5",
        "REGISTRY_METRICS_LISTEN": "127.0.0.1:9464",
        "REGISTRY_CHANGE_RETENTION_DAYS": "7",
        "REGISTRY_WORKERS": "3",
        "REGISTRY_HOSTS": "2",
        "REGISTRY_REPLICA_MAX_LAG_S": "2.5",
        "REGISTRY_WORKER_INDEX": "1",
    }
    assert set(env) == _readme_variables()
    s = Settings.from_env(env)
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 6000)
    assert s.database_url == "postgresql://runtime@db/registry"
    assert s.owner_database_url == "postgresql://owner@db/registry"
    assert s.replica_urls == ("postgresql://r1/registry", "postgresql://r2/registry")
    assert s.data_dir == tmp_path / "data"
    assert s.jwt_audience == "registry.example"
    assert s.signing_keys_path == tmp_path / "keys"
    assert s.attestation_lifetime_s == 3600
    assert (s.tls_cert, s.tls_key) == (tmp_path / "cert.pem", tmp_path / "key.pem")
    assert s.tls_enabled
    assert s.tls_client_ca == tmp_path / "ca.pem"
    assert s.allow_insecure_listen is True
    assert s.pg_bin_dir == tmp_path / "bin"
    assert (s.pool_min_size, s.pool_max_size) == (2, 3)
    assert s.agency_refresh_s == 0.5
    assert s.log_level == "DEBUG"
    assert s.audit_checkpoint_s == 2.5
    assert s.metrics_listen == "127.0.0.1:9464"
    assert s.change_retention_days == 7
    assert (s.workers, s.hosts, s.replica_max_lag_s, s.worker_index) == (3, 2, 2.5, 1)
    assert s.limit_shares == 6  # a worker of 3, on one of 2 hosts


def test_the_signing_key_dir_defaults_under_the_data_dir(tmp_path):
    s = Settings.from_env({"REGISTRY_DATA_DIR": str(tmp_path)})
    assert s.signing_keys_path == tmp_path / "signing-keys"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REGISTRY_LISTEN": "0.0.0.0:6000"}, "refusing to serve plaintext"),
        ({"REGISTRY_LISTEN": "nohost"}, "host:port"),
        ({"REGISTRY_TLS_CERT": "/c.pem"}, "must be set together"),
        ({"REGISTRY_TLS_CLIENT_CA": "/ca.pem"}, "needs REGISTRY_TLS_CERT"),
        ({"REGISTRY_POOL_MIN": "5", "REGISTRY_POOL_MAX": "4"}, "1 <= min <= max"),
        ({"REGISTRY_POOL_MIN": "0"}, "1 <= min <= max"),
        ({"REGISTRY_POOL_MIN": "four"}, "must be a number"),
        ({"REGISTRY_ATTESTATION_LIFETIME_S": "soon"}, "must be a number"),
        ({"REGISTRY_AGENCY_REFRESH_S": "x"}, "must be a number"),
        ({"REGISTRY_METRICS_LISTEN": "0.0.0.0:9464"}, "REGISTRY_METRICS_LISTEN"),
        ({"REGISTRY_CHANGE_RETENTION_DAYS": "0.5"}, "at least 1"),
        ({"REGISTRY_AUDIT_CHECKPOINT_S": "60"}, "at most 10"),
        ({"REGISTRY_LISTEN": "0.0.0.0:6000", "REGISTRY_ALLOW_INSECURE_LISTEN": "no"}, "plaintext"),
    ],
)
def test_unsafe_or_malformed_settings_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
