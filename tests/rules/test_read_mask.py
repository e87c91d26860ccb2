"""Tests for registry.rules.identity.attestation_claims and
registry.usecases.lookup.resolve_read_mask. Pure: no server, no database.
"""

from __future__ import annotations

import pytest

from registry.rules.errors import Code, RegistryError
from registry.rules.identity import (
    attestation_claims,
    verify,
)
from registry.rules.model import CITIZEN_FIELDS, CitizenStatus, Sex
from registry.usecases.lookup import resolve_read_mask
from registry.v1 import citizen_pb2
from tests.rules.verification import (
    NAME,
    PIN,
    RECORD,
    SERIAL,
    TODAY,
    claim,
    record,
)

# -- attestation_claims -------------------------------------------------------------------------


def test_attestation_claims_state_pin_fields_results_and_agency():
    c = claim(full_name="NGUYEN VAN AN", sex=int(Sex.MALE), card_serial=SERIAL, correlation_id="r9")
    outcome = verify(c, RECORD, TODAY)
    claims = attestation_claims(c, outcome, "bank-01")
    assert claims == {
        "sub": PIN,
        "agency": "bank-01",
        "result": "NO_MATCH",
        "fields": {"full_name": False, "sex": True, "card_serial": True},
        "citizen_status": "ALIVE",
        "card_state": "ACTIVE",
        "correlation_id": "r9",
    }
    # Nothing the caller did not already send, nothing personal from the record.
    text = repr(claims)
    for secret in ("Nguyễn", "NGUYEN", "1990", "MALE"):
        assert secret not in text


def test_attestation_claims_for_not_found_and_without_correlation_id():
    c = claim(date_of_birth=(1990, 5, 17))
    claims = attestation_claims(c, verify(c, None, TODAY), "portal")
    assert claims == {"sub": PIN, "agency": "portal", "result": "NOT_FOUND", "fields": {}}


def test_attestation_claims_for_a_match_without_card():
    c = claim(full_name=NAME, date_of_birth=(1990, 5, 17))
    outcome = verify(c, record(status=CitizenStatus.DECEASED), TODAY)
    claims = attestation_claims(c, outcome, "portal")
    assert claims == {
        "sub": PIN,
        "agency": "portal",
        "result": "MATCH",
        "fields": {"full_name": True, "date_of_birth": True},
        "citizen_status": "DECEASED",
    }


# -- resolve_read_mask --------------------------------------------------------------------------

ENTITLED = frozenset({"full_name", "date_of_birth", "sex", "hometown"})


def test_citizen_fields_are_the_citizen_message_fields_in_order():
    assert tuple(f.name for f in citizen_pb2.Citizen.DESCRIPTOR.fields) == CITIZEN_FIELDS


def test_empty_mask_means_every_entitled_field_and_pin():
    assert resolve_read_mask([], ENTITLED) == [
        "pin",
        "full_name",
        "date_of_birth",
        "sex",
        "hometown",
    ]
    assert resolve_read_mask([], frozenset()) == ["pin"]
    everything = resolve_read_mask([], frozenset(CITIZEN_FIELDS))
    assert everything == list(CITIZEN_FIELDS)


def test_mask_within_entitlement():
    assert resolve_read_mask(["date_of_birth", "full_name"], ENTITLED) == [
        "pin",
        "date_of_birth",
        "full_name",
    ]
    assert resolve_read_mask(["sex", "sex"], ENTITLED) == ["pin", "sex"]


def test_pin_is_always_allowed():
    assert resolve_read_mask(["pin"], frozenset()) == ["pin"]
    assert resolve_read_mask(["full_name", "pin"], ENTITLED) == ["pin", "full_name"]


@pytest.mark.parametrize(
    ("paths", "named"),
    [
        (["nickname"], ["read_mask.paths[0]"]),
        (["full_name", "nickname"], ["read_mask.paths[1]"]),
        (["Full_Name"], ["read_mask.paths[0]"]),
        (["date_of_birth.year"], ["read_mask.paths[0]"]),
        (["bogus", "sex", "other"], ["read_mask.paths[0]", "read_mask.paths[2]"]),
        # An unknown path is a bad request even next to a forbidden one.
        (["permanent_address", "nickname"], ["read_mask.paths[1]"]),
    ],
)
def test_unknown_path_is_invalid_naming_its_index(paths, named):
    with pytest.raises(RegistryError) as info:
        resolve_read_mask(paths, ENTITLED)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert [v.field for v in info.value.field_violations] == named


def test_unknown_path_after_a_repeated_path_is_named_by_its_own_index():
    # paths[2] is the unknown one; paths[1] ("full_name") is a valid path.
    with pytest.raises(RegistryError) as info:
        resolve_read_mask(["full_name", "full_name", "nickname"], ENTITLED)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert [v.field for v in info.value.field_violations] == ["read_mask.paths[2]"]


@pytest.mark.parametrize(
    ("paths", "forbidden"),
    [
        (["permanent_address"], "permanent_address"),
        (["full_name", "permanent_address", "sex", "religion"], "permanent_address,religion"),
        (["pin", "legacy_ids"], "legacy_ids"),
    ],
)
def test_forbidden_fields_are_permission_denied_naming_exactly_them(paths, forbidden):
    with pytest.raises(RegistryError) as info:
        resolve_read_mask(paths, ENTITLED)
    error = info.value
    assert error.code == Code.PERMISSION_DENIED
    assert error.reason == "FIELDS_NOT_PERMITTED"
    assert error.metadata["fields"] == forbidden
    for name in forbidden.split(","):
        assert name in error.message
    for name in set(paths) - set(forbidden.split(",")):
        assert name not in error.metadata["fields"].split(",")
