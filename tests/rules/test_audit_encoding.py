"""The audit entry's recorded text and bytes, pinned exactly (mutants of
registry/rules/audit.py that the chain tests let through, docs/testing.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.rules.audit import (
    GENESIS,
    MAX_TEXT,
    ChainCheck,
    Entry,
    canonical,
    canonical_reference,
    clean_text,
    link,
    walk,
)

ENTRY = Entry(
    time=datetime(2026, 1, 2, 10, 4, 5, 6, tzinfo=timezone(timedelta(hours=7))),
    agency_id="bank-x",
    method="/registry.v1.IdentityService/VerifyIdentity",
    pins=("001090000123", "079185000456"),
    outcome="OK",
    purpose="mở tài khoản",
    request_id="r-1",
)


def test_the_canonical_encoding_of_version_1_byte_for_byte():
    assert (
        canonical(7, ENTRY)
        == (
            '[1,7,"2026-01-02T03:04:05.000006+00:00","bank-x",'
            '"/registry.v1.IdentityService/VerifyIdentity",["001090000123","079185000456"],'
            '"OK","mở tài khoản","r-1"]'
        ).encode()
    )


def test_a_link_is_sha256_of_the_previous_hash_and_the_canonical_bytes():
    import hashlib

    assert bytes(32) == GENESIS
    first = link(GENESIS, 1, ENTRY)
    assert first == hashlib.sha256(bytes(32) + canonical(1, ENTRY)).digest()


def test_caller_text_is_kept_up_to_200_characters():
    assert MAX_TEXT == 200
    assert clean_text("a" * 200) == "a" * 200
    assert clean_text("a" * 201) == "a" * 200
    assert clean_text("ộ" * 300) == "ộ" * 200  # printable but not ASCII: still bounded
    assert clean_text("Bộ Công an") == "Bộ Công an"
    assert clean_text("x" * 10, limit=4) == "xxxx"


def test_unprintable_characters_and_surrogates_are_dropped():
    assert clean_text("a\tb\nc\x00d") == "abcd"
    assert clean_text("a\ud800b\udfffc") == "abc"
    # Only the first 2 x limit characters are looked at: a flood of junk cannot hide text after.
    assert clean_text("\x00" * 400 + "tail") == ""
    assert clean_text("\x00" * 399 + "tail") == "t"


def test_a_walk_result_cannot_be_changed():
    result = walk([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.broken_at = 3  # type: ignore[misc]


def _rows() -> list[tuple[int, Entry, bytes]]:
    rows, previous = [], GENESIS
    for seq in (1, 2, 3):
        previous = link(previous, seq, ENTRY)
        rows.append((seq, ENTRY, previous))
    return rows


def test_the_problems_are_told_in_words():
    one, two, three = _rows()
    check = ChainCheck()
    assert check.feed(*one) is True
    assert check.feed(*three) is False  # entry 2 missing
    assert check.finish().problem == "entry 2 is missing (found entry 3 in its place)"
    check = ChainCheck()
    assert check.feed(*one) and check.feed(*two)
    assert check.feed(*one) is False
    assert check.finish().problem == "entry 3 is out of order (found entry 1 in its place)"
    altered = walk([one, (2, ENTRY._replace(outcome="NOT_FOUND"), two[2])])
    assert altered.problem == (
        "entry 2 does not match its hash: it, or the entry before it, was altered"
    )
    cut = walk([one, two], head=(3, three[2]))
    assert cut.problem == (
        "the chain ends at entry 2 but its recorded head is entry 3: entries after it were "
        "removed, or the head was altered"
    )


def test_a_walk_stops_reading_at_the_first_broken_link():
    one, two, three = _rows()
    consumed = []

    def rows() -> Iterator[tuple[int, Entry, bytes]]:
        for row in (one, three, two):
            consumed.append(row[0])
            yield row

    assert walk(rows()).broken_at == 2
    assert consumed == [1, 3]


def test_entry_times_are_recorded_in_utc_with_microseconds():
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert b'"2026-01-02T03:04:05.000000+00:00"' in canonical(1, ENTRY._replace(time=at))


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    texts=st.lists(st.text(max_size=40), min_size=4, max_size=4),
    pins=st.lists(st.text(max_size=14), max_size=3),
    at=st.datetimes(timezones=st.timezones()),
)
def test_the_canonical_bytes_are_those_of_the_json_definition(seq, texts, pins, at):
    # `canonical` builds the bytes itself for speed: any text (quotes, backslashes, control
    # characters, Vietnamese, emoji), any time zone, no PINs or several, must give exactly
    # the bytes of the json.dumps definition every recorded hash was made with.
    agency_id, outcome, purpose, request_id = texts
    entry = Entry(at, agency_id, "/m", tuple(pins), outcome, purpose, request_id)
    assert canonical(seq, entry) == canonical_reference(seq, entry)
