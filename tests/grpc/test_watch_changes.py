"""PopulationService.WatchChanges through the real channel: the transactional change feed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from registry.runtime import feed
from registry.v1 import card_service_pb2 as card_pb
from registry.v1 import change_pb2
from registry.v1 import population_service_pb2 as pb
from registry.v1 import population_service_pb2_grpc as pb_grpc
from tests.grpc.cards import issue, legacy, new_rid, person, revoke
from tests.grpc.watch import Watcher
from tests.helpers import birth_request, call_error, death_request

BORN = change_pb2.CHANGE_TYPE_BORN
DIED = change_pb2.CHANGE_TYPE_DIED
UPDATED = change_pb2.CHANGE_TYPE_UPDATED
CARD_ISSUED = change_pb2.CHANGE_TYPE_CARD_ISSUED
CARD_STATE_CHANGED = change_pb2.CHANGE_TYPE_CARD_STATE_CHANGED


@pytest.fixture(scope="module")
def population(channel: grpc.Channel) -> pb_grpc.PopulationServiceStub:
    return pb_grpc.PopulationServiceStub(channel)


@pytest.fixture
def watch(population, agency, db) -> Iterator[Any]:
    """Opens streams from the feed's present position unless told `after`.

    The session's register already holds every earlier test's events (tens of thousands after
    the import tests); replaying them all from 0 took over 5 s on a loaded 2-core box.
    """
    opened: list[Watcher] = []

    def open_(after: int | None = None, types: tuple = (), who: Any = agency) -> Watcher:
        if after is None:
            after = db.fetchval("SELECT coalesce(max(sequence), 0) FROM change_events")
        w = Watcher(population, who, after, types)
        opened.append(w)
        return w

    yield open_
    for w in opened:
        w.close()


def test_every_kind_of_change_appears_in_order_with_increasing_sequences(
    watch, civil, cards, agency
):
    w = watch()
    citizen = person(civil, agency)
    card = issue(cards, agency, citizen.pin).card
    revoke(cards, agency, card.serial)
    cards.LinkLegacyId(
        card_pb.LinkLegacyIdRequest(request_id=new_rid(), pin=citizen.pin, legacy_id=legacy(9)),
        metadata=agency.metadata(),
    )
    civil.RegisterDeath(death_request(citizen.pin), metadata=agency.metadata())
    got = w.wait_for({citizen.pin}, 5)
    assert got == [
        (BORN, citizen.pin),
        (CARD_ISSUED, citizen.pin),
        (CARD_STATE_CHANGED, citizen.pin),
        (UPDATED, citizen.pin),
        (DIED, citizen.pin),
    ]
    sequences = [e.sequence for e in w.events]
    assert sequences == sorted(set(sequences)), "sequences must be strictly increasing"
    assert all(e.time.seconds > 0 for e in w.events)


def test_a_new_event_reaches_an_open_stream(watch, civil, agency):
    w = watch()
    citizen = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    # A margin for a loaded machine: how soon is pinned by the next test, without timing.
    w.wait_for({citizen.pin}, 1, timeout=10.0)


def test_changes_made_through_the_server_arrive_in_milliseconds_not_by_the_safety_net(
    watch, civil, agency, monkeypatch
):
    # With the safety net stretched to 30 s, only the gate's wake-up (on_change -> feed.kick)
    # can number these events in time: no timing of the machine is involved.
    monkeypatch.setattr(feed, "SAFETY_NET_S", 30.0)
    w = watch()
    first = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    w.wait_for({first.pin}, 1, timeout=10.0)  # from now on the sequencer waits 30 s
    for _ in range(5):  # each within 10 s: the 30 s safety net cannot have numbered it
        citizen = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
        w.wait_for({citizen.pin}, 1, timeout=10.0)


def test_a_change_made_outside_the_server_arrives_within_the_safety_net(watch, civil, agency, db):
    # An operator's SQL wakes no sequencer: the one-second safety net numbers its events.
    w = watch()
    citizen = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    w.wait_for({citizen.pin}, 1)
    db.execute("UPDATE citizens SET version = version + 1 WHERE pin = $1", citizen.pin)
    # Nothing wakes the sequencer but its safety net (1 s); the bound is a margin, not a timing.
    got = w.wait_for({citizen.pin}, 2, timeout=10.0)
    assert got == [(BORN, citizen.pin), (UPDATED, citizen.pin)]


def test_a_refused_change_records_no_event(watch, civil, agency):
    w = watch()
    citizen = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    w.wait_for({citizen.pin}, 1)
    civil.RegisterDeath(death_request(citizen.pin), metadata=agency.metadata())
    call_error(civil.RegisterDeath, death_request(citizen.pin), metadata=agency.metadata())
    time.sleep(0.5)
    assert w.about({citizen.pin}) == [(BORN, citizen.pin), (DIED, citizen.pin)]


def test_resume_after_a_disconnect_misses_nothing_and_repeats_nothing(
    population, watch, civil, agency
):
    first = watch()
    before = [civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin]
    before.append(civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin)
    first.wait_for(set(before), 2)
    resume_from = first.last_sequence()
    seen_first = [e.sequence for e in first.events]
    first.close()
    # While disconnected, the register keeps changing.
    during = [
        civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin
        for _ in range(5)
    ]
    second = watch(after=resume_from)
    second.wait_for(set(during), 5)
    assert not second.about(set(before)), "events before the cursor were sent again"
    assert all(e.sequence > resume_from for e in second.events)
    assert not set(seen_first) & {e.sequence for e in second.events}


def test_types_filter_the_stream(watch, civil, cards, agency):
    w = watch(types=(CARD_ISSUED,))
    citizen = person(civil, agency)
    issue(cards, agency, citizen.pin)
    w.wait_for({citizen.pin}, 1)
    time.sleep(0.3)
    assert w.about({citizen.pin}) == [(CARD_ISSUED, citizen.pin)]


def test_concurrent_changes_each_appear_exactly_once_in_sequence_order(watch, civil, agency):
    w = watch(types=(BORN,))

    def born(_: int) -> str:
        return civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen.pin

    with ThreadPoolExecutor(8) as pool:
        pins = list(pool.map(born, range(80)))
    got = w.wait_for(set(pins), 80)
    assert sorted(pin for _, pin in got) == sorted(pins)
    time.sleep(0.3)
    assert len(w.about(set(pins))) == 80, "an event was delivered twice"
    sequences = [e.sequence for e in w.events]
    assert sequences == sorted(set(sequences))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.WatchChangesRequest(after_sequence=-1), "after_sequence"),
        (pb.WatchChangesRequest(types=[change_pb2.CHANGE_TYPE_UNSPECIFIED]), "types[0]"),
        (pb.WatchChangesRequest(types=[BORN, 99]), "types[1]"),
    ],
)
def test_invalid_requests_are_refused_naming_the_field(population, agency, request_, field):
    err = call_error(lambda: list(population.WatchChanges(request_, metadata=agency.metadata())))
    assert (err.code, err.bad_fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


def test_the_feed_needs_the_changes_watch_scope(population, make_agency):
    reader = make_agency(scopes=("citizen:read",))
    request = pb.WatchChangesRequest()
    err = call_error(lambda: list(population.WatchChanges(request, metadata=reader.metadata())))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
