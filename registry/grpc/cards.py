"""CardService: the police card-issuance stations."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc

from registry.db.pool import Database
from registry.grpc import convert
from registry.grpc.calls import current_caller, touch
from registry.grpc.disclosure import CitizenAnswer
from registry.rules import cards
from registry.rules.civil_registration import require_pin
from registry.runtime import clock
from registry.usecases import cards as card_issuance
from registry.usecases.budgets import Budgets
from registry.v1 import card_service_pb2 as pb
from registry.v1 import card_service_pb2_grpc as pb_grpc

R = TypeVar("R")


class CardServicer(pb_grpc.CardServiceServicer):
    """Issue, exchange, re-issue, revoke, withhold and release cards; link old numbers."""

    def __init__(self, db: Database, budgets: Budgets):
        self._db = db
        self._budgets = budgets

    async def IssueCard(
        self, request: pb.IssueCardRequest, context: grpc.aio.ServicerContext
    ) -> pb.IssueCardResponse:
        issue = cards.validate_issue(convert.raw_issue(request))
        today = clock.today()
        card, replayed = await card_issuance.issue_card(
            self._db, current_caller(), request.request_id, issue, today
        )
        reported = card_issuance.reported(card, today)
        return pb.IssueCardResponse(card=convert.card(reported), replayed=replayed)

    async def _change(self, action: str, request: Any, response: type[R]) -> R:
        change = cards.validate_state_change(action, convert.raw_state_change(request))
        card, replayed = await card_issuance.change_state(
            self._db, current_caller(), request.request_id, change, clock.today(), touch
        )
        touch(card.pin)  # also when the answer is a replay
        reported = card_issuance.reported(card, clock.today())
        return response(card=convert.card(reported), replayed=replayed)  # type: ignore[call-arg]

    async def RevokeCard(
        self, request: pb.RevokeCardRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeCardResponse:
        return await self._change("RevokeCard", request, pb.RevokeCardResponse)

    async def WithholdCard(
        self, request: pb.WithholdCardRequest, context: grpc.aio.ServicerContext
    ) -> pb.WithholdCardResponse:
        return await self._change("WithholdCard", request, pb.WithholdCardResponse)

    async def ReleaseCard(
        self, request: pb.ReleaseCardRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseCardResponse:
        return await self._change("ReleaseCard", request, pb.ReleaseCardResponse)

    async def ListCards(
        self, request: pb.ListCardsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCardsResponse:
        pin = require_pin(request.pin)
        async with self._budgets.lookup(current_caller()):
            found = await card_issuance.list_cards(self._db, pin, clock.today())
        return pb.ListCardsResponse(cards=[convert.card(c) for c in found])

    async def LinkLegacyId(
        self, request: pb.LinkLegacyIdRequest, context: grpc.aio.ServicerContext
    ) -> pb.LinkLegacyIdResponse:
        link = cards.validate_link(request.request_id, request.pin, request.legacy_id)
        caller = current_caller()
        # The number it links is what this request supplies of the record (legacy_ids).
        answer = CitizenAnswer(caller, ("pin",), legacy_ids=(link.legacy_id,))
        kept, replayed = await card_issuance.link_legacy_id(
            self._db, caller, request.request_id, link, answer.render
        )
        citizen = answer.message(kept)
        touch(citizen.pin)
        return pb.LinkLegacyIdResponse(citizen=citizen, replayed=replayed)
