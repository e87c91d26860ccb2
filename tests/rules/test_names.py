"""Tests for registry.rules.names: normalisation, validation and comparison keys."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.rules.names import (
    fold_diacritics,
    match_key,
    normalize_name,
    normalize_text,
    validate_name,
    validate_text,
)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


REAL_NAMES = [
    "Nguyễn Thị Minh Khai",
    "Hoàng Văn Thụ",
    "Trần Hưng Đạo",
    "Võ Nguyên Giáp",
    "Lê Thị Hồng Gấm",
    "Đặng Thùy Trâm",
    "H' Hen Niê",
    "Ksor Y-Bhăm",
    "Y Ngông Niê Kdăm",
    "Kơ Pa Hồng",
    "Nguyễn Thị H.",
    "Hà Thị Ngọc Quỳnh",
    "Rơ Mah Ly",
    "Nay Der",
    "Mlô Y’Điêng",
]


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_NAMES)
def test_real_names_pass_unchanged(name: str) -> None:
    assert validate_name(name) == (name, None)


@pytest.mark.parametrize("name", REAL_NAMES)
def test_nfd_input_is_stored_nfc(name: str) -> None:
    decomposed = nfd(name)
    assert decomposed != name or name.isascii()
    assert normalize_name(decomposed) == name
    assert unicodedata.is_normalized("NFC", normalize_name(decomposed))


@pytest.mark.parametrize(
    "raw",
    [
        "  Nguyễn Thị Minh Khai",
        "Nguyễn Thị Minh Khai  ",
        "Nguyễn  Thị   Minh Khai",
        "Nguyễn\tThị\nMinh\r\nKhai",
        "\u00a0Nguyễn\u00a0Thị Minh\u3000Khai\u2003",
        "Nguyễn \u202f Thị Minh Khai",
    ],
)
def test_whitespace_is_trimmed_and_collapsed(raw: str) -> None:
    assert normalize_name(raw) == "Nguyễn Thị Minh Khai"
    assert normalize_name(nfd(raw)) == "Nguyễn Thị Minh Khai"


def test_case_is_kept() -> None:
    assert normalize_name("NGUYỄN thị minh KHAI") == "NGUYỄN thị minh KHAI"


def test_normalize_is_idempotent_on_example() -> None:
    once = normalize_name(nfd("  Đặng  Thùy\tTrâm "))
    assert normalize_name(once) == once == "Đặng Thùy Trâm"


@given(st.text())
def test_normalize_name_is_idempotent(raw: str) -> None:
    once = normalize_name(raw)
    assert normalize_name(once) == once
    assert not once.startswith(" ") and not once.endswith(" ")
    assert "  " not in once


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", " ", "\t\n", "\u00a0\u3000"])
def test_empty_names_are_rejected(raw: str) -> None:
    assert validate_name(raw) == ("", "must not be empty")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("Nguyễn Văn 3", "contains a digit or symbol ('3')"),
        ("Nguyen@Van", "contains a digit or symbol ('@')"),
        ("Nguyễn_Văn", "contains a digit or symbol ('_')"),
        ("Trần (Hưng)", "contains a digit or symbol ('(')"),
        ("Lê\x00Lợi", "contains a control or invisible character ('\\x00')"),
        ("Lê\u200bLợi", "contains a control or invisible character ('\\u200b')"),
        ("Lê\u200dLợi", "contains a control or invisible character ('\\u200d')"),
        ("Lê\x1fLợi", "contains a control or invisible character ('\\x1f')"),
        ("Lê \u0301Lợi", "contains an accent that is not on a letter ('\\u0301')"),
        ("\u0301Lợi", "contains an accent that is not on a letter ('\\u0301')"),
    ],
)
def test_invalid_characters_are_named(raw: str, message: str) -> None:
    assert validate_name(raw)[1] == message


@pytest.mark.parametrize("raw", ["-", "' .", "- -"])
def test_name_needs_a_letter(raw: str) -> None:
    assert validate_name(raw)[1] == "must contain at least one letter"


def test_length_limit_counts_nfc_characters() -> None:
    name = "Ễ" * 100
    assert validate_name(nfd(name)) == (name, None)  # 200 code points in NFD, 100 in NFC
    assert validate_name(name + "x")[1] == "must be at most 100 characters long (has 101)"
    assert validate_name("Lê Lợi", max_length=5)[1] == ("must be at most 5 characters long (has 6)")


def test_validate_returns_the_normalised_name_even_when_invalid() -> None:
    assert validate_name("  Lê  3 ") == ("Lê 3", "contains a digit or symbol ('3')")


# --- free text -------------------------------------------------------------------------------


def test_normalize_text() -> None:
    raw = nfd("  Số 1,  phố Tràng Tiền,\tHoàn Kiếm, Hà Nội ")
    assert normalize_text(raw) == "Số 1, phố Tràng Tiền, Hoàn Kiếm, Hà Nội"


def test_validate_text_accepts_digits_and_punctuation() -> None:
    text = "Số 12/3 (ngõ 45), P. Bến Nghé, Q.1, TP. Hồ Chí Minh — #2"
    assert validate_text(text) == (text, None)


def test_validate_text_empty() -> None:
    assert validate_text("  ") == ("", "must not be empty")
    assert validate_text("  ", required=False) == ("", None)


@pytest.mark.parametrize("bad", ["\x00", "\x07", "\x7f", "\u200b", "\ufeff", "\U000f0000"])
def test_validate_text_rejects_control_characters(bad: str) -> None:
    problem = validate_text(f"Hà{bad}Nội")[1]
    assert problem == f"contains a control or invisible character ({bad!r})"


def test_validate_text_length() -> None:
    assert validate_text("x" * 500) == ("x" * 500, None)
    assert validate_text("x" * 501)[1] == "must be at most 500 characters long (has 501)"
    assert validate_text("abcd", max_length=3)[1] == "must be at most 3 characters long (has 4)"


# --- comparison keys -------------------------------------------------------------------------


def test_match_key_ignores_form_case_and_spacing() -> None:
    key = match_key("Nguyễn Thị Minh Khai")
    assert match_key(nfd("Nguyễn Thị Minh Khai")) == key
    assert match_key("NGUYỄN THỊ MINH KHAI") == key
    assert match_key(nfd("  nguyễn   thị\u00a0minh\tkhai ")) == key
    assert unicodedata.is_normalized("NFC", key)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Nguyễn", "Nguyên"),
        ("Nguyễn", "Nguyen"),
        ("Đức", "Dức"),
        ("Thụ", "Thủ"),
        ("Hà", "Ha"),
    ],
)
def test_match_key_keeps_diacritics(a: str, b: str) -> None:
    assert match_key(a) != match_key(b)


def test_match_key_upper_case_with_diacritics() -> None:
    # Uppercase with tone marks must fold to the same lowercase letters.
    assert match_key("ĐẶNG THÙY TRÂM") == match_key("đặng thùy trâm")


def test_fold_diacritics() -> None:
    assert fold_diacritics("Nguyễn Văn Đức") == fold_diacritics("NGUYEN VAN DUC")
    assert fold_diacritics("Nguyễn Văn Đức") == "nguyen van duc"
    assert fold_diacritics(nfd("  Nguyễn  Văn Đức ")) == "nguyen van duc"
    assert fold_diacritics("Nguyễn") == fold_diacritics("Nguyên")
    # A legacy encoding's look-alike of Đ folds the same.
    assert fold_diacritics("ÐẶNG") == fold_diacritics("Đặng") == "dang"
    assert fold_diacritics("Ksor Y-Bhăm") == "ksor y-bham"


@given(st.text())
def test_fold_diacritics_is_coarser_than_match_key(raw: str) -> None:
    # Names equal under match_key are equal under fold_diacritics.
    assert fold_diacritics(raw) == fold_diacritics(match_key(raw))
