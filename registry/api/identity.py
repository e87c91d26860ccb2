"""IdentityService: verification and lookups for portals, banks and agencies.

Only ResolveLegacyId is implemented so far; the other RPCs answer UNIMPLEMENTED (the generated
base class) until their issue lands.
"""

from __future__ import annotations

import grpc

from registry import card_issuance, cards
from registry.db.pool import Database
from registry.registration import Violations
from registry.v1 import identity_service_pb2 as pb
from registry.v1 import identity_service_pb2_grpc as pb_grpc


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    """Answer who a number belongs to."""

    def __init__(self, db: Database):
        self._db = db

    async def ResolveLegacyId(
        self, request: pb.ResolveLegacyIdRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveLegacyIdResponse:
        v = Violations()
        legacy_id = cards.validate_legacy_id(v, "legacy_id", request.legacy_id)
        v.raise_if_any()
        return pb.ResolveLegacyIdResponse(
            pin=await card_issuance.resolve_legacy_id(self._db, legacy_id)
        )
