"""CivilRegistrationService: births and deaths from the justice sector's systems."""

from __future__ import annotations

import grpc

from registry import civil_registration, clock, registration
from registry.api import convert
from registry.api.caches import PrefixCache
from registry.api.gate import current_caller, touch
from registry.db.pool import Database
from registry.v1 import civil_registration_service_pb2 as pb
from registry.v1 import civil_registration_service_pb2_grpc as pb_grpc


class CivilRegistrationServicer(pb_grpc.CivilRegistrationServiceServicer):
    """Register births (issuing PINs) and deaths."""

    def __init__(self, db: Database, prefixes: PrefixCache):
        self._db = db
        self._prefixes = prefixes

    async def RegisterBirth(
        self, request: pb.RegisterBirthRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterBirthResponse:
        birth = registration.validate_birth(
            convert.raw_birth(request), self._prefixes.table, clock.today()
        )
        citizen, replayed = await civil_registration.register_birth(
            self._db, current_caller(), request.request_id, birth, touch
        )
        touch(citizen.pin)  # a replay's PIN
        return pb.RegisterBirthResponse(citizen=convert.citizen(citizen), replayed=replayed)

    async def RegisterDeath(
        self, request: pb.RegisterDeathRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterDeathResponse:
        death = registration.validate_death(convert.raw_death(request), clock.today())
        citizen, replayed = await civil_registration.register_death(
            self._db, current_caller(), request.request_id, death
        )
        return pb.RegisterDeathResponse(citizen=convert.citizen(citizen), replayed=replayed)
