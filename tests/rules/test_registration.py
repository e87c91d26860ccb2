"""Tests for registry.rules.civil_registration: validation and normalisation of birth and
death requests.

Pure: no server, no database. Every rule must name the exact field it is about, and a request
with many bad fields must name all of them in one error.
"""

from __future__ import annotations

import unicodedata
from datetime import date, timedelta
from typing import Any

import pytest

from registry.rules import civil_registration as registration
from registry.rules.civil_registration import (
    Checked,
    validate_death,
)
from registry.rules.dates import PartialDate
from registry.rules.errors import Code, RegistryError
from registry.rules.fingerprints import request_hash
from registry.rules.pin import Prefix, PrefixTable, Sex
from tests.rules.registration import (
    OTHER_PIN,
    TABLE,
    TODAY,
    VALID_PIN,
    raw_birth,
    raw_death,
    validate_birth,
)


def bad_fields(call: Any, *args: Any, **kwargs: Any) -> list[str]:
    """Run a validation that must fail; return the fields its violations name, in order."""
    with pytest.raises(RegistryError) as info:
        call(*args, **kwargs)
    error = info.value
    assert error.code is Code.INVALID_ARGUMENT
    assert error.field_violations, "INVALID_ARGUMENT without field violations"
    for violation in error.field_violations:
        assert violation.description, f"violation of {violation.field} has no description"
    return [v.field for v in error.field_violations]


def birth_fields(table: PrefixTable = TABLE, today: date = TODAY, **overrides: Any) -> list[str]:
    return bad_fields(validate_birth, raw_birth(**overrides), table, today)


def death_fields(today: date = TODAY, **overrides: Any) -> list[str]:
    return bad_fields(validate_death, raw_death(**overrides), today)


# -- valid requests and normalisation ----------------------------------------------------------


def test_valid_birth_passes_and_is_normalised() -> None:
    nfd_name = unicodedata.normalize("NFD", "  Nguyễn   Thị\u00a0 Minh   Khai ")
    assert nfd_name != unicodedata.normalize("NFC", nfd_name)
    birth = validate_birth(
        raw_birth(
            full_name=nfd_name,
            nationality=" vn ",
            registration_province_code=" 079 ",
            place_of_birth=unicodedata.normalize("NFD", "  Bệnh viện   Từ Dũ "),
            hometown="  Xã Hải Hậu,   Nam Định ",
            ethnicity=" Kinh ",
            sex=2,
            father_pin=f" {VALID_PIN} ",
            mother_pin=OTHER_PIN,
        ),
        TABLE,
        TODAY,
    )
    assert birth.full_name == unicodedata.normalize("NFC", "Nguyễn Thị Minh Khai")
    assert unicodedata.is_normalized("NFC", birth.full_name)
    assert birth.nationality == "VN"
    assert birth.registration_province_code == "079"
    assert birth.place_of_birth == unicodedata.normalize("NFC", "Bệnh viện Từ Dũ")
    assert birth.hometown == "Xã Hải Hậu, Nam Định"
    assert birth.ethnicity == "Kinh"
    assert birth.sex is Sex.FEMALE
    assert birth.date_of_birth == PartialDate(2026, 6, 1)
    assert birth.father_pin == VALID_PIN
    assert birth.mother_pin == OTHER_PIN
    assert birth.registered_on is None  # not given: the use case dates it when carried out


def test_name_case_is_kept_as_given() -> None:
    birth = validate_birth(raw_birth(full_name="nguyễn VĂN an"), TABLE, TODAY)
    assert birth.full_name == "nguyễn VĂN an"


def test_unknown_parents_are_none_and_registered_on_is_kept() -> None:
    birth = validate_birth(raw_birth(registered_on=(2026, 6, 3)), TABLE, TODAY)
    assert birth.father_pin is None
    assert birth.mother_pin is None
    assert birth.registered_on == date(2026, 6, 3)


def test_valid_death_passes() -> None:
    death = validate_death(raw_death(pin=f" {VALID_PIN} ", date_of_death=(2026, 6, 0)), TODAY)
    assert death.pin == VALID_PIN
    assert death.date_of_death == PartialDate(2026, 6)
    assert death.registration_authority == "UBND phường Láng Hạ"


# -- one rule at a time: each names its field ---------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"full_name": ""}, "full_name", id="name-empty"),
        pytest.param({"full_name": "  \u3000 \t "}, "full_name", id="name-whitespace"),
        pytest.param({"full_name": "Nguyễn Văn An 2"}, "full_name", id="name-digit"),
        pytest.param({"full_name": "Nguyễn\x00Văn An"}, "full_name", id="name-nul"),
        pytest.param({"full_name": "Nguyễn Văn\x1fAn"}, "full_name", id="name-unit-separator"),
        pytest.param({"full_name": "Nguyễn\u200bVăn An"}, "full_name", id="name-zero-width"),
        pytest.param({"full_name": "Nguyễn Văn An!"}, "full_name", id="name-symbol"),
        pytest.param({"sex": 0}, "sex", id="sex-unspecified"),
        pytest.param({"sex": 7}, "sex", id="sex-unknown-value"),
        pytest.param({"date_of_birth": (0, 0, 0)}, "date_of_birth", id="dob-missing"),
        pytest.param({"date_of_birth": (2020, 13, 1)}, "date_of_birth.month", id="dob-month-13"),
        pytest.param({"date_of_birth": (2020, 2, 30)}, "date_of_birth.day", id="dob-30-feb"),
        pytest.param({"date_of_birth": (2023, 2, 29)}, "date_of_birth.day", id="dob-29-feb-2023"),
        pytest.param({"date_of_birth": (2020, 4, 32)}, "date_of_birth.day", id="dob-day-32"),
        pytest.param({"date_of_birth": (2020, 0, 5)}, "date_of_birth.month", id="dob-day-no-month"),
        pytest.param({"date_of_birth": (0, 5, 5)}, "date_of_birth.year", id="dob-no-year"),
        pytest.param({"date_of_birth": (2026, 6, 16)}, "date_of_birth", id="dob-tomorrow"),
        pytest.param({"date_of_birth": (2026, 7, 0)}, "date_of_birth", id="dob-next-month"),
        pytest.param({"date_of_birth": (2027, 0, 0)}, "date_of_birth", id="dob-next-year"),
        pytest.param({"date_of_birth": (1899, 12, 31)}, "date_of_birth.year", id="dob-1899"),
        pytest.param({"date_of_birth": (1899, 0, 0)}, "date_of_birth.year", id="dob-1899-year"),
        pytest.param({"place_of_birth": ""}, "place_of_birth", id="place-empty"),
        pytest.param({"place_of_birth": "   "}, "place_of_birth", id="place-blank"),
        pytest.param({"place_of_birth": "Hà\x07Nội"}, "place_of_birth", id="place-control"),
        pytest.param({"place_of_birth": "x" * 501}, "place_of_birth", id="place-too-long"),
        pytest.param(
            {"registration_province_code": ""}, "registration_province_code", id="prov-empty"
        ),
        pytest.param(
            {"registration_province_code": "1"}, "registration_province_code", id="prov-1"
        ),
        pytest.param(
            {"registration_province_code": "abc"}, "registration_province_code", id="prov-abc"
        ),
        pytest.param(
            {"registration_province_code": "0001"}, "registration_province_code", id="prov-4"
        ),
        pytest.param(
            {"registration_province_code": "٠٠١"}, "registration_province_code", id="prov-arabic"
        ),
        pytest.param(
            {"registration_province_code": "999"}, "registration_province_code", id="prov-999"
        ),
        pytest.param(
            {"registration_province_code": "003"}, "registration_province_code", id="prov-gap"
        ),
        pytest.param({"hometown": ""}, "hometown", id="hometown-empty"),
        pytest.param({"hometown": " \t "}, "hometown", id="hometown-blank"),
        pytest.param({"ethnicity": ""}, "ethnicity", id="ethnicity-empty"),
        pytest.param({"ethnicity": "x" * 101}, "ethnicity", id="ethnicity-too-long"),
        pytest.param({"nationality": ""}, "nationality", id="nationality-empty"),
        pytest.param({"nationality": "Vietnam"}, "nationality", id="nationality-name"),
        pytest.param({"nationality": "VNM"}, "nationality", id="nationality-alpha3"),
        pytest.param({"nationality": "V1"}, "nationality", id="nationality-digit"),
        pytest.param({"father_pin": "00109000012"}, "father_pin", id="father-11-digits"),
        pytest.param({"father_pin": "0010900001234"}, "father_pin", id="father-13-digits"),
        pytest.param({"father_pin": "٠٠١٠٩٠٠٠٠١٢٣"}, "father_pin", id="father-arabic-indic"),
        pytest.param({"father_pin": "00109000012a"}, "father_pin", id="father-letter"),
        pytest.param({"mother_pin": "001-19-000045"}, "mother_pin", id="mother-dashes"),
        pytest.param(
            {"mother_pin": "００１１９００００４５６"}, "mother_pin", id="mother-fullwidth"
        ),
        pytest.param({"registration_authority": ""}, "registration_authority", id="authority"),
        pytest.param({"registration_number": "  "}, "registration_number", id="number-blank"),
        pytest.param({"registration_number": "x" * 65}, "registration_number", id="number-long"),
        pytest.param({"registered_on": (2026, 6, 16)}, "registered_on", id="registered-future"),
        pytest.param({"registered_on": (2026, 5, 31)}, "registered_on", id="registered-early"),
        pytest.param({"registered_on": (2026, 6, 0)}, "registered_on", id="registered-partial"),
        pytest.param({"registered_on": (2026, 0, 0)}, "registered_on", id="registered-year"),
        pytest.param({"registered_on": (2026, 2, 30)}, "registered_on.day", id="registered-30-feb"),
        pytest.param({"request_id": ""}, "request_id", id="request-id-missing"),
        pytest.param({"request_id": "abc def"}, "request_id", id="request-id-space"),
        pytest.param({"request_id": "x" * 129}, "request_id", id="request-id-129"),
        pytest.param({"request_id": "réq-1"}, "request_id", id="request-id-non-ascii"),
        pytest.param({"request_id": "req\t1"}, "request_id", id="request-id-tab"),
    ],
)
def test_birth_rule_names_its_field(overrides: dict[str, Any], field: str) -> None:
    assert birth_fields(**overrides) == [field]


def test_father_equal_to_mother_is_refused() -> None:
    fields = birth_fields(father_pin=VALID_PIN, mother_pin=VALID_PIN)
    assert len(fields) == 1
    assert fields[0] in {"father_pin", "mother_pin"}


def test_request_id_with_trailing_newline_is_refused() -> None:
    # "printable ASCII without spaces": a newline is neither. (`$` in the request_id pattern
    # also matches just before a final "\n", which lets "abc\n" through.)
    assert birth_fields(request_id="abc\n") == ["request_id"]
    assert death_fields(request_id="abc\n") == ["request_id"]


@pytest.mark.parametrize(
    "request_id", ["x" * 128, "!~", "a", "0f0c8f1e-9d4b-4a47-a3b4-3a1c2a0e0b11"]
)
def test_request_id_limits(request_id: str) -> None:
    valid = validate_birth(raw_birth(request_id=request_id), TABLE, TODAY)
    assert valid.date_of_birth == validate_birth(raw_birth(), TABLE, TODAY).date_of_birth
    assert validate_death(raw_death(request_id=request_id), TODAY) == validate_death(
        raw_death(), TODAY
    )


@pytest.mark.parametrize("request_id", ["x" * 129, "", "a b", "é", "\x7f", "tab\there"])
def test_request_id_beyond_the_limits_is_refused(request_id: str) -> None:
    assert birth_fields(request_id=request_id) == ["request_id"]
    assert death_fields(request_id=request_id) == ["request_id"]


# -- dates that must be accepted ----------------------------------------------------------------


def test_late_registration_with_year_only_is_accepted() -> None:
    birth = validate_birth(raw_birth(date_of_birth=(1950, 0, 0)), TABLE, TODAY)
    assert birth.date_of_birth == PartialDate(1950)
    assert birth.date_of_birth.month is None
    assert birth.date_of_birth.day is None


def test_year_and_month_only_is_accepted() -> None:
    birth = validate_birth(raw_birth(date_of_birth=(1988, 2, 0)), TABLE, TODAY)
    assert birth.date_of_birth == PartialDate(1988, 2)


def test_current_year_or_month_only_is_not_in_the_future() -> None:
    # The year (or month) of today is not certainly in the future.
    assert validate_birth(raw_birth(date_of_birth=(2026, 0, 0)), TABLE, TODAY).date_of_birth == (
        PartialDate(2026)
    )
    assert validate_birth(raw_birth(date_of_birth=(2026, 6, 0)), TABLE, TODAY).date_of_birth == (
        PartialDate(2026, 6)
    )


def test_born_today_and_in_1900_are_accepted() -> None:
    today = validate_birth(raw_birth(date_of_birth=(2026, 6, 15)), TABLE, TODAY)
    assert today.date_of_birth == PartialDate(2026, 6, 15)
    oldest = validate_birth(raw_birth(date_of_birth=(1900, 1, 1)), TABLE, TODAY)
    assert oldest.date_of_birth == PartialDate(1900, 1, 1)
    # ... and the days just beyond are refused: tomorrow, and before PINs exist (1900).
    assert birth_fields(date_of_birth=(2026, 6, 16)) == ["date_of_birth"]
    assert birth_fields(date_of_birth=(1899, 12, 31)) == ["date_of_birth.year"]


def test_leap_day_is_accepted_in_a_leap_year() -> None:
    birth = validate_birth(raw_birth(date_of_birth=(2024, 2, 29)), TABLE, TODAY)
    assert birth.date_of_birth == PartialDate(2024, 2, 29)


def test_registered_on_the_birth_day_or_later_in_its_year_is_accepted() -> None:
    birth = validate_birth(
        raw_birth(date_of_birth=(2026, 6, 1), registered_on=(2026, 6, 1)), TABLE, TODAY
    )
    assert birth.registered_on == date(2026, 6, 1)
    late = validate_birth(
        raw_birth(date_of_birth=(1950, 0, 0), registered_on=(1950, 12, 31)), TABLE, TODAY
    )
    assert late.registered_on == date(1950, 12, 31)


# -- the province-code table --------------------------------------------------------------------


def _table_with(*extra: Prefix) -> PrefixTable:
    return PrefixTable([*TABLE.values(), *extra])


def test_closed_province_code_is_refused() -> None:
    closed = Prefix("990", "Closed code", "abroad", date(2016, 1, 1), TODAY - timedelta(days=1))
    table = _table_with(closed)
    assert birth_fields(table, registration_province_code="990") == ["registration_province_code"]


def test_province_code_open_until_today_is_accepted() -> None:
    last_day = Prefix("990", "Closing code", "abroad", date(2016, 1, 1), TODAY)
    birth = validate_birth(
        raw_birth(registration_province_code="990"), _table_with(last_day), TODAY
    )
    assert birth.registration_province_code == "990"


def test_province_code_not_yet_open_is_refused() -> None:
    future = Prefix("991", "Future code", "abroad", TODAY + timedelta(days=1))
    table = _table_with(future)
    assert birth_fields(table, registration_province_code="991") == ["registration_province_code"]


def test_new_open_province_code_is_accepted() -> None:
    extended = Prefix("992", "Births abroad", "abroad", date(2020, 1, 1))
    birth = validate_birth(
        raw_birth(registration_province_code="992"), _table_with(extended), TODAY
    )
    assert birth.registration_province_code == "992"


# -- every bad field at once --------------------------------------------------------------------


def test_many_bad_fields_are_all_named_in_one_error() -> None:
    fields = birth_fields(
        request_id="has space",
        full_name="Nguyễn 3",
        sex=0,
        date_of_birth=(2020, 13, 40),
        place_of_birth="",
        registration_province_code="abc",
        hometown=" ",
        ethnicity="",
        nationality="Vietnam",
        father_pin="123",
        mother_pin="٠٠١١٩٠٠٠٠٤٥٦",
        registration_authority="",
        registration_number="",
        registered_on=(2030, 1, 1),
    )
    assert set(fields) == {
        "request_id",
        "full_name",
        "sex",
        "date_of_birth.month",
        "date_of_birth.day",
        "place_of_birth",
        "registration_province_code",
        "hometown",
        "ethnicity",
        "nationality",
        "father_pin",
        "mother_pin",
        "registration_authority",
        "registration_number",
        "registered_on",
    }
    assert len(fields) == len(set(fields))


def test_birth_before_1900_registration_before_it_and_bad_sex_are_all_named() -> None:
    fields = birth_fields(date_of_birth=(1899, 5, 5), registered_on=(1899, 1, 1), sex=9)
    assert set(fields) == {"date_of_birth.year", "registered_on", "sex"}


def test_violation_messages_go_into_the_error_message() -> None:
    with pytest.raises(RegistryError) as info:
        validate_birth(raw_birth(full_name="", hometown=""), TABLE, TODAY)
    assert "full_name" in info.value.message
    assert "hometown" in info.value.message


# -- deaths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"pin": ""}, "pin", id="pin-missing"),
        pytest.param({"pin": "00109000012"}, "pin", id="pin-11"),
        pytest.param({"pin": "٠٠١٠٩٠٠٠٠١٢٣"}, "pin", id="pin-arabic-indic"),
        pytest.param({"pin": "00109000012x"}, "pin", id="pin-letter"),
        pytest.param({"date_of_death": (0, 0, 0)}, "date_of_death", id="dod-missing"),
        pytest.param({"date_of_death": (2026, 6, 16)}, "date_of_death", id="dod-tomorrow"),
        pytest.param({"date_of_death": (2027, 0, 0)}, "date_of_death", id="dod-next-year"),
        pytest.param({"date_of_death": (2020, 13, 1)}, "date_of_death.month", id="dod-month"),
        pytest.param({"date_of_death": (2021, 2, 29)}, "date_of_death.day", id="dod-29-feb"),
        pytest.param({"registration_authority": " "}, "registration_authority", id="authority"),
        pytest.param({"registration_number": ""}, "registration_number", id="number"),
        pytest.param({"request_id": ""}, "request_id", id="request-id-missing"),
        pytest.param({"request_id": "a b"}, "request_id", id="request-id-space"),
        pytest.param({"request_id": "x" * 129}, "request_id", id="request-id-129"),
    ],
)
def test_death_rule_names_its_field(overrides: dict[str, Any], field: str) -> None:
    assert death_fields(**overrides) == [field]


def test_partial_death_dates_are_accepted() -> None:
    assert validate_death(raw_death(date_of_death=(1990, 0, 0)), TODAY).date_of_death == (
        PartialDate(1990)
    )
    # The current year is not certainly in the future.
    assert validate_death(raw_death(date_of_death=(2026, 0, 0)), TODAY).date_of_death == (
        PartialDate(2026)
    )


def test_death_with_many_bad_fields_names_all() -> None:
    fields = death_fields(
        request_id="",
        pin="12",
        date_of_death=(2030, 1, 1),
        registration_authority="",
        registration_number="",
    )
    assert set(fields) == {
        "request_id",
        "pin",
        "date_of_death",
        "registration_authority",
        "registration_number",
    }


def test_nationality_is_not_rewritten_into_a_code_by_case_mapping() -> None:
    # str.upper() maps "ß" to "SS" and the ligature "ﬀ" to "FF": one non-ASCII character is
    # not an ISO 3166-1 alpha-2 code and must not be accepted as (and stored as) another one.
    assert birth_fields(nationality="ß") == ["nationality"]
    assert birth_fields(nationality="ﬀ") == ["nationality"]


# -- deferral of the rules that depend on the province table ------------------------------------


def _closed_table() -> PrefixTable:
    closed = Prefix("990", "Closed", "province", date(2016, 1, 1), TODAY - timedelta(days=1))
    return PrefixTable.from_rows([*TABLE.values(), closed])


def test_a_closed_province_alone_is_deferred_until_after_the_replay_check():
    checked = registration.validate_birth(
        raw_birth(registration_province_code="990"), _closed_table(), TODAY
    )
    assert isinstance(checked, Checked)
    assert checked.value.registration_province_code == "990"
    assert [v.field for v in checked.deferred] == ["registration_province_code"]
    with pytest.raises(RegistryError) as info:
        checked.check()
    assert [v.field for v in info.value.field_violations] == ["registration_province_code"]


def test_a_closed_province_with_other_bad_fields_is_named_with_them_at_once():
    with pytest.raises(RegistryError) as info:
        registration.validate_birth(
            raw_birth(registration_province_code="990", hometown=""), _closed_table(), TODAY
        )
    fields = {v.field for v in info.value.field_violations}
    assert fields == {"registration_province_code", "hometown"}


def test_registered_on_not_given_stays_unset_so_a_retry_tomorrow_is_the_same_request():
    today = validate_birth(raw_birth(registered_on=(0, 0, 0)), TABLE, TODAY)
    tomorrow = validate_birth(raw_birth(registered_on=(0, 0, 0)), TABLE, TODAY + timedelta(days=1))
    assert today.registered_on is None
    assert request_hash("RegisterBirth", today) == request_hash("RegisterBirth", tomorrow)
