"""The Citizen field table (registry/rules/model.py CITIZEN_FIELD_TABLE) agrees with the Citizen
message and the Citizen dataclass: the read masks, the SQL and the conversions derive from it, so
a field missing here would be silently unreadable, unstored or unsent."""

from __future__ import annotations

import dataclasses

from google.protobuf.descriptor import FieldDescriptor

from registry.rules.model import (
    CITIZEN_FIELD_TABLE,
    CITIZEN_FIELDS,
    REFERENCE_PIN_FIELDS,
    TEXT_FIELD_LIMITS,
    Citizen,
    Kind,
)
from registry.rules.updates import ELSEWHERE, OUTPUT_ONLY
from registry.v1 import citizen_pb2

MESSAGE = citizen_pb2.Citizen.DESCRIPTOR
# The proto form each kind must have: (field type, repeated, message type name or None).
PROTO_FORM = {
    Kind.TEXT: (FieldDescriptor.TYPE_STRING, False, None),
    Kind.PIN_REF: (FieldDescriptor.TYPE_STRING, False, None),
    Kind.NAMES: (FieldDescriptor.TYPE_STRING, True, None),
    Kind.DATE: (FieldDescriptor.TYPE_MESSAGE, False, "google.type.Date"),
    Kind.ENUM: (FieldDescriptor.TYPE_ENUM, False, None),
    Kind.INT: (FieldDescriptor.TYPE_INT64, False, None),
    Kind.BOOL: (FieldDescriptor.TYPE_BOOL, False, None),
    Kind.TIME: (FieldDescriptor.TYPE_MESSAGE, False, "google.protobuf.Timestamp"),
}


def test_the_table_lists_the_citizen_message_in_its_order():
    assert tuple(f.name for f in MESSAGE.fields) == CITIZEN_FIELDS
    assert len(set(CITIZEN_FIELDS)) == len(CITIZEN_FIELDS)


def test_each_kind_has_its_proto_form_and_enums_their_proto_numbers():
    for entry in CITIZEN_FIELD_TABLE:
        field = MESSAGE.fields_by_name[entry.name]
        kind, is_repeated, message = PROTO_FORM[entry.kind]
        assert (field.type, field.is_repeated) == (kind, is_repeated), entry.name
        if message is not None:
            assert field.message_type.full_name == message, entry.name
        if entry.kind is Kind.ENUM:
            assert entry.enum is not None
            numbers = {v.number for v in field.enum_type.values if v.number != 0}
            assert {int(m) for m in entry.enum if int(m) != 0} == numbers, entry.name
        else:
            assert entry.enum is None, entry.name


def test_the_dataclass_has_exactly_the_tables_fields():
    assert {f.name for f in dataclasses.fields(Citizen)} == set(CITIZEN_FIELDS)


def test_columns_follow_the_kind():
    for entry in CITIZEN_FIELD_TABLE:
        if entry.kind is Kind.DATE:
            assert len(entry.columns) == 3, entry.name
        elif entry.name == "legacy_ids":
            assert entry.columns == ()  # their own table
        else:
            assert entry.columns == (entry.name,), entry.name
    columns = [c for f in CITIZEN_FIELD_TABLE for c in f.columns]
    assert len(set(columns)) == len(columns)


def test_what_imports_and_updates_may_set():
    imported = {f.name for f in CITIZEN_FIELD_TABLE if f.imported}
    updatable = {f.name for f in CITIZEN_FIELD_TABLE if f.updatable}
    server_kept = {"legacy_ids", "replaced_by_pin", "version", "create_time", "update_time"}
    assert imported == set(CITIZEN_FIELDS) - server_kept
    # An update sets neither the PIN (re-established instead), nor the death (civil-status
    # RPCs), nor what the server keeps; status is set only on a re-established copy.
    assert updatable == imported - {"pin", "date_of_death", "pin_mismatch"}
    # UpdateCitizen's own lists: everything else is output-only or has its own RPC.
    assert updatable - set(ELSEWHERE) == set(CITIZEN_FIELDS) - OUTPUT_ONLY - set(ELSEWHERE)


def test_the_derived_lists_are_the_documented_ones():
    assert TEXT_FIELD_LIMITS == {
        "place_of_birth": 500, "hometown": 500, "ethnicity": 100, "religion": 100,
        "permanent_address": 500, "temporary_address": 500, "current_address": 500,
    }  # fmt: skip
    assert REFERENCE_PIN_FIELDS == ("father_pin", "mother_pin", "spouse_pin", "representative_pin")
