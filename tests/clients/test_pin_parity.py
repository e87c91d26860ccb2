"""Client parity (issue 15 item 5): the client's offline PIN checks agree with the server's rules.

Both sides answer the same vectors (tests/vectors/pin.json) and read the same province list;
a province added on one side only, or a rule changed on one side only, turns this red.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.rules import pin
from registry.rules.pin import PinProblem, Sex

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "pin.json").read_text("utf-8"))

# How the client words each of the server's problems (registry_client.pin.validate_pin).
CLIENT_WORDS = {
    "MALFORMED": "12 ASCII digits",
    "UNKNOWN_PREFIX": "is not one of the 63 province codes",
    "SEX_MISMATCH": "century/sex digit {g} is for a",
    "CENTURY_MISMATCH": "is for births in",
    "YEAR_MISMATCH": "year digits",
}


def _id(case: dict[str, Any]) -> str:
    return f"{case['pin']!r}-{case['sex']}-{case['birth_year']}"


@pytest.mark.parametrize(
    "case", VECTORS["century_sex_digit"], ids=lambda c: f"{c['year']}-{c['sex']}"
)
def test_century_sex_digit_is_the_same_on_both_sides(registry_client: Any, case) -> None:
    year, digit = case["year"], case["digit"]
    assert pin.century_sex_digit(year, Sex[case["sex"]]) == digit
    client_sex = registry_client.Sex[case["sex"]]
    assert registry_client.pin.century_sex_digit(year, client_sex) == digit


@pytest.mark.parametrize("case", VECTORS["checks"], ids=_id)
def test_the_server_finds_exactly_the_problems_of_the_vector(case) -> None:
    sex = Sex[case["sex"]] if case["sex"] else None
    found = pin.check_structure(
        case["pin"], pin.PrefixTable.load_default(), sex=sex, birth_year=case["birth_year"]
    )
    assert [p.value for p in found] == case["problems"]


@pytest.mark.parametrize("case", VECTORS["checks"], ids=_id)
def test_the_client_finds_exactly_the_problems_of_the_vector(registry_client: Any, case) -> None:
    found = registry_client.validate_pin(case["pin"], case["sex"], case["birth_year"])
    assert len(found) == len(case["problems"]), found
    g = case["pin"][3] if len(case["problems"]) and case["problems"] != ["MALFORMED"] else ""
    for problem, text in zip(case["problems"], found, strict=True):
        assert CLIENT_WORDS[problem].format(g=g) in text, (problem, text)


def test_both_sides_know_the_same_provinces_by_the_same_names(registry_client: Any) -> None:
    server = {code: prefix.name for code, prefix in pin.PrefixTable.load_default().items()}
    assert registry_client.province_codes() == server
    assert len(server) == 63


def test_the_vectors_cover_every_problem_the_server_can_find() -> None:
    named = {p for case in VECTORS["checks"] for p in case["problems"]}
    assert named == {p.value for p in PinProblem}
