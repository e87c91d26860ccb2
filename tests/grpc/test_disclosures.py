"""Every disclosure is an audited access (issue 13 items 4 and 5), through the public API.

- WatchChanges deliveries are in the access history of every citizen they named, and an
  agency receives only the change types its registration allows (asking for another is
  PERMISSION_DENIED naming it; none by default);
- reading a citizen's access history is itself an access to that citizen;
- import records that matched an existing citizen are in that citizen's history;
- confidential agencies' entries show as a law-enforcement access, without agency or
  purpose, except to callers holding `audit:read-confidential`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest

from registry.v1 import audit_service_pb2 as audit_pb
from registry.v1 import audit_service_pb2_grpc as audit_grpc
from registry.v1 import change_pb2, citizen_pb2
from registry.v1 import identity_service_pb2 as id_pb
from registry.v1 import population_service_pb2 as pop_pb
from registry.v1 import population_service_pb2_grpc as pop_grpc
from tests.grpc.watch import Watcher
from tests.helpers import birth_request, call_error, date, death_request

V1 = "/registry.v1."
BORN = change_pb2.CHANGE_TYPE_BORN
DIED = change_pb2.CHANGE_TYPE_DIED
SECRET_PURPOSE = "Dieu tra hinh su vu an 42/CSHS (mat)"


@pytest.fixture(scope="module")
def population(channel: grpc.Channel) -> Any:
    return pop_grpc.PopulationServiceStub(channel)


@pytest.fixture(scope="module")
def audit(channel: grpc.Channel) -> Any:
    return audit_grpc.AuditServiceStub(channel)


@pytest.fixture(scope="module")
def auditor(make_agency: Any) -> Any:
    """An ordinary audit:read caller (a citizens' portal)."""
    return make_agency(scopes=("audit:read",))


def history(audit: Any, reader: Any, pin: str, **md: Any) -> list[audit_pb.AccessLogEntry]:
    request = audit_pb.ListAccessLogRequest(pin=pin, page_size=1000)
    return list(audit.ListAccessLog(request, metadata=reader.metadata(**md)).entries)


def wait_for_entry(audit: Any, reader: Any, pin: str, method: str, agency_id: str) -> Any:
    """The entry appears once the delivery it records was made (the stream is read apart)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [
            e
            for e in history(audit, reader, pin)
            if e.method == V1 + method and e.agency_id == agency_id
        ]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {method} entry of {agency_id} for the citizen")


# -- WatchChanges -------------------------------------------------------------------------------

# Streams open from here rather than replaying every earlier test's events from 0.
FEED_HEAD = "SELECT coalesce(max(sequence), 0) FROM change_events"


def test_a_delivery_is_in_the_history_of_every_citizen_it_named(
    civil, population, audit, auditor, agency, make_agency, db
):
    watcher_agency = make_agency(scopes=("changes:watch",), watch_types=("BORN",))
    start = db.fetchval(FEED_HEAD)
    child = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    watcher = Watcher(population, watcher_agency, after=start)
    try:
        assert watcher.wait_for({child.pin}, 1) == [(BORN, child.pin)]
    finally:
        watcher.close()
    [entry] = wait_for_entry(audit, auditor, child.pin, "PopulationService/WatchChanges",
                             watcher_agency.id)  # fmt: skip
    assert entry.outcome == "OK"


def test_an_agency_receives_only_the_change_types_it_is_registered_for(
    civil, population, agency, make_agency, db
):
    births_only = make_agency(scopes=("changes:watch",), watch_types=("BORN",))
    refused = call_error(
        lambda: next(
            population.WatchChanges(
                pop_pb.WatchChangesRequest(types=[BORN, DIED]), metadata=births_only.metadata()
            )
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "WATCH_TYPES_NOT_PERMITTED",
    )
    assert "CHANGE_TYPE_DIED" in refused.message and "BORN" not in refused.message
    # Asking for nothing in particular is asking for what the registration allows: a death
    # reaches this watcher only as the birth it also was.
    start = db.fetchval(FEED_HEAD)
    person = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    civil.RegisterDeath(death_request(person.pin), metadata=agency.metadata())
    everything = Watcher(population, agency, after=start)
    watcher = Watcher(population, births_only, after=start)
    try:
        everything.wait_for({person.pin}, 2)  # both events are in the feed
        assert watcher.wait_for({person.pin}, 1) == [(BORN, person.pin)]
        time.sleep(0.3)
        assert watcher.about({person.pin}) == [(BORN, person.pin)]
    finally:
        watcher.close()
        everything.close()


def test_an_agency_registered_for_no_change_types_receives_none(population, make_agency):
    nothing = make_agency(scopes=("changes:watch",), watch_types=())
    refused = call_error(
        lambda: next(
            population.WatchChanges(pop_pb.WatchChangesRequest(), metadata=nothing.metadata())
        )
    )
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "WATCH_TYPES_NOT_PERMITTED",
    )


# -- the access history and imports -------------------------------------------------------------


def test_reading_a_citizens_history_is_in_that_history(civil, audit, auditor, agency):
    child = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    assert not [e for e in history(audit, auditor, child.pin) if e.agency_id == auditor.id]
    [read] = [e for e in history(audit, auditor, child.pin) if e.agency_id == auditor.id]
    assert (read.method, read.outcome) == (V1 + "AuditService/ListAccessLog", "OK")


def test_an_import_record_matching_an_existing_citizen_is_in_their_history(
    civil, population, audit, auditor, agency, make_agency
):
    existing = civil.RegisterBirth(
        birth_request(date_of_birth=date(1985, 3, 9)), metadata=agency.metadata()
    ).citizen
    importer = make_agency(scopes=("population:import",))
    same_pin = citizen_pb2.Citizen(
        pin=existing.pin,
        full_name="Trần Văn Nhập",
        date_of_birth=date(1985, 3, 9),
        sex=citizen_pb2.SEX_MALE,
        registration_province_code="001",
    )
    same_person = citizen_pb2.Citizen(
        full_name=existing.full_name,
        date_of_birth=date(1985, 3, 9),
        sex=existing.sex,
        registration_province_code=existing.registration_province_code,
    )
    records = [
        pop_pb.ImportCitizensRequest(source_id=f"s-{uuid.uuid4().hex}", citizen=c)
        for c in (same_pin, same_person)
    ]
    answer = population.ImportCitizens(iter(records), metadata=importer.metadata())
    assert (answer.duplicates, answer.created) == (2, 0)
    entries = wait_for_entry(audit, auditor, existing.pin, "PopulationService/ImportCitizens",
                             importer.id)  # fmt: skip
    assert [e.outcome for e in entries] == ["ALREADY_EXISTS"]


# -- confidential agencies ----------------------------------------------------------------------


def test_a_confidential_agencys_access_shows_without_name_or_purpose(
    civil, identity, audit, auditor, agency, make_agency
):
    police = make_agency(
        scopes=("citizen:read",), kind="POLICE", confidential=True, name="Cục CSHS"
    )
    oversight = make_agency(scopes=("audit:read", "audit:read-confidential"))
    child = civil.RegisterBirth(birth_request(), metadata=agency.metadata()).citizen
    identity.GetCitizen(
        id_pb.GetCitizenRequest(pin=child.pin), metadata=police.metadata(purpose=SECRET_PURPOSE)
    )

    [shown] = [e for e in history(audit, auditor, child.pin) if e.method.endswith("GetCitizen")]
    assert shown.confidential
    assert (shown.agency_id, shown.purpose) == ("", "")
    assert shown.agency_name == "Law-enforcement access (confidential)"
    assert shown.outcome == "OK" and shown.time.seconds > 0
    listing = audit.ListAccessLog(
        audit_pb.ListAccessLogRequest(pin=child.pin), metadata=auditor.metadata()
    )
    text = str(listing)
    for secret in (police.id, "Cục CSHS", SECRET_PURPOSE):
        assert secret not in text

    [full] = [e for e in history(audit, oversight, child.pin) if e.method.endswith("GetCitizen")]
    assert (full.agency_id, full.agency_name, full.purpose, full.confidential) == (
        police.id,
        "Cục CSHS",
        SECRET_PURPOSE,
        True,
    )
    # A token narrowed to audit:read sees what an ordinary caller sees.
    narrowed = oversight.metadata(oversight.token(scope="audit:read"))
    entries = audit.ListAccessLog(audit_pb.ListAccessLogRequest(pin=child.pin), metadata=narrowed)
    [hidden] = [e for e in entries.entries if e.method.endswith("GetCitizen")]
    assert (hidden.agency_id, hidden.purpose) == ("", "")
    # An ordinary agency's entries are unchanged.
    assert any(e.agency_id == agency.id and not e.confidential for e in entries.entries)
