"""CivilRegistrationService: births and deaths from the justice sector's systems."""

from __future__ import annotations

import grpc

from registry.db.pool import Database
from registry.grpc import convert
from registry.grpc.calls import current_caller, touch
from registry.grpc.disclosure import CitizenAnswer, supplied_by
from registry.rules import civil_registration as registration
from registry.runtime import clock
from registry.runtime.caches import PrefixCache
from registry.usecases import civil_registration
from registry.v1 import civil_registration_service_pb2 as pb
from registry.v1 import civil_registration_service_pb2_grpc as pb_grpc

# The Citizen fields each request supplies: its caller gets them back whatever it may read.
_BIRTH_FIELDS = supplied_by(pb.RegisterBirthRequest.DESCRIPTOR)
_DEATH_FIELDS = supplied_by(pb.RegisterDeathRequest.DESCRIPTOR)
_ANNULMENT_FIELDS = supplied_by(pb.AnnulDeathRegistrationRequest.DESCRIPTOR)


class CivilRegistrationServicer(pb_grpc.CivilRegistrationServiceServicer):
    """Register births (issuing PINs) and deaths; annul deaths registered in error."""

    def __init__(self, db: Database, prefixes: PrefixCache):
        self._db = db
        self._prefixes = prefixes

    async def RegisterBirth(
        self, request: pb.RegisterBirthRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterBirthResponse:
        birth = registration.validate_birth(
            convert.raw_birth(request), self._prefixes.table, clock.today()
        )
        caller = current_caller()
        answer = CitizenAnswer(caller, _BIRTH_FIELDS)
        kept, replayed = await civil_registration.register_birth(
            self._db, caller, request.request_id, birth, answer.render, touch
        )
        citizen = answer.message(kept)
        touch(citizen.pin)  # a replay's PIN
        return pb.RegisterBirthResponse(citizen=citizen, replayed=replayed)

    async def RegisterDeath(
        self, request: pb.RegisterDeathRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterDeathResponse:
        death = registration.validate_death(convert.raw_death(request), clock.today())
        caller = current_caller()
        answer = CitizenAnswer(caller, _DEATH_FIELDS)
        kept, replayed = await civil_registration.register_death(
            self._db, caller, request.request_id, death, answer.render
        )
        return pb.RegisterDeathResponse(citizen=answer.message(kept), replayed=replayed)

    async def AnnulDeathRegistration(
        self, request: pb.AnnulDeathRegistrationRequest, context: grpc.aio.ServicerContext
    ) -> pb.AnnulDeathRegistrationResponse:
        annulment = registration.validate_annulment(convert.raw_annulment(request))
        caller = current_caller()
        answer = CitizenAnswer(caller, _ANNULMENT_FIELDS)
        kept, replayed = await civil_registration.annul_death_registration(
            self._db, caller, request.request_id, annulment, answer.render
        )
        return pb.AnnulDeathRegistrationResponse(citizen=answer.message(kept), replayed=replayed)
