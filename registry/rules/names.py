"""Vietnamese names and free text: normalisation, validation and comparison keys.

A name typed in NFC or NFD, in any case and with stray spaces is the same name; it is stored in
NFC, trimmed and single-spaced, with its case as given (SPEC §3). Two keys compare names:
:func:`match_key`, where only case, Unicode form and spacing are ignored, and
:func:`fold_diacritics`, which also ignores diacritics and is reserved to agencies granted that
mode ("Nguyễn" and "Nguyên" are different names).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "NAME_PUNCTUATION",
    "fold_diacritics",
    "match_key",
    "normalize_name",
    "normalize_text",
    "validate_name",
    "validate_text",
]

NAME_PUNCTUATION = frozenset("'’-.")
"""Non-letters that names legitimately contain: "H' Hen Niê", "Ksor Y-Bhăm", "Thị H."."""

# The Unicode White_Space property, spelled out because Python's str.split() and re's \s also
# treat U+001C–U+001F as spaces: those are control characters and must be rejected, not
# silently turned into spaces.
_WHITESPACE_RUN = re.compile(
    "[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)


_STROKED_D = str.maketrans({"đ": "d", "ð": "d"})


def _collapse(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    # Every character the pattern matches but the ASCII space is non-printable for Python, so
    # printable text without a double space has nothing to collapse (the common case, ~3x
    # faster than the substitution it skips).
    if text.isprintable() and "  " not in text:
        return text.strip(" ")
    return _WHITESPACE_RUN.sub(" ", text).strip(" ")


def normalize_name(raw: str) -> str:
    """Return ``raw`` in NFC, trimmed, with every run of whitespace made one ASCII space.

    Case is kept as given.
    """
    return _collapse(raw)


def normalize_text(raw: str) -> str:
    """Return free text (addresses, places) in NFC, trimmed and single-spaced."""
    return _collapse(raw)


def _describe(ch: str) -> str:
    category = unicodedata.category(ch)
    if category[0] == "C":
        return f"contains a control or invisible character ({ch!r})"
    if category[0] == "M":
        # repr() would print a lone accent as is, drawn over the quote mark before it.
        return f"contains an accent that is not on a letter ({ch!a})"
    return f"contains a digit or symbol ({ch!r})"


def validate_name(raw: str, *, max_length: int = 100) -> tuple[str, str | None]:
    """Normalise a personal name and say what, if anything, is wrong with it.

    A name consists of letters, combining marks on letters, single spaces and the punctuation in
    :data:`NAME_PUNCTUATION`, with at least one letter.

    Returns:
        The normalised name and ``None``, or the normalised name and a short English sentence
        for an operator, e.g. ``"contains a digit or symbol ('3')"``.
    """
    name = normalize_name(raw)
    if not name:
        return name, "must not be empty"
    if len(name) > max_length:
        return name, f"must be at most {max_length} characters long (has {len(name)})"
    has_letter = False
    previous_category = ""
    for ch in name:
        category = unicodedata.category(ch)
        if category[0] == "L":
            has_letter = True
        elif category[0] == "M":
            # NFC leaves a mark uncomposed only where no precomposed letter exists; it must still
            # sit on a letter, or it is debris such as an accent typed after a space.
            if previous_category[:1] not in ("L", "M"):
                return name, _describe(ch)
        elif ch != " " and ch not in NAME_PUNCTUATION:
            return name, _describe(ch)
        previous_category = category
    if not has_letter:
        return name, "must contain at least one letter"
    return name, None


def validate_text(
    raw: str, *, max_length: int = 500, required: bool = True
) -> tuple[str, str | None]:
    """Normalise free text and say what, if anything, is wrong with it.

    Free text may hold any printable character; control and invisible format characters
    (Unicode category C*) are rejected. Empty text is accepted only when not ``required``.

    Returns:
        The normalised text and ``None``, or the normalised text and a short English sentence
        for an operator.
    """
    text = normalize_text(raw)
    if not text:
        return text, ("must not be empty" if required else None)
    if len(text) > max_length:
        return text, f"must be at most {max_length} characters long (has {len(text)})"
    if text.isprintable():
        # Non-printable for Python: categories C* and Z* but the ASCII space; the Z* ones were
        # all collapsed into spaces above, so printable text holds no C* character.
        return text, None
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] == "C":
            return text, _describe(ch)
    return text, None


def match_key(name: str) -> str:
    """Return the key under which two spellings of a name are the same name.

    Unicode form, case and spacing are ignored; diacritics are not.
    """
    # casefold() can decompose (e.g. 'ẞ' or 'İ'), hence NFC again after it.
    return unicodedata.normalize("NFC", normalize_name(name).casefold())


def fold_diacritics(name: str) -> str:
    """Return the key under which names that differ only in diacritics are the same name.

    For agencies explicitly granted diacritic-insensitive search: "Nguyễn Văn Đức" and
    "NGUYEN VAN DUC" fold to the same key.
    """
    decomposed = unicodedata.normalize("NFD", normalize_name(name).casefold())
    bare = "".join(ch for ch in decomposed if unicodedata.category(ch)[0] != "M")
    # đ is a letter of its own, not d with a combining mark, so NFD leaves it whole; ð is the
    # look-alike that legacy Vietnamese encodings converted Đ into.
    bare = bare.translate(_STROKED_D)
    # A mark that stood between two spaces leaves a double space behind.
    return unicodedata.normalize("NFC", _WHITESPACE_RUN.sub(" ", bare).strip(" "))
