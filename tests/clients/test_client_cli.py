"""The `registry-client` command (clients/python), run in-process against the test server."""

from __future__ import annotations

import csv
import json
from typing import Any

import pytest

from tests.conftest import private_pem


@pytest.fixture(scope="module")
def cli(registry_client: Any) -> Any:
    from registry_client import cli

    return cli


@pytest.fixture(scope="module")
def connection(server, make_agency, tmp_path_factory) -> list[str]:
    agency = make_agency(fields=("full_name", "sex"), miss_budget=1_000_000)
    key = tmp_path_factory.mktemp("cli") / "agency.pem"
    key.write_text(private_pem(agency.private_key))
    return ["--target", server.target, "--agency", agency.id, "--kid", "k1", "--key", str(key)]


def run(cli: Any, capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_keygen_writes_a_key_pair(cli, capsys, tmp_path):
    code, out, _ = run(cli, capsys, "keygen", "--out", str(tmp_path / "a.pem"))
    assert code == 0 and "public key" in out
    assert (tmp_path / "a.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_register_verify_get_watch_and_batch_verify(cli, capsys, connection, tmp_path, db):
    code, out, err = run(
        cli, capsys, "register-birth", *connection, "--name", "Đặng Thị Thu", "--sex",
        "FEMALE", "--born", "2026-11-01", "--province", "048", "--place-of-birth",
        "Bệnh viện Đà Nẵng", "--hometown", "Đà Nẵng", "--authority", "UBND phường",
        "--number", "1/2026", "--json",
    )  # fmt: skip
    assert code == 0, err
    pin = json.loads(out)["pin"]
    code, out, _ = run(cli, capsys, "verify", pin, *connection, "--name", "ĐẶNG THỊ THU")
    assert code == 0 and out.startswith("MATCH (full_name yes)")
    code, out, _ = run(cli, capsys, "get", pin, *connection)
    assert code == 0 and "full_name: Đặng Thị Thu" in out and "sex: FEMALE" in out
    code, out, _ = run(cli, capsys, "watch", *connection, "--after", "0", "--limit", "1")
    assert code == 0 and len(out.strip().splitlines()) == 1
    source = tmp_path / "customers.csv"
    source.write_text(
        "id,pin,full_name\nc1," + pin + ",Đặng Thị Thu\nc2," + pin + ",Someone Else\n"
        "c3,12ab,Bad Pin\n",
        encoding="utf-8",
    )
    code, out, _ = run(cli, capsys, "batch-verify", str(source), *connection, "--batch-size", "2")
    assert code == 0, out
    assert "3 rows: ERROR 1, MATCH 1, NO_MATCH 1" in out
    # Through the chunked RPC: each check of the citizen is in her access history.
    methods = db.fetch("SELECT method FROM audit_log WHERE $1 = ANY(pins) ORDER BY seq", pin)
    assert [m["method"].rsplit("/", 1)[1] for m in methods[-2:]] == ["VerifyIdentityBatches"] * 2
    with (tmp_path / "customers.results.csv").open(encoding="utf-8") as f:
        results = {row["id"]: row["result"] for row in csv.DictReader(f)}
    assert results == {"c1": "MATCH", "c2": "NO_MATCH", "c3": "ERROR"}


def test_errors_name_the_reason_and_exit_1(cli, capsys, connection):
    code, _, err = run(cli, capsys, "get", "001099999996", *connection)
    assert code == 1 and "CITIZEN_NOT_FOUND" in err


@pytest.mark.parametrize("streams", [1, 3])
def test_batch_verify_answers_rows_it_cannot_send_in_place(
    cli, capsys, connection, tmp_path, streams
):
    # Rows are sent as the file streams; a row whose sex or date of birth cannot be put into a
    # request is answered ERROR in its own place, naming the field, and the others go on. With
    # 3 streams, the blocks of 2 rows go to a different stream each and come back in order.
    code, out, err = run(
        cli, capsys, "register-birth", *connection, "--name", "Lê Văn Bình", "--sex", "MALE",
        "--born", "2026-10-02", "--province", "001", "--place-of-birth", "Bệnh viện Bạch Mai",
        "--hometown", "Hà Nội", "--authority", "UBND phường", "--number", "2/2026", "--json",
    )  # fmt: skip
    assert code == 0, err
    pin = json.loads(out)["pin"]
    source = tmp_path / "mixed.csv"
    source.write_text(
        "sex,id,pin,date_of_birth\n"  # any column order
        f"M,r1,{pin},2026-10-02\n"
        f"MALE,r2,{pin},2026-10-02\n"
        f"MALE,r3,{pin},2026-10-xx\n"
        f"MALE,r4,{pin},2026-10-03\n"
        f"MALE,r5,{pin},\n"
        f"FEMALE,r6,{pin},2026-10\n",
        encoding="utf-8",
    )
    code, out, _ = run(
        cli, capsys, "batch-verify", str(source), *connection, "--batch-size", "2",
        "--streams", str(streams),
    )  # fmt: skip
    assert code == 0, out
    assert "6 rows: ERROR 2, MATCH 2, NO_MATCH 2" in out
    with (tmp_path / "mixed.results.csv").open(encoding="utf-8") as f:
        rows = [(r["id"], r["result"], r["error"]) for r in csv.DictReader(f)]
    assert [(i, result) for i, result, _ in rows] == [
        ("r1", "ERROR"), ("r2", "MATCH"), ("r3", "ERROR"), ("r4", "NO_MATCH"), ("r5", "MATCH"),
        ("r6", "NO_MATCH"),
    ]  # fmt: skip
    assert rows[0][2] == "sex: 'M' is not a Sex: use one of MALE, FEMALE"
    assert rows[2][2] == (
        "date_of_birth: not a date: '2026-10-xx' (use YYYY, YYYY-MM or YYYY-MM-DD)"
    )


def test_batch_verify_of_a_file_without_a_pin_column_exits_2(cli, capsys, connection, tmp_path):
    source = tmp_path / "nopin.csv"
    source.write_text("id,full_name\nc1,Lê Văn Bình\n", encoding="utf-8")
    code, out, err = run(cli, capsys, "batch-verify", str(source), *connection)
    assert code == 2 and out == ""
    assert "no 'pin' column" in err
    assert not (tmp_path / "nopin.results.csv").exists()


def test_batch_verify_takes_1_to_16_streams(cli, capsys, connection, tmp_path):
    source = tmp_path / "one.csv"
    source.write_text("id,pin,sex\nc1,001099999996,MALE\n", encoding="utf-8")
    for streams in ("0", "17"):
        code, _, err = run(
            cli, capsys, "batch-verify", str(source), *connection, "--streams", streams
        )
        assert code == 2 and f"--streams must be 1 to 16, got {streams}" in err


def test_batch_verify_with_a_key_the_registry_does_not_know_exits_1_naming_it(
    cli, capsys, connection, tmp_path
):
    # The connections' worker probe is refused too; the stream's own refusal is what is shown.
    source = tmp_path / "one.csv"
    source.write_text("id,pin,sex\nc1,001099999996,MALE\n", encoding="utf-8")
    stranger = tmp_path / "stranger.pem"
    code, _, _ = run(cli, capsys, "keygen", "--out", str(stranger))
    assert code == 0
    mine = connection[: connection.index("--key")]
    code, out, err = run(
        cli, capsys, "batch-verify", str(source), *mine, "--key", str(stranger), "--streams", "2"
    )
    assert code == 1 and out == ""
    assert "UNAUTHENTICATED" in err
