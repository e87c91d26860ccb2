"""Identity verification speed (issue 4, item 5), on a register of at least 1,000,000 citizens.

Three figures from one run:

- unary VerifyIdentity, 64 concurrent callers: the registry (full token check) against the
  issue's reference, a bare grpc.aio server doing one asyncpg point query per call with default
  settings (bench/reference_server.py), started here in the same run; target ratio >= 1.0x;
- BatchVerify over one bidirectional stream: target >= 20,000 verifications/s;
- both on >= 1,000,000 synthetic citizens (created_by 'bench-verify'), loaded once by COPY and
  reused by later runs.

The machine's cores are shared by the client, the server under test and PostgreSQL. With
BENCH_VERIFY_PROFILE=/path set (and py-spy installed in the venv), the registry server is
profiled with `py-spy record -f raw` for 8 s of the unary measurement.
"""

from __future__ import annotations

import asyncio
import calendar
import itertools
import os
import random
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg
import grpc
from google.type import date_pb2

from bench.common import (
    CHANNELS,
    ROOT,
    bench_database,
    closed_loop,
    free_port,
    open_channels,
    percentile,
    prepare,
    server_process,
    spread_channels,
    token,
)
from registry.rules.pin import PrefixTable, Sex, bucket_for
from registry.runtime.clock import today
from registry.v1 import citizen_pb2
from registry.v1 import identity_service_pb2 as pb
from registry.v1 import identity_service_pb2_grpc as pb_grpc

TARGET_RATIO = 1.0
# Sex code in the database (0, 1, 2) -> the proto enum.
_SEX = (citizen_pb2.SEX_UNSPECIFIED, citizen_pb2.SEX_MALE, citizen_pb2.SEX_FEMALE)
TARGET_BATCH_PER_S = 20_000
CONCURRENCY = 64
DURATION_S = 10.0
WARMUP_S = 2.0
BATCH_REQUESTS = 200_000
BATCH_WARMUP_REQUESTS = 2_000

CREATED_BY = "bench-verify"
# The register the benchmarks run on; BENCH_CITIZENS=1000000 for the issue's figures (the first
# load of a million takes minutes on a 2-core machine).
CITIZENS = int(os.environ.get("BENCH_CITIZENS", "200000"))
CARD_SHARE = 0.20
SAMPLES = 200_000
CHUNK_ROWS = 100_000
SEED = 20_260_404
FIRST_BIRTH_YEAR = 1930
LAST_BIRTH_YEAR = 2025
# Buckets other benchmarks fill: births (issue 2) allocate in the current year's buckets, cards
# (issue 3) seed 096-1-90 (female, 1990, Cà Mau) from the top of its range.
_CARDS_BENCH_BUCKET = ("096", Sex.FEMALE, 1990)
# No bench-verify citizen is born in 1920: PINs of that year are unknown to the register.
_UNKNOWN_YEAR = 1920

_CITIZEN_COLUMNS = (
    "pin",
    "full_name",
    "birth_year",
    "birth_month",
    "birth_day",
    "sex",
    "place_of_birth",
    "registration_province_code",
    "hometown",
    "ethnicity",
    "nationality",
    "status",
    "death_year",
    "death_month",
    "death_day",
    "created_by",
)
_CARD_COLUMNS = (
    "serial",
    "pin",
    "kind",
    "state",
    "issue_date",
    "expiry_date",
    "issuing_authority",
    "issued_by",
)
_AUTHORITY = "Cục Cảnh sát quản lý hành chính về trật tự xã hội"

# Family names with their approximate shares of the population (percent).
_FAMILY = {
    "Nguyễn": 38.0,
    "Trần": 11.0,
    "Lê": 9.5,
    "Phạm": 7.0,
    "Hoàng": 5.1,
    "Huỳnh": 4.0,
    "Phan": 4.5,
    "Vũ": 3.9,
    "Võ": 3.0,
    "Đặng": 2.1,
    "Bùi": 2.0,
    "Đỗ": 1.4,
    "Hồ": 1.3,
    "Ngô": 1.3,
    "Dương": 1.0,
    "Lý": 0.5,
    "Trịnh": 0.5,
    "Đinh": 0.5,
    "Lương": 0.5,
    "Mai": 0.4,
    "Hà": 0.4,
    "Tô": 0.3,
    "Cao": 0.3,
    "Lâm": 0.3,
    "Chu": 0.2,
    "Tạ": 0.2,
    "Kiều": 0.1,
}
_MIDDLE = {
    Sex.MALE: ("Văn", "Hữu", "Đức", "Minh", "Quang", "Công", "Thành", "Xuân", "Đình", "Trọng"),
    Sex.FEMALE: ("Thị", "Ngọc", "Thu", "Thanh", "Kim", "Mai", "Thùy", "Hồng", "Phương", "Bích"),
}
_GIVEN = {
    Sex.MALE: [
        "An",
        "Anh",
        "Bảo",
        "Bình",
        "Cường",
        "Dũng",
        "Dương",
        "Đạt",
        "Đức",
        "Hải",
        "Hiếu",
        "Hoàng",
        "Hùng",
        "Huy",
        "Khang",
        "Khánh",
        "Khoa",
        "Kiên",
        "Long",
        "Lâm",
        "Minh",
        "Nam",
        "Nghĩa",
        "Phong",
        "Phúc",
        "Quân",
        "Quang",
        "Sơn",
        "Tài",
        "Thắng",
        "Thành",
        "Tiến",
        "Toàn",
        "Trung",
        "Tuấn",
        "Tùng",
        "Việt",
        "Vinh",
        "Vũ",
        "Lộc",
    ],
    Sex.FEMALE: [
        "An",
        "Anh",
        "Chi",
        "Dung",
        "Giang",
        "Hà",
        "Hạnh",
        "Hằng",
        "Hiền",
        "Hoa",
        "Hồng",
        "Hương",
        "Huyền",
        "Lan",
        "Linh",
        "Loan",
        "Mai",
        "My",
        "Nga",
        "Ngân",
        "Ngọc",
        "Nhung",
        "Oanh",
        "Phương",
        "Quỳnh",
        "Thảo",
        "Thu",
        "Thủy",
        "Trang",
        "Trinh",
        "Tuyết",
        "Uyên",
        "Vân",
        "Vy",
        "Yến",
    ],
}
_ETHNICITIES = ("Tày", "Thái", "Mường", "Khmer", "Hoa", "Nùng", "H'Mông", "Dao", "Ê Đê")
# Provinces with the largest registered populations get more citizens.
_BIG_PROVINCES = {"001": 4.0, "079": 4.5, "038": 1.8, "040": 1.7, "075": 1.6, "074": 1.3}


# -- the register: 1,000,000 synthetic citizens, loaded once ----------------------------------


@dataclass(frozen=True)
class Sample:
    """A citizen as the register holds them, to build claims from."""

    pin: str
    full_name: str
    birth_year: int
    birth_month: int | None
    birth_day: int | None
    sex: int
    serial: str | None


def _year_weight(year: int) -> float:
    """A rough population pyramid: few of the oldest, a bulge born 1970-2010."""
    if year < 1950:
        return 0.15 + 0.02 * (year - FIRST_BIRTH_YEAR)
    if year < 1970:
        return 0.6 + 0.02 * (year - 1950)
    return 1.0 if year <= 2010 else 0.85


def _plan(total: int, seed: int) -> list[tuple[str, Sex, int, int]]:
    """Spread `total` citizens over (province, sex, year) buckets, in PIN order."""
    rng = random.Random(seed)
    current_year = today().year
    buckets = []
    weights = []
    for code in sorted(PrefixTable.load_default()):
        for year in range(FIRST_BIRTH_YEAR, LAST_BIRTH_YEAR + 1):
            if year == current_year:
                continue
            for sex in (Sex.MALE, Sex.FEMALE):
                if (code, sex, year) == _CARDS_BENCH_BUCKET:
                    continue
                buckets.append((code, sex, year))
                weights.append(_BIG_PROVINCES.get(code, 1.0) * _year_weight(year))
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in rng.choices(range(len(buckets)), weights=weights, k=total - sum(counts)):
        counts[i] += 1
    # PIN order (PPP G YY): the primary key index then grows left to right during the load.
    plan = [(c, s, y, n) for (c, s, y), n in zip(buckets, counts, strict=True) if n]
    plan.sort(key=lambda b: str(bucket_for(b[0], b[1], b[2])))
    return plan


def _chunks(plan: list[tuple[str, Sex, int, int]]) -> list[list[tuple[str, Sex, int, int]]]:
    chunks: list[list[tuple[str, Sex, int, int]]] = [[]]
    rows = 0
    for bucket in plan:
        if rows >= CHUNK_ROWS:
            chunks.append([])
            rows = 0
        chunks[-1].append(bucket)
        rows += bucket[3]
    return chunks


def _birthday(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _expiry(born: date, issued: date) -> date | None:
    """The card law's renewal ages: a card is valid until 14, 25, 40 or 60, unless issued in
    the two years before one of those ages; from 58 on it does not expire."""
    for age in (14, 25, 40, 60):
        due = _birthday(born.year + age, born.month, born.day)
        if (due - issued).days > 730:
            return due
    return None


def _generate_chunk(
    seed: int, index: int, buckets: list[tuple[str, Sex, int, int]], last_issue: date
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Return (citizen rows, card rows) for one chunk of buckets; deterministic per chunk."""
    rng = random.Random(seed * 1000 + index)
    serial_prefix = f"VB{seed % 10_000:04d}{index:03d}"
    table = PrefixTable.load_default()
    families = list(_FAMILY)
    family_cum = list(itertools.accumulate(_FAMILY.values()))
    places = [prefix.name for prefix in table.values()]
    first_issue = date(2016, 1, 1)
    citizens: list[tuple[object, ...]] = []
    cards: list[tuple[object, ...]] = []
    serial_no = 0
    for code, sex, year, count in buckets:
        bucket = bucket_for(code, sex, year)
        place = table[code].name
        middles = _MIDDLE[sex]
        givens = _GIVEN[sex]
        # Unique within the bucket: a sample of distinct random parts.
        for random_part in sorted(rng.sample(range(1_000_000), count)):
            pin = bucket.pin(random_part)
            family = rng.choices(families, cum_weights=family_cum)[0]
            if rng.random() < 0.15:
                name = f"{family} {rng.choice(middles)} {rng.choice(middles)} {rng.choice(givens)}"
            else:
                name = f"{family} {rng.choice(middles)} {rng.choice(givens)}"
            month: int | None = rng.randint(1, 12)
            day: int | None = rng.randint(1, calendar.monthrange(year, month)[1])  # type: ignore[arg-type]
            if year < 1950 and rng.random() < 0.05:  # old records may hold the year only
                month = day = None
            death: tuple[int | None, int | None, int | None] = (None, None, None)
            status = 1
            if year < 1960 and rng.random() < 0.05:
                death_year = rng.randint(max(year + 40, 1990), LAST_BIRTH_YEAR)
                status, death = 2, (death_year, rng.randint(1, 12), rng.randint(1, 28))
            citizens.append(
                (
                    pin,
                    name,
                    year,
                    month,
                    day,
                    int(sex),
                    place,
                    code,
                    place if rng.random() < 0.7 else rng.choice(places),
                    "Kinh" if rng.random() < 0.86 else rng.choice(_ETHNICITIES),
                    "VN",
                    status,
                    *death,
                    CREATED_BY,
                )
            )
            if status != 1 or rng.random() >= CARD_SHARE:
                continue
            born = date(year, month or 1, day or 1)
            earliest = max(first_issue, born + timedelta(days=1))
            span = (last_issue - earliest).days
            if span < 0:
                continue
            issued = earliest + timedelta(days=rng.randrange(span + 1))
            cards.append(
                (
                    f"{serial_prefix}{serial_no:06d}",
                    pin,
                    1,
                    1,
                    issued,
                    _expiry(born, issued),
                    _AUTHORITY,
                    CREATED_BY,
                )
            )
            serial_no += 1
    return citizens, cards


async def _copy_chunks(
    conn: asyncpg.Connection,
    plan: list[tuple[str, Sex, int, int]],
    seed: int,
    tables: tuple[str, str],
) -> tuple[int, int]:
    """COPY the generated rows into (citizen table, card table); return the row counts."""
    chunks = _chunks(plan)
    last_issue = today() - timedelta(days=30)
    citizens_copied = cards_copied = 0

    def generate(
        index: int,
    ) -> asyncio.Task[tuple[list[tuple[object, ...]], list[tuple[object, ...]]]]:
        return asyncio.create_task(
            asyncio.to_thread(_generate_chunk, seed, index, chunks[index], last_issue)
        )

    # The next chunk is generated in a thread while PostgreSQL ingests the current one.
    pending = generate(0)
    for index in range(len(chunks)):
        citizens, cards = await pending
        if index + 1 < len(chunks):
            pending = generate(index + 1)
        await conn.copy_records_to_table(tables[0], records=citizens, columns=_CITIZEN_COLUMNS)
        await conn.copy_records_to_table(tables[1], records=cards, columns=_CARD_COLUMNS)
        citizens_copied += len(citizens)
        cards_copied += len(cards)
    return citizens_copied, cards_copied


async def _load(conn: asyncpg.Connection, existing: int) -> tuple[int, int, float]:
    """Load citizens and their cards in one transaction; return (citizens, cards, seconds).

    The first load COPYs straight into the tables. A smaller set left by an earlier version
    of this bench is topped up instead (deleting citizens is slow: every delete checks the
    un-indexed parent and spouse references of the whole table): the shortfall, plus a margin
    for PINs that happen to exist, goes through staging tables and ON CONFLICT DO NOTHING.
    """
    started = time.perf_counter()
    async with conn.transaction():
        if not existing:
            loaded, cards = await _copy_chunks(
                conn, _plan(CITIZENS, SEED), SEED, ("citizens", "cards")
            )
            return loaded, cards, time.perf_counter() - started
        shortfall = CITIZENS - existing
        seed = SEED + existing
        citizen_columns = ", ".join(_CITIZEN_COLUMNS)
        card_columns = ", ".join(_CARD_COLUMNS)
        await conn.execute(
            f"CREATE TEMP TABLE verify_citizens ON COMMIT DROP AS "
            f"SELECT {citizen_columns} FROM citizens WITH NO DATA;"
            f"CREATE TEMP TABLE verify_cards ON COMMIT DROP AS "
            f"SELECT {card_columns} FROM cards WITH NO DATA"
        )
        plan = _plan(shortfall + shortfall // 100 + 100, seed)
        await _copy_chunks(conn, plan, seed, ("verify_citizens", "verify_cards"))
        status = await conn.execute(
            f"INSERT INTO citizens ({citizen_columns}) SELECT * FROM verify_citizens "
            "ON CONFLICT (pin) DO NOTHING"
        )
        card_status = await conn.execute(
            f"""
            INSERT INTO cards ({card_columns}) SELECT k.* FROM verify_cards k
             WHERE EXISTS (SELECT 1 FROM citizens c WHERE c.pin = k.pin AND c.created_by = $1)
               AND NOT EXISTS (SELECT 1 FROM cards a WHERE a.pin = k.pin AND a.state = 1)
            ON CONFLICT DO NOTHING
            """,
            CREATED_BY,
        )
    loaded = int(status.split()[-1])
    cards = int(card_status.split()[-1])
    return loaded, cards, time.perf_counter() - started


async def ensure_citizens(dsn: str) -> list[Sample]:
    """Make sure >= 1,000,000 bench-verify citizens exist; return random samples of them."""
    conn = await asyncpg.connect(dsn)
    try:
        existing = await conn.fetchval(
            "SELECT count(*) FROM citizens WHERE created_by = $1", CREATED_BY
        )
        if existing >= CITIZENS:
            cards = await conn.fetchval(
                "SELECT count(*) FROM cards WHERE issued_by = $1", CREATED_BY
            )
            print(
                f"verify data: reusing {existing:,} citizens and {cards:,} cards "
                f"(created_by '{CREATED_BY}')"
            )
        else:
            loaded, cards, seconds = await _load(conn, existing)
            analyze_started = time.perf_counter()
            await conn.execute("ANALYZE citizens")
            await conn.execute("ANALYZE cards")
            rows = loaded + cards
            print(
                f"verify data: loaded {loaded:,} citizens + {cards:,} active cards by COPY "
                f"({'topping up ' + format(existing, ',') if existing else 'first load'}) in "
                f"{seconds:.1f} s ({rows / seconds:,.0f} rows/s), "
                f"ANALYZE {time.perf_counter() - analyze_started:.1f} s"
            )
        total = await conn.fetchval("SELECT count(*) FROM citizens")
        rows = await conn.fetch(
            """
            SELECT c.pin, c.full_name, c.birth_year, c.birth_month, c.birth_day, c.sex, k.serial
              FROM (SELECT pin, full_name, birth_year, birth_month, birth_day, sex
                      FROM citizens WHERE created_by = $1
                     ORDER BY random() LIMIT $2) c
              LEFT JOIN cards k ON k.pin = c.pin AND k.state = 1
            """,
            CREATED_BY,
            SAMPLES,
        )
    finally:
        await conn.close()
    print(f"verify data: {total:,} citizens in the table; {len(rows):,} random samples")
    return [Sample(*row) for row in rows]


# -- requests -----------------------------------------------------------------------------------


def true_claims(samples: Sequence[Sample], count: int = 20_000) -> list[pb.VerifyIdentityRequest]:
    """Claims that are true of the sampled citizens (each a MATCH, which writes only its audit
    entry): the serving path's cost, not the budgets'."""
    return [
        pb.VerifyIdentityRequest(
            pin=s.pin,
            full_name=s.full_name,
            date_of_birth=date_pb2.Date(
                year=s.birth_year, month=s.birth_month or 0, day=s.birth_day or 0
            ),
            sex=_SEX[s.sex],
        )
        for s in samples[:count]
    ]


def build_requests(
    samples: Sequence[Sample], count: int, seed: int
) -> list[pb.VerifyIdentityRequest]:
    """Claims as portals and banks send them: mostly true, some wrong, some unknown PINs.

    Every claim gives the full name, date of birth and sex; half of the citizens holding an
    active card also present its serial. Some true names come upper-cased or decomposed (NFD),
    as other systems send them.
    """
    rng = random.Random(seed)
    provinces = sorted(PrefixTable.load_default())
    requests = []
    for i in range(count):
        s = samples[i % len(samples)]
        pin, name, sex = s.pin, s.full_name, s.sex
        dob = date_pb2.Date(year=s.birth_year, month=s.birth_month or 0, day=s.birth_day or 0)
        roll = rng.random()
        if roll < 0.06:  # a PIN the register never issued
            pin = bucket_for(rng.choice(provinces), Sex(sex), _UNKNOWN_YEAR).pin(
                rng.randrange(1_000_000)
            )
        elif roll < 0.16:  # another given name
            words = name.split(" ")
            words[-1] = rng.choice([g for g in _GIVEN[Sex(sex)] if g != words[-1]])
            name = " ".join(words)
        elif roll < 0.22:  # another date of birth
            if dob.day:
                dob = date_pb2.Date(year=dob.year, month=dob.month, day=dob.day % 28 + 1)
            else:
                dob = date_pb2.Date(year=dob.year - 1)
        elif roll < 0.26:  # the other sex
            sex = 3 - sex
        elif roll < 0.32:
            name = name.upper()
        elif roll < 0.36:
            name = unicodedata.normalize("NFD", name)
        serial = s.serial if s.serial is not None and rng.random() < 0.5 else ""
        requests.append(
            pb.VerifyIdentityRequest(
                pin=pin,
                full_name=name,
                date_of_birth=dob,
                sex=_SEX[sex],
                card_serial=serial,
                correlation_id=str(i),
            )
        )
    return requests


# -- the reference server -----------------------------------------------------------------------


@contextmanager
def reference_process(dsn: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run `python -m bench.reference_server` until the block ends; yield (target, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.reference_server",
            "--dsn",
            dsn,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(60)
        if not ready or "listening" not in ready[0]:
            raise RuntimeError(f"reference server did not start (exit code {proc.poll()})")
        yield ready[0].split()[-1], proc
    finally:
        proc.terminate()
        proc.wait(30)


# -- load ---------------------------------------------------------------------------------------


@dataclass
class UnaryFigures:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    results: dict[int, int]


def _profile(pid: int, delay_s: float) -> subprocess.Popen[bytes] | None:
    """With BENCH_VERIFY_PROFILE=path, py-spy the server under test during the measurement."""
    out = os.environ.get("BENCH_VERIFY_PROFILE")
    if not out:
        return None
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen(
        [
            "sh",
            "-c",
            f"sleep {delay_s} && exec {py_spy} record -p {pid} -d 8 -f raw -o {out} --nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _unary(
    target: str, md: tuple[tuple[str, str], ...], requests: Sequence[pb.VerifyIdentityRequest]
) -> UnaryFigures:
    results: dict[int, int] = {}
    counter = itertools.count()
    n_requests = len(requests)
    # The reference server answers VerifyIdentity only: its channels are not asked their worker.
    channels = await spread_channels(target, CHANNELS, md) if md else open_channels(target)
    verifiers = [pb_grpc.IdentityServiceStub(c).VerifyIdentity for c in channels]
    try:

        async def call(i: int, n: int) -> None:
            verify = verifiers[i % len(verifiers)]
            response = await verify(requests[next(counter) % n_requests], metadata=md, timeout=30)
            results[response.result] = results.get(response.result, 0) + 1

        completed, latencies, errors = await closed_loop(
            call, CONCURRENCY, DURATION_S, warmup_s=WARMUP_S
        )
    finally:
        for channel in channels:
            await channel.close()
    return UnaryFigures(
        completed / DURATION_S,
        percentile(latencies, 0.50) * 1000,
        percentile(latencies, 0.99) * 1000,
        errors,
        results,
    )


@dataclass
class BatchFigures:
    sent: int
    answered: int
    seconds: float
    missing: int
    duplicates: int
    item_errors: int
    results: dict[int, int]

    @property
    def rate(self) -> float:
        return self.answered / self.seconds


async def _stream(
    stub: pb_grpc.IdentityServiceStub,
    md: tuple[tuple[str, str], ...],
    requests: Sequence[pb.VerifyIdentityRequest],
) -> BatchFigures:
    async def outgoing() -> AsyncIterator[pb.VerifyIdentityRequest]:
        for request in requests:
            yield request

    seen = bytearray(len(requests))
    answered = duplicates = item_errors = 0
    results: dict[int, int] = {}
    started = time.perf_counter()
    call = stub.BatchVerify(outgoing(), metadata=md, timeout=600)
    async for response in call:
        answered += 1
        index = int(response.correlation_id)
        if seen[index]:
            duplicates += 1
        seen[index] = 1
        if response.HasField("error"):
            item_errors += 1
        results[response.result] = results.get(response.result, 0) + 1
    seconds = time.perf_counter() - started
    missing = len(requests) - sum(seen)
    return BatchFigures(len(requests), answered, seconds, missing, duplicates, item_errors, results)


async def _batch(
    target: str,
    md: tuple[tuple[str, str], ...],
    warmup: Sequence[pb.VerifyIdentityRequest],
    requests: Sequence[pb.VerifyIdentityRequest],
) -> BatchFigures:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.IdentityServiceStub(channel)
        await _stream(stub, md, warmup)
        return await _stream(stub, md, requests)


def _results(results: dict[int, int]) -> str:
    total = sum(results.values()) or 1
    names = {1: "MATCH", 2: "NO_MATCH", 3: "NOT_FOUND", 0: "UNSPECIFIED"}
    return ", ".join(
        f"{names.get(k, k)} {100 * v / total:.0f}%" for k, v in sorted(results.items())
    )


def main() -> dict[str, float]:
    with bench_database() as dsn:
        agency_id, kid, key = asyncio.run(prepare(dsn))
        samples = asyncio.run(ensure_citizens(dsn))
        unary_requests = build_requests(samples, len(samples), seed=1)
        batch_warmup = build_requests(samples, BATCH_WARMUP_REQUESTS, seed=2)
        batch_requests = build_requests(samples, BATCH_REQUESTS, seed=3)
        with reference_process(dsn) as (target, _):
            reference = asyncio.run(_unary(target, (), unary_requests))
        with server_process(dsn) as server:
            md = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
            spy = _profile(server.process.pid, WARMUP_S + 1)
            registry = asyncio.run(_unary(server.target, md, unary_requests))
            if spy is not None:
                spy.wait(60)
            md = (("authorization", f"Bearer {token(agency_id, kid, key)}"),)
            batch = asyncio.run(_batch(server.target, md, batch_warmup, batch_requests))
    ratio = registry.rate / reference.rate if reference.rate else float("nan")
    print(
        f"verify unary: registry {registry.rate:,.0f} verifications/s "
        f"({CONCURRENCY} callers, {DURATION_S:.0f} s, full token check; "
        f"audit on: each answer after its entry is durable), p50 {registry.p50_ms:.1f} ms, "
        f"p99 {registry.p99_ms:.1f} ms, errors {registry.errors}; reference (bare grpc.aio, "
        f"asyncpg pool defaults) {reference.rate:,.0f}/s, p50 {reference.p50_ms:.1f} ms, "
        f"p99 {reference.p99_ms:.1f} ms, errors {reference.errors} -> ratio {ratio:.2f}x, "
        f"target {TARGET_RATIO:.1f}x ({'MET' if ratio >= TARGET_RATIO else 'NOT MET'})"
    )
    print(f"verify unary: registry answers {_results(registry.results)}")
    complete = batch.missing == 0 and batch.duplicates == 0 and batch.answered == batch.sent
    print(
        f"verify batch: {batch.rate:,.0f} verifications/s on one BatchVerify stream "
        f"({batch.sent:,} requests, {batch.answered:,} answers in {batch.seconds:.1f} s; "
        f"correlation ids: {batch.missing:,} missing, {batch.duplicates:,} duplicated, "
        f"{batch.item_errors:,} item errors; {_results(batch.results)}); "
        f"target {TARGET_BATCH_PER_S:,}/s -> ratio {batch.rate / TARGET_BATCH_PER_S:.2f}x "
        f"({'MET' if batch.rate >= TARGET_BATCH_PER_S and complete else 'NOT MET'})"
    )
    return {
        "verify_unary_per_s": registry.rate,
        "verify_unary_p99_ms": registry.p99_ms,
        "reference_unary_per_s": reference.rate,
        "reference_unary_p99_ms": reference.p99_ms,
        "verify_unary_ratio": ratio,
        "batch_verify_per_s": batch.rate,
    }


if __name__ == "__main__":
    main()
