"""Bulk at national speed (issue 16, SPEC §10): the chunked streams beside their limits.

Printed, one run:
- ImportCitizenBatches: records/s through one stream (batches of BATCH records, the Python
  grpc.aio client), beside a raw COPY of the same rows into a copy of citizens with the same
  indexes (the database's own limit for this work), ratio printed;
- `registry import FILE.csv` of other new rows: rows/s end to end (the CLI's own summary);
- VerifyIdentityBatches: verifications/s on one stream with per-item audit on;
- `registry-client batch-verify FILE.csv` of BENCH_CSV_VERIFY_ROWS rows (1,000,000 by default)
  end to end: the command's own wall time, from start to the result file written, beside the
  issue's 30 s for a million (scaled to the rows run).
The per-record RPCs' figures (ImportCitizens, BatchVerify) come from bench.imports and
bench.verify in the same `make bench` run.

The register holds BENCH_CITIZENS citizens (bench.verify; 200,000 by default so that a run
takes minutes on a shared 2-core machine; 1,000,000 for the issue's figures).
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench import imports, verify
from bench.common import ROOT, bench_database, prepare, server_process, token
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import identity_service_pb2_grpc as id_grpc
from registry.v1 import population_service_pb2 as pb
from registry.v1 import population_service_pb2_grpc as pb_grpc

TARGET_PER_S = 50_000
IMPORT_RECORDS = int(os.environ.get("BENCH_IMPORT_RECORDS", "100000"))
VERIFY_REQUESTS = int(os.environ.get("BENCH_VERIFY_REQUESTS", "200000"))
CSV_VERIFY_ROWS = int(os.environ.get("BENCH_CSV_VERIFY_ROWS", "1000000"))
CSV_VERIFY_TARGET_S = 30.0  # for 1,000,000 rows
CLIENT = ROOT / "clients" / "python"
BATCH = int(os.environ.get("BENCH_BATCH", "5000"))


async def _import_stream(
    target: str, md: tuple[tuple[str, str], ...], records: list[pb.ImportCitizensRequest]
) -> tuple[float, list[pb.ImportCitizenBatchesResponse]]:
    import_id = f"bench-{uuid.uuid4().hex[:8]}"
    batches = [
        pb.ImportCitizenBatchesRequest(
            import_id=import_id, offset=i, records=records[i : i + BATCH]
        )
        for i in range(0, len(records), BATCH)
    ]

    async def outgoing() -> AsyncIterator[pb.ImportCitizenBatchesRequest]:
        for batch in batches:
            yield batch

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PopulationServiceStub(channel)
        started = time.perf_counter()
        acks = [a async for a in stub.ImportCitizenBatches(outgoing(), metadata=md, timeout=900)]
        return time.perf_counter() - started, acks


async def _copy_same_indexes(dsn: str, records: list[pb.ImportCitizensRequest]) -> float:
    """COPY the rows as stored into a scratch table LIKE citizens INCLUDING INDEXES, holding
    as many rows as citizens does (the same index depth)."""
    rows = []
    for i, r in enumerate(records):
        c, d = r.citizen, r.citizen.date_of_birth
        rows.append(
            (
                f"8{i:011d}", c.full_name, d.year, d.month or None, d.day or None, c.sex,
                c.registration_province_code, c.hometown, c.ethnicity, c.nationality, "bench",
            )
        )  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_copy_target")
        await conn.execute(
            "CREATE UNLOGGED TABLE bench_copy_target (LIKE citizens INCLUDING DEFAULTS "
            "INCLUDING INDEXES)"
        )
        await conn.execute("ALTER TABLE bench_copy_target SET LOGGED")
        await conn.execute("INSERT INTO bench_copy_target SELECT * FROM citizens")
        await conn.execute("ANALYZE bench_copy_target")
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "bench_copy_target",
            records=rows,
            columns=[
                "pin", "full_name", "birth_year", "birth_month", "birth_day", "sex",
                "registration_province_code", "hometown", "ethnicity", "nationality",
                "created_by",
            ],
        )  # fmt: skip
        return time.perf_counter() - started
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_copy_target")
        await conn.close()


def _cli_import(dsn: str, agency_id: str, records: list[pb.ImportCitizensRequest]) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        path = Path(tmp) / "population.csv"
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(
                ["source_id", "full_name", "date_of_birth", "sex",
                 "registration_province_code", "hometown", "ethnicity", "nationality"]
            )  # fmt: skip
            for r in records:
                c, d = r.citizen, r.citizen.date_of_birth
                born = "-".join(str(p) for p in (d.year, d.month, d.day) if p)
                writer.writerow(
                    [f"cli-{r.source_id}", c.full_name, born, "MF"[c.sex - 1],
                     c.registration_province_code, c.hometown, c.ethnicity, c.nationality]
                )  # fmt: skip
        env = {**os.environ, "REGISTRY_DATABASE_URL": dsn, "REGISTRY_OWNER_DATABASE_URL": dsn}
        done = subprocess.run(
            [str(Path(sys.executable).parent / "registry"), "import", str(path),
             "--agency", agency_id],
            env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT,
        )  # fmt: skip
        if done.returncode != 0:
            return f"failed: {done.stderr.strip()[-300:]}"
        return done.stdout.strip().splitlines()[0]


async def _verify_stream(
    target: str, md: tuple[tuple[str, str], ...], requests: Sequence[id_pb.VerifyIdentityRequest]
) -> tuple[float, int, dict[int, int]]:
    batches = [
        id_pb.VerifyIdentityBatchesRequest(requests=requests[i : i + BATCH])
        for i in range(0, len(requests), BATCH)
    ]

    async def outgoing() -> AsyncIterator[id_pb.VerifyIdentityBatchesRequest]:
        for batch in batches:
            yield batch

    results: dict[int, int] = {}
    answered = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = id_grpc.IdentityServiceStub(channel)
        started = time.perf_counter()
        async for answer in stub.VerifyIdentityBatches(outgoing(), metadata=md, timeout=900):
            answered += len(answer.responses)
            for r in answer.responses:
                results[r.result] = results.get(r.result, 0) + 1
        return time.perf_counter() - started, answered, results


def _csv_verify(
    target: str, agency_id: str, kid: str, key: ec.EllipticCurvePrivateKey, claims: list[Any]
) -> tuple[float, str]:
    """Run `registry-client batch-verify` on a CSV of the claims; return (seconds, summary)."""
    subprocess.run([sys.executable, str(CLIENT / "generate.py")], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="bench-batch-verify-") as tmp:
        source, pem = Path(tmp) / "customers.csv", Path(tmp) / "agency.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        with source.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["id", "pin", "full_name", "date_of_birth", "sex", "card_serial"])
            for i, c in enumerate(claims):
                d = c.date_of_birth
                born = f"{d.year:04d}" + (f"-{d.month:02d}" if d.month else "")
                born += f"-{d.day:02d}" if d.day else ""
                sex = ("", "MALE", "FEMALE")[c.sex]
                writer.writerow([f"c{i}", c.pin, c.full_name, born, sex, c.card_serial])
        env = {**os.environ, "PYTHONPATH": str(CLIENT / "src")}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "registry_client.cli", "batch-verify", str(source),
             "--target", target, "--agency", agency_id, "--kid", kid, "--key", str(pem)],
            env=env, capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            return seconds, f"failed: {done.stderr.strip()[-300:]}"
        return seconds, done.stdout.strip().splitlines()[-1].split("; results in")[0]


def main() -> dict[str, float]:
    with bench_database() as dsn:
        agency_id, kid, key = asyncio.run(prepare(dsn))  # migrates a new database first
        samples = asyncio.run(verify.ensure_citizens(dsn))
        citizens = asyncio.run(_count(dsn))
        records = imports._records(IMPORT_RECORDS)
        cli_records = imports._records(IMPORT_RECORDS)
        requests = verify.build_requests(samples, VERIFY_REQUESTS, seed=7)
        with server_process(dsn) as server:
            md = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
            seconds, acks = asyncio.run(_import_stream(server.target, md, records))
            verify_seconds, answered, results = asyncio.run(
                _verify_stream(server.target, md, requests)
            )
            claims = verify.build_requests(samples, CSV_VERIFY_ROWS, seed=8)
            csv_seconds, csv_line = _csv_verify(server.target, agency_id, kid, key, claims)
            del claims
        copy_seconds = asyncio.run(_copy_same_indexes(dsn, records))
        cli_line = _cli_import(dsn, agency_id, cli_records)
    received = sum(a.received for a in acks)
    rate, copy_rate = received / seconds, len(records) / copy_seconds
    target = TARGET_PER_S if copy_rate >= 60_000 else 0.8 * copy_rate
    print(
        f"bulk import: {rate:,.0f} records/s through one ImportCitizenBatches stream "
        f"({received:,} records in batches of {BATCH:,}, {seconds:.1f} s: created "
        f"{sum(a.created for a in acks):,}, PINs assigned {sum(a.assigned_pins for a in acks):,}, "
        f"duplicates {sum(a.duplicates for a in acks):,}, rejected "
        f"{sum(a.rejected for a in acks):,}; onto {citizens:,} citizens); raw COPY of the same "
        f"rows into a copy of citizens with its indexes {copy_rate:,.0f} rows/s -> "
        f"{rate / copy_rate:.2f}x COPY; target {target:,.0f}/s "
        f"({'MET' if rate >= target else 'NOT MET'})"
    )
    cli_rate = (
        float(m.group(1).replace(",", ""))
        if (m := re.search(r"([\d,]+) rows/s", cli_line))
        else 0.0
    )
    print(
        f"bulk import: registry import of a {len(cli_records):,}-row CSV: {cli_line} -> "
        f"{cli_rate / copy_rate:.2f}x COPY; target {target:,.0f}/s "
        f"({'MET' if cli_rate >= target else 'NOT MET'})"
    )
    verify_rate = answered / verify_seconds
    print(
        f"bulk verify: {verify_rate:,.0f} verifications/s on one VerifyIdentityBatches stream "
        f"(batches of {BATCH:,}, {answered:,} answers in {verify_seconds:.1f} s, one audit "
        f"entry per check; {verify._results(results)}); target {TARGET_PER_S:,}/s "
        f"({'MET' if verify_rate >= TARGET_PER_S else 'NOT MET'})"
    )
    csv_target_s = CSV_VERIFY_TARGET_S * CSV_VERIFY_ROWS / 1_000_000
    print(
        f"bulk verify: registry-client batch-verify of a {CSV_VERIFY_ROWS:,}-row CSV end to end "
        f"(start to result file, its defaults: 2 streams, batches of 2,000): {csv_seconds:.1f} s, "
        f"{CSV_VERIFY_ROWS / csv_seconds:,.0f} rows/s ({csv_line}); target < {csv_target_s:.1f} s "
        f"({'MET' if csv_seconds < csv_target_s else 'NOT MET'})"
    )
    return {"import_per_s": rate, "copy_per_s": copy_rate, "cli_per_s": cli_rate,
            "verify_per_s": verify_rate, "csv_verify_s": csv_seconds}  # fmt: skip


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM citizens"))
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
