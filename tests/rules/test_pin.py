"""Tests for registry.rules.pin: structure, the prefix table, buckets and key versions
(the permutation and allocation: test_pin_allocation.py)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.rules import pin
from registry.rules.pin import (
    BUCKET_SIZE,
    Bucket,
    BucketExhausted,
    Permutation,
    PinFormatError,
    PinParts,
    PinProblem,
    Prefix,
    PrefixTable,
    Sex,
)
from tests.rules.pins import KEY, TABLE

# --- prefix table ----------------------------------------------------------------------------


def test_default_table_has_the_63_provinces() -> None:
    assert len(TABLE) == 63
    assert len(list(TABLE)) == 63
    hanoi = TABLE.get("001")
    assert hanoi is not None
    assert hanoi.name == "Hà Nội"
    assert hanoi.kind == "province"
    assert hanoi.valid_to is None
    camau = TABLE.get("096")
    assert camau is not None
    assert camau.name == "Cà Mau"
    assert "000" not in TABLE
    assert TABLE.get("000") is None
    assert not TABLE.is_known("000")
    assert TABLE.is_known("079")
    assert all(len(code) == 3 and code.isascii() and code.isdigit() for code in TABLE)


def test_default_table_is_loaded_once() -> None:
    assert PrefixTable.load_default() is PrefixTable.load_default()


CLOSED = Prefix("999", "Closed", "test", date(2020, 1, 1), date(2025, 6, 30))
OPEN = Prefix("998", "Open", "test", date(2020, 1, 1), None)


def test_open_on_boundaries() -> None:
    assert not CLOSED.open_on(date(2019, 12, 31))
    assert CLOSED.open_on(date(2020, 1, 1))
    assert CLOSED.open_on(date(2025, 6, 30))
    assert not CLOSED.open_on(date(2025, 7, 1))
    assert OPEN.open_on(date(2399, 12, 31))
    assert not OPEN.open_on(date(2019, 12, 31))


def test_table_from_rows_and_issuance() -> None:
    table = PrefixTable.from_rows([CLOSED, OPEN])
    assert len(table) == 2
    assert sorted(table) == ["998", "999"]
    assert table.open_for_issuance("999", date(2025, 6, 30))
    assert not table.open_for_issuance("999", date(2025, 7, 1))
    # Closed for issuance, but numbers issued under it stay structurally valid.
    assert table.is_known("999")
    assert pin.check_structure("999012000001", table) == []
    assert not table.open_for_issuance("123", date(2025, 1, 1))


def test_table_rejects_duplicates_and_bad_prefixes() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        PrefixTable.from_rows([OPEN, OPEN])
    with pytest.raises(ValueError):
        Prefix("01", "x", "province", date(2020, 1, 1))
    with pytest.raises(ValueError):
        Prefix("٠٠١", "x", "province", date(2020, 1, 1))
    with pytest.raises(ValueError):
        Prefix("001", "x", "province", date(2020, 1, 1), date(2019, 1, 1))


def test_table_from_csv() -> None:
    table = PrefixTable.from_csv(
        [
            "code,name,kind,valid_from,valid_to\n",
            "001,Hà Nội,province,2016-01-01,\n",
            "999,Somewhere,abroad,2016-01-01,2025-06-30\n",
        ]
    )
    assert table["999"].valid_to == date(2025, 6, 30)
    assert table["001"].valid_to is None
    with pytest.raises(ValueError, match="line 2"):
        PrefixTable.from_csv(["code,name,kind,valid_from,valid_to\n", "001,x,p,2016-13-01,\n"])


# --- century and sex digit -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "male", "female"),
    [
        (1900, 0, 1),
        (1999, 0, 1),
        (2000, 2, 3),
        (2099, 2, 3),
        (2100, 4, 5),
        (2199, 4, 5),
        (2200, 6, 7),
        (2299, 6, 7),
        (2300, 8, 9),
        (2399, 8, 9),
    ],
)
def test_century_sex_digit(year: int, male: int, female: int) -> None:
    assert pin.century_sex_digit(year, Sex.MALE) == male
    assert pin.century_sex_digit(year, Sex.FEMALE) == female
    assert pin.sex_of_digit(male) is Sex.MALE
    assert pin.sex_of_digit(female) is Sex.FEMALE
    assert pin.century_of_digit(male) == pin.century_of_digit(female) == year - year % 100
    assert pin.birth_year_of(male, year % 100) == year


@pytest.mark.parametrize("year", [1899, 2400, 0, -1990])
def test_century_sex_digit_out_of_range(year: int) -> None:
    with pytest.raises(ValueError, match="1900"):
        pin.century_sex_digit(year, Sex.MALE)


def test_sex_values_match_proto() -> None:
    assert int(Sex.MALE) == 1
    assert int(Sex.FEMALE) == 2


# --- format, parse, compose ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["001090123456", "000000000000", "999999999999"])
def test_well_formed(text: str) -> None:
    assert pin.is_well_formed(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00109012345",  # 11 digits
        "0010901234567",  # 13 digits
        "001 090 123456",
        " 001090123456",
        "001090123456\n",
        "00109012345a",
        "٠٠١٠٩٠١٢٣٤٥٦",  # Arabic-Indic digits: str.isdigit() is true for them
        "00109012345٦",
        "00109012345²",
        "００１０９０１２３４５６",  # fullwidth digits
        "-01090123456",
    ],
)
def test_malformed(text: str) -> None:
    assert not pin.is_well_formed(text)
    with pytest.raises(PinFormatError):
        pin.parse(text)
    assert pin.check_structure(text, TABLE, sex=Sex.MALE, birth_year=1990) == [PinProblem.MALFORMED]


def test_pin_format_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        pin.parse("12")


def test_parse() -> None:
    parts = pin.parse("079305000042")
    assert parts == PinParts(province_code="079", g=3, yy=5, random_part=42)
    assert parts.sex is Sex.FEMALE
    assert parts.birth_year == 2005
    assert parts.bucket == Bucket("079", 3, 5)


@given(
    code=st.sampled_from(sorted(TABLE)),
    sex=st.sampled_from(Sex),
    year=st.integers(pin.MIN_BIRTH_YEAR, pin.MAX_BIRTH_YEAR),
    random_part=st.integers(0, BUCKET_SIZE - 1),
)
def test_compose_parse_round_trip(code: str, sex: Sex, year: int, random_part: int) -> None:
    text = pin.compose(code, sex, year, random_part)
    assert pin.is_well_formed(text)
    parts = pin.parse(text)
    assert (parts.province_code, parts.sex, parts.birth_year, parts.random_part) == (
        code,
        sex,
        year,
        random_part,
    )
    assert pin.check_structure(text, TABLE, sex=sex, birth_year=year) == []


def test_compose_known_value() -> None:
    assert pin.compose("001", Sex.MALE, 1990, 123) == "001090000123"
    assert pin.compose("096", Sex.FEMALE, 2024, 999_999) == "096324999999"


@pytest.mark.parametrize(
    "args",
    [("001", Sex.MALE, 1899, 0), ("001", Sex.MALE, 1990, -1), ("001", Sex.MALE, 1990, 10**6)],
)
def test_compose_rejects_out_of_range(args: tuple[str, Sex, int, int]) -> None:
    with pytest.raises(ValueError):
        pin.compose(*args)


# --- structural check ------------------------------------------------------------------------


def test_check_structure_consistent() -> None:
    assert pin.check_structure("001090123456", TABLE) == []
    assert pin.check_structure("001090123456", TABLE, sex=Sex.MALE, birth_year=1990) == []
    assert pin.check_structure("001190123456", TABLE, sex=Sex.FEMALE, birth_year=1990) == []
    assert pin.check_structure("001324123456", TABLE, sex=Sex.FEMALE, birth_year=2024) == []


def test_check_structure_unknown_prefix() -> None:
    assert pin.check_structure("000090123456", TABLE) == [PinProblem.UNKNOWN_PREFIX]
    assert pin.check_structure("003090123456", TABLE, sex=Sex.MALE) == [PinProblem.UNKNOWN_PREFIX]


def test_check_structure_sex_mismatch() -> None:
    assert pin.check_structure("001090123456", TABLE, sex=Sex.FEMALE) == [PinProblem.SEX_MISMATCH]
    assert pin.check_structure("001390123456", TABLE, sex=Sex.MALE) == [PinProblem.SEX_MISMATCH]
    # Without a sex to compare with, parity is not checked.
    assert pin.check_structure("001390123456", TABLE) == []


def test_check_structure_century_mismatch() -> None:
    # G=0 says 1900s, YY=90 matches 2090's last digits.
    assert pin.check_structure("001090123456", TABLE, birth_year=2090) == [
        PinProblem.CENTURY_MISMATCH
    ]
    # Out of the encodable range, no G can match.
    assert pin.check_structure("001090123456", TABLE, birth_year=1890) == [
        PinProblem.CENTURY_MISMATCH
    ]


def test_check_structure_year_mismatch() -> None:
    assert pin.check_structure("001090123456", TABLE, birth_year=1991) == [PinProblem.YEAR_MISMATCH]


def test_check_structure_reports_every_problem() -> None:
    assert pin.check_structure("000390123456", TABLE, sex=Sex.MALE, birth_year=1985) == [
        PinProblem.UNKNOWN_PREFIX,
        PinProblem.SEX_MISMATCH,
        PinProblem.CENTURY_MISMATCH,
        PinProblem.YEAR_MISMATCH,
    ]


# --- buckets ---------------------------------------------------------------------------------


def test_bucket_for() -> None:
    bucket = pin.bucket_for("001", Sex.FEMALE, 2007)
    assert bucket == Bucket("001", 3, 7)
    assert str(bucket) == "001307"
    assert bucket.pin(5) == "001307000005"
    assert bucket.sex is Sex.FEMALE
    assert bucket.birth_year == 2007
    with pytest.raises(ValueError):
        bucket.pin(BUCKET_SIZE)
    with pytest.raises(ValueError):
        Bucket("001", 10, 7)
    with pytest.raises(ValueError):
        Bucket("001", 1, 100)


# -- found by mutation testing (issue 14) -------------------------------------------------------


def test_a_prefix_without_a_closing_day_is_open_for_good():
    prefix = Prefix("001", "Hà Nội", "province", date(2016, 1, 1))
    assert prefix.valid_to is None
    assert prefix.open_on(date(2399, 12, 31))
    # Opened and closed on the same day is a (one-day) code, not an error.
    assert Prefix("002", "X", "province", date(2020, 1, 1), date(2020, 1, 1)).open_on(
        date(2020, 1, 1)
    )


def test_prefixes_and_pin_parts_are_frozen_values():
    import dataclasses

    prefix = Prefix("001", "Hà Nội", "province", date(2016, 1, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        prefix.valid_to = date(2020, 1, 1)  # type: ignore[misc]
    parts = pin.parse("001090000123")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.yy = 91  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Prefix("01", "X", "province", date(2016, 1, 1)),
         "province code must be 3 ASCII digits, got '01'"),
        (lambda: Prefix("001", "X", "province", date(2016, 1, 2), date(2016, 1, 1)),
         "prefix 001: valid_to 2016-01-01 is before valid_from 2016-01-02"),
        (lambda: PrefixTable([Prefix("001", "X", "p", date(2016, 1, 1))] * 2),
         "duplicate prefix code '001'"),
        (lambda: PrefixTable.from_csv(["code,name,kind,valid_from,valid_to",
                                       "001,X,p,2016-13-01,"]),
         "prefix table line 2: month must be in 1..12"),
        (lambda: pin.century_sex_digit(1899, Sex.MALE),
         "birth year 1899 cannot be encoded in a PIN (must be 1900–2399)"),
        (lambda: pin.sex_of_digit(10), "century/sex digit must be 0–9, got 10"),
        (lambda: pin.birth_year_of(0, 100), "two-digit year must be 0–99, got 100"),
        (lambda: pin.parse("00109000012"),
         "a PIN must be exactly 12 ASCII digits, got '00109000012'"),
    ],
)  # fmt: skip
def test_bad_prefixes_and_years_are_refused_saying_why(make, message):
    # Operators read these when a prefix table or an import does not load.
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(message)


def test_a_prefix_table_says_how_many_codes_it_holds():
    assert repr(PrefixTable.load_default()) == "PrefixTable(63 codes)"


# Known answers: the issue order of a bucket must never change while the bucket is in use (a
# new order would hand out numbers already issued). Recorded from the implementation that
# issued them; a change here is a change of every existing bucket's order, not a refactor.
def test_secret_derivations_known_answers() -> None:
    assert pin.bucket_key(bytes(32), 1, b"s" * 32).hex() == (
        "c4cc276a026546b76f9419e5ce5d3bc0378c3d3a208c6859313bf55f64c54cd9"
    )
    assert pin.secret_fingerprint(b"s" * 32).hex() == (
        "b2e4c7b21bc5873003923052a7872fdc2ddb8aebaa3bce1479edf602abf9ed40"
    )


def test_key_and_domain_limits_are_exact() -> None:
    Permutation(bytes(16))
    Permutation(bytes(64))
    Permutation(KEY, 1 << 20)
    Permutation(KEY, 1)
    with pytest.raises(ValueError) as info:
        Permutation(bytes(65))
    assert str(info.value) == "key must be 16–64 bytes long, got 65"
    with pytest.raises(ValueError) as info:
        Permutation(bytes(15))
    assert str(info.value) == "key must be 16–64 bytes long, got 15"
    with pytest.raises(TypeError) as type_info:
        Permutation("k" * 32)  # type: ignore[arg-type]
    assert str(type_info.value) == "key must be bytes, got str"
    with pytest.raises(ValueError) as info:
        Permutation(KEY, (1 << 20) + 1)
    assert str(info.value) == "domain must be 1–1048576, got 1048577"
    with pytest.raises(ValueError) as info:
        Permutation(KEY, 0)
    assert str(info.value) == "domain must be 1–1048576, got 0"


def test_out_of_range_values_are_refused_saying_exactly_what() -> None:
    permutation = Permutation(KEY, 10)
    for call in (permutation.forward, permutation.inverse):
        for value in (-1, 10):
            with pytest.raises(ValueError) as info:
                call(value)
            assert str(info.value) == f"value must be 0–9, got {value}"
    bucket = pin.bucket_for("001", Sex.MALE, 2025)
    with pytest.raises(ValueError) as info:
        bucket.pin(BUCKET_SIZE)
    assert str(info.value) == "random part must be 0–999999, got 1000000"
    with pytest.raises(ValueError) as info:
        bucket.pin(-1)
    assert str(info.value) == "random part must be 0–999999, got -1"
    with pytest.raises(ValueError) as info:
        pin.Bucket("001", 2, 100)
    assert str(info.value) == "two-digit year must be 0–99, got 100"
    assert str(BucketExhausted(bucket)) == "all 1,000,000 PINs of bucket 001225 have been issued"


def test_bucket_key_versions() -> None:
    stored = bytes(range(32, 64))
    assert pin.bucket_key(stored, pin.KEY_VERSION_STORED, None) == stored
    assert pin.bucket_key(stored, pin.KEY_VERSION_STORED, b"s" * 32) == stored
    assert (pin.KEY_VERSION_STORED, pin.KEY_VERSION_SECRET) == (0, 1)  # stored in pin_buckets
    with pytest.raises(pin.PinSecretMissing) as missing:
        pin.bucket_key(stored, pin.KEY_VERSION_SECRET, None)
    assert str(missing.value) == "this bucket's key needs the registry's PIN secret"
    with pytest.raises(ValueError) as unknown:
        pin.bucket_key(stored, 2, b"s" * 32)
    assert str(unknown.value) == "unknown PIN bucket key version 2"
    with pytest.raises(ValueError) as negative:
        pin.allocate(pin.bucket_for("001", Sex.MALE, 2025), KEY, -3)
    assert str(negative.value) == "counter must not be negative, got -3"
    with pytest.raises(ValueError) as negative:
        pin.allocate_many(pin.bucket_for("001", Sex.MALE, 2025), KEY, 0, -1)
    assert str(negative.value) == "counters must not be negative, got 0 and -1"
