"""The closed-loop loads the benchmarks share: births and unary verifications.

Each opens its own channels (one connection each, spread evenly over the server's worker
processes: bench.common.spread_channels), runs `callers` callers back to back for `duration_s`
after a warm-up, and returns what bench.common.closed_loop measured: (completed, sorted
latencies, errors).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence

from google.type import date_pb2

from bench.common import CHANNELS, closed_loop, spread_channels
from registry.rules.pin import PrefixTable
from registry.runtime.clock import today
from registry.v1 import citizen_pb2
from registry.v1 import civil_registration_service_pb2 as civil_pb
from registry.v1 import civil_registration_service_pb2_grpc as civil_grpc
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import identity_service_pb2_grpc as id_grpc

Metadata = tuple[tuple[str, str], ...]
Measured = tuple[int, list[float], int]


async def births(
    target: str,
    md: Metadata,
    callers: int,
    duration_s: float,
    seed: int = 0,
    channels: int = CHANNELS,
) -> Measured:
    """RegisterBirth of newborns in random provinces, each with a new request_id."""
    provinces = sorted(PrefixTable.load_default())
    d = today()
    rng = random.Random(seed)
    opened = await spread_channels(target, channels, md)
    stubs = [civil_grpc.CivilRegistrationServiceStub(c) for c in opened]

    async def call(i: int, n: int) -> None:
        await stubs[i % len(stubs)].RegisterBirth(
            civil_pb.RegisterBirthRequest(
                request_id=uuid.uuid4().hex,
                full_name="Nguyễn Thị Bình",
                sex=rng.choice((citizen_pb2.SEX_MALE, citizen_pb2.SEX_FEMALE)),
                date_of_birth=date_pb2.Date(year=d.year, month=d.month, day=1),
                place_of_birth="Trạm y tế xã",
                registration_province_code=rng.choice(provinces),
                hometown="Nam Định",
                ethnicity="Kinh",
                nationality="VN",
                registration_authority="UBND xã",
                registration_number=f"{seed}-{i}-{n}",
            ),
            metadata=md,
            timeout=30,
        )

    try:
        return await closed_loop(call, callers, duration_s)
    finally:
        for channel in opened:
            await channel.close()


async def verifications(
    target: str,
    md: Metadata,
    requests: Sequence[id_pb.VerifyIdentityRequest],
    callers: int,
    duration_s: float,
    seed: int = 0,
    channels: int = CHANNELS,
) -> Measured:
    """VerifyIdentity of the given claims, each caller walking them in its own order."""
    opened = await spread_channels(target, channels, md)
    stubs = [id_grpc.IdentityServiceStub(c) for c in opened]

    async def call(i: int, n: int) -> None:
        request = requests[(seed * 104_729 + i * 7919 + n) % len(requests)]
        await stubs[i % len(stubs)].VerifyIdentity(request, metadata=md, timeout=30)

    try:
        return await closed_loop(call, callers, duration_s)
    finally:
        for channel in opened:
            await channel.close()
