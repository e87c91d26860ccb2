"""IdentityService.GetCitizen through a real channel: field policy and read_mask errors, replaced
PINs, scopes.
"""

from __future__ import annotations

import grpc

from registry.rules.model import CITIZEN_FIELDS
from tests.grpc.cards import (
    NOBODY,
    cancel_pin,
    person,
)
from tests.grpc.identity import (
    ALIVE,
    DENIED,
    DOB,
    INVALID,
    MALE,
    NAME,
    get_citizen,
    set_fields,
)
from tests.helpers import DEFAULT_BIRTH, call_error

# -- GetCitizen ---------------------------------------------------------------------------------


def test_get_citizen_returns_only_entitled_fields(civil, identity, agency, make_agency):
    citizen = person(civil, agency, dob=DOB)
    reader = make_agency(scopes=("citizen:read",), fields=("full_name", "date_of_birth"))
    response = get_citizen(identity, reader, citizen.pin)
    assert set_fields(response.citizen) == {"pin", "full_name", "date_of_birth"}
    assert response.citizen.pin == citizen.pin
    assert response.citizen.full_name == NAME
    assert (response.citizen.date_of_birth.year, response.citizen.date_of_birth.month) == (2000, 5)
    assert response.citizen.date_of_birth.day == 10
    assert response.pin_replaced is False

    response = get_citizen(identity, reader, citizen.pin, "full_name")
    assert set_fields(response.citizen) == {"pin", "full_name"}
    response = get_citizen(identity, reader, citizen.pin, "pin")
    assert set_fields(response.citizen) == {"pin"}


def test_get_citizen_empty_mask_is_everything_entitled(civil, identity, agency, make_agency):
    citizen = person(civil, agency, dob=DOB)
    entitled = ("full_name", "sex", "hometown", "ethnicity", "nationality", "status", "version")
    reader = make_agency(scopes=("citizen:read",), fields=entitled)
    visible = get_citizen(identity, reader, citizen.pin).citizen
    assert set_fields(visible) == {"pin", *entitled}
    assert visible.hometown == DEFAULT_BIRTH["hometown"]
    assert visible.ethnicity == "Kinh"
    assert visible.nationality == "VN"
    assert visible.sex == MALE
    assert visible.status == ALIVE
    assert visible.version >= 1
    assert visible.place_of_birth == ""
    assert not visible.HasField("date_of_birth")

    # Entitled to everything: the whole record.
    everything = make_agency(scopes=("citizen:read",), fields=tuple(CITIZEN_FIELDS))
    full = get_citizen(identity, everything, citizen.pin).citizen
    assert full.place_of_birth == DEFAULT_BIRTH["place_of_birth"]
    assert full.registration_province_code == "001"
    assert full.HasField("create_time")
    assert full.full_name == citizen.full_name

    # Entitled to nothing: only the PIN asked about.
    nothing = make_agency(scopes=("citizen:read",), fields=())
    assert set_fields(get_citizen(identity, nothing, citizen.pin).citizen) == {"pin"}


def test_get_citizen_mask_naming_forbidden_fields_is_denied(civil, identity, agency, make_agency):
    citizen = person(civil, agency)
    reader = make_agency(scopes=("citizen:read",), fields=("full_name", "date_of_birth"))
    error = call_error(get_citizen, identity, reader, citizen.pin, "hometown")
    assert error.code == DENIED
    assert error.reason == "FIELDS_NOT_PERMITTED"
    assert error.metadata["fields"] == "hometown"
    error = call_error(
        get_citizen,
        identity,
        reader,
        citizen.pin,
        "full_name",
        "permanent_address",
        "date_of_birth",
        "legacy_ids",
    )
    assert error.code == DENIED
    assert error.metadata["fields"] == "permanent_address,legacy_ids"
    assert error.message == "this agency is not registered to read: permanent_address, legacy_ids"


def test_get_citizen_unknown_path_is_invalid(civil, identity, agency, make_agency):
    citizen = person(civil, agency)
    reader = make_agency(scopes=("citizen:read",), fields=("full_name",))
    error = call_error(get_citizen, identity, reader, citizen.pin, "full_name", "shoe_size")
    assert error.code == INVALID
    assert error.bad_fields == ["read_mask.paths[1]"]
    assert error.bad_descriptions == ["'shoe_size' is not a Citizen field"]


def test_get_citizen_unknown_and_malformed_pin(identity, agency, make_agency):
    reader = make_agency(scopes=("citizen:read",), fields=("full_name",))
    error = call_error(get_citizen, identity, reader, NOBODY)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "CITIZEN_NOT_FOUND")
    assert (error.message, error.metadata) == (f"no citizen has PIN {NOBODY}", {"pin": NOBODY})
    error = call_error(get_citizen, identity, reader, "0010900")
    assert error.code == INVALID
    assert error.bad_fields == ["pin"]


def test_get_citizen_cancelled_pin_resolves_to_its_replacement(
    civil, identity, agency, make_agency, db
):
    old = person(civil, agency, dob=DOB)
    new = person(civil, agency, dob=(1995, 2, 3), full_name="Nguyễn Văn An Mới")
    cancel_pin(db, old.pin, new.pin)
    reader = make_agency(scopes=("citizen:read",), fields=("full_name", "date_of_birth"))
    response = get_citizen(identity, reader, old.pin)
    assert response.pin_replaced is True
    assert response.citizen.pin == new.pin
    assert response.citizen.full_name == "Nguyễn Văn An Mới"
    assert response.citizen.date_of_birth.year == 1995
    assert set_fields(response.citizen) == {"pin", "full_name", "date_of_birth"}
    direct = get_citizen(identity, reader, new.pin)
    assert direct.pin_replaced is False
    assert direct.citizen == response.citizen


def test_get_citizen_needs_citizen_read(civil, identity, agency, make_agency):
    citizen = person(civil, agency)
    verifier = make_agency(scopes=("identity:verify",), fields=("full_name",))
    error = call_error(get_citizen, identity, verifier, citizen.pin)
    assert error.code == DENIED
    assert error.metadata.get("required_scope") == "citizen:read"
