"""The server answers a birth registration end to end through a real channel."""

from registry.rules import pin
from tests.helpers import birth_request


def test_register_birth_issues_a_valid_pin(civil, agency, db):
    response = civil.RegisterBirth(birth_request(), metadata=agency.metadata())
    issued = response.citizen.pin
    assert pin.check_structure(issued, pin.PrefixTable.load_default(), sex=pin.Sex.MALE) == []
    assert issued.startswith("001")
    assert db.fetchval("SELECT full_name FROM citizens WHERE pin = $1", issued) == "Nguyễn Văn An"
