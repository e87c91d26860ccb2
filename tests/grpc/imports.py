"""Import records and names for the import tests (ImportCitizens, ImportCitizenBatches, the
client's batched import)."""

from __future__ import annotations

import uuid

from registry.v1 import citizen_pb2
from registry.v1 import population_service_pb2 as pb
from tests.helpers import date

MALE, FEMALE = citizen_pb2.SEX_MALE, citizen_pb2.SEX_FEMALE


def record(source_id=None, **fields):
    base = {
        "full_name": "Phạm Thị Hoa",
        "date_of_birth": date(1962, 4, 9),
        "sex": FEMALE,
        "registration_province_code": "036",
    }
    base.update(fields)
    return pb.ImportCitizensRequest(
        source_id=source_id or f"src-{uuid.uuid4().hex[:12]}", citizen=citizen_pb2.Citizen(**base)
    )


def name(given: str) -> str:
    """A name unique to this run (letters only: names have no digits)."""
    return f"{given} " + "".join(chr(ord("a") + int(c, 16)) for c in uuid.uuid4().hex[:10])


def unused_pin(province="036", g=1, yy=62) -> str:
    return f"{province}{g}{yy:02d}{uuid.uuid4().int % 10**6:06d}"
