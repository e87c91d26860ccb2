"""Imports/s: ImportCitizens over one client stream, beside a raw COPY of the same rows.

Target (issue 6): >= 50,000 records/s end to end through the stream, on a table that already
holds 1,000,000 citizens (the verification benchmark's data set, loaded on first use), with the
raw `COPY` rate of the same rows measured in the same run and the ratio printed.

The records are new people without a PIN (the allocator reserves counter ranges), spread over
every province, sex and birth year 1930-2010, with year-only, year-month and full dates.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import asyncpg
import grpc
from google.type import date_pb2

from bench import verify
from bench.common import bench_database, prepare, server_process, token
from registry.rules.pin import PrefixTable
from registry.v1 import citizen_pb2
from registry.v1 import population_service_pb2 as pb
from registry.v1 import population_service_pb2_grpc as pb_grpc

TARGET_PER_S = 50_000
RECORDS = 100_000
_SYLLABLES = ("An", "Bình", "Chi", "Dũng", "Giang", "Hà", "Khánh", "Lan", "Minh", "Nga", "Phúc")


def _records(n: int) -> list[pb.ImportCitizensRequest]:
    rng = random.Random()
    provinces = sorted(PrefixTable.load_default())
    run = uuid.uuid4().hex[:8]
    # New people every run (names have no digits): a re-run would otherwise be all duplicates.
    family = "".join(chr(ord("a") + int(c, 16)) for c in run).capitalize()
    out = []
    for i in range(n):
        year = rng.randint(1930, 2010)
        precision = rng.random()
        month = 0 if precision < 0.1 else rng.randint(1, 12)
        day = 0 if precision < 0.2 else rng.randint(1, 28)
        name = " ".join(rng.choice(_SYLLABLES) for _ in range(3))
        out.append(
            pb.ImportCitizensRequest(
                source_id=f"bench-{run}-{i}",
                citizen=citizen_pb2.Citizen(
                    full_name=f"{family} {name}",
                    date_of_birth=date_pb2.Date(year=year, month=month, day=day),
                    sex=rng.choice((citizen_pb2.SEX_MALE, citizen_pb2.SEX_FEMALE)),
                    registration_province_code=rng.choice(provinces),
                    hometown="Nam Định",
                    ethnicity="Kinh",
                    nationality="VN",
                ),
            )
        )
    return out


async def _stream(
    target: str, md: tuple[tuple[str, str], ...], records: list[pb.ImportCitizensRequest]
) -> tuple[float, pb.ImportCitizensResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PopulationServiceStub(channel)
        started = time.perf_counter()
        answer = await stub.ImportCitizens(iter(records), metadata=md, timeout=600)
        return time.perf_counter() - started, answer


async def _copy(dsn: str, records: list[pb.ImportCitizensRequest]) -> float:
    """COPY the same rows (as the importer would store them) into a scratch copy of citizens."""
    rows = []
    for i, r in enumerate(records):
        c = r.citizen
        d = c.date_of_birth
        rows.append(
            (
                f"9{i:011d}", c.full_name, d.year, d.month or None, d.day or None, c.sex,
                c.registration_province_code, c.hometown, c.ethnicity, c.nationality, "bench",
            )
        )  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TEMP TABLE copy_target (LIKE citizens INCLUDING DEFAULTS INCLUDING INDEXES)"
        )
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "copy_target",
            records=rows,
            columns=[
                "pin", "full_name", "birth_year", "birth_month", "birth_day", "sex",
                "registration_province_code", "hometown", "ethnicity", "nationality",
                "created_by",
            ],
        )  # fmt: skip
        return time.perf_counter() - started
    finally:
        await conn.close()


def main() -> dict[str, float]:
    with bench_database() as dsn:
        asyncio.run(verify.ensure_citizens(dsn))  # the 1,000,000 already in the table
        agency_id, kid, key = asyncio.run(prepare(dsn))
        md = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
        records = _records(RECORDS)
        with server_process(dsn) as server:
            seconds, answer = asyncio.run(_stream(server.target, md, records))
        copy_seconds = asyncio.run(_copy(dsn, records))
    rate = answer.received / seconds
    copy_rate = len(records) / copy_seconds
    print(
        f"imports: {rate:,.0f} records/s through one ImportCitizens stream ({answer.received:,} "
        f"records in {seconds:.1f} s: created {answer.created:,}, PINs assigned "
        f"{answer.assigned_pins:,}, duplicates {answer.duplicates:,}, rejected "
        f"{answer.rejected:,}; onto the bench register of {verify.CITIZENS:,}+ citizens); raw COPY "
        f"of the same rows into an empty table "
        f"{copy_rate:,.0f} rows/s -> {rate / copy_rate:.2f}x COPY; target {TARGET_PER_S:,}/s "
        f"-> ratio {rate / TARGET_PER_S:.2f}x ({'MET' if rate >= TARGET_PER_S else 'NOT MET'})"
    )
    return {"per_s": rate, "copy_per_s": copy_rate}


if __name__ == "__main__":
    main()
