"""RegisterBirth through a real channel: parents, registered late, unknown, born after the child
or under a cancelled PIN.
"""

from __future__ import annotations

import grpc

from tests.grpc.births import (
    FEMALE,
    MALE,
    NOBODY,
    NOBODY_2,
    assert_pin_for,
    register,
    snapshot,
)
from tests.helpers import birth_request, call_error, date

# -- parents --------------------------------------------------------------------------------


def test_child_is_linked_to_parents_registered_late(civil, agency, db):
    father = register(
        civil, agency, full_name="Ngô Văn Cha", sex=MALE, date_of_birth=date(1985, 4, 2)
    )
    mother = register(
        civil, agency, full_name="Đặng Thị Mẹ", sex=FEMALE, date_of_birth=date(1988, 9, 0)
    )
    assert_pin_for(father.pin, "001", MALE, 1985)
    assert_pin_for(mother.pin, "001", FEMALE, 1988)
    child = register(
        civil,
        agency,
        full_name="Ngô Thị Con",
        sex=FEMALE,
        father_pin=father.pin,
        mother_pin=mother.pin,
    )
    assert child.father_pin == father.pin
    assert child.mother_pin == mother.pin
    row = db.fetch("SELECT father_pin, mother_pin FROM citizens WHERE pin = $1", child.pin)[0]
    assert (row["father_pin"], row["mother_pin"]) == (father.pin, mother.pin)


def test_only_one_parent_may_be_given(civil, agency):
    mother = register(civil, agency, sex=FEMALE, date_of_birth=date(1990, 1, 1))
    child = register(civil, agency, mother_pin=mother.pin)
    assert child.mother_pin == mother.pin
    assert child.father_pin == ""


def test_unknown_father_is_failed_precondition_and_writes_nothing(civil, agency, db):
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth, birth_request(father_pin=NOBODY), metadata=agency.metadata()
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.preconditions == [("PARENT_NOT_FOUND", "father_pin")]
    assert snapshot(db) == before


def test_both_unknown_parents_are_named(civil, agency, db):
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth,
        birth_request(father_pin=NOBODY, mother_pin=NOBODY_2),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert sorted(err.preconditions) == [
        ("PARENT_NOT_FOUND", "father_pin"),
        ("PARENT_NOT_FOUND", "mother_pin"),
    ]
    assert snapshot(db) == before


def test_parent_born_after_the_child_is_refused(civil, agency, db):
    parent = register(civil, agency, sex=MALE, date_of_birth=date(2001, 5, 5))
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth,
        birth_request(date_of_birth=date(2000, 1, 1), father_pin=parent.pin),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.preconditions == [("PARENT_BORN_AFTER_CHILD", "father_pin")]
    assert snapshot(db) == before


def test_parent_born_the_same_day_as_the_child_is_refused(civil, agency, db):
    parent = register(civil, agency, sex=FEMALE, date_of_birth=date(2003, 3, 3))
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth,
        birth_request(date_of_birth=date(2003, 3, 3), mother_pin=parent.pin),
        metadata=agency.metadata(),
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.preconditions == [("PARENT_BORN_AFTER_CHILD", "mother_pin")]
    assert snapshot(db) == before


def test_parent_with_a_cancelled_pin_is_refused(civil, agency, db):
    old = register(
        civil, agency, full_name="Trịnh Văn Cũ", sex=MALE, date_of_birth=date(1970, 1, 1)
    )
    new = register(
        civil, agency, full_name="Trịnh Văn Cũ", sex=MALE, date_of_birth=date(1971, 1, 1)
    )
    db.execute(
        "UPDATE citizens SET status = 4, replaced_by_pin = $2 WHERE pin = $1", old.pin, new.pin
    )
    before = snapshot(db)
    err = call_error(
        civil.RegisterBirth, birth_request(father_pin=old.pin), metadata=agency.metadata()
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.preconditions == [("PARENT_PIN_CANCELLED", "father_pin")]
    assert new.pin in err.message
    assert snapshot(db) == before
    # The replacement PIN works.
    assert register(civil, agency, father_pin=new.pin).father_pin == new.pin
