"""The audit log's hash chain (registry/rules/audit.py), without a database.

Pins down the canonical encoding (format version 1) with a known-answer vector worked out
here by hand, then checks that `walk` — what `registry audit verify` runs — accepts an intact
chain and reports the first broken position exactly for every kind of tampering: an edited
field, a deleted entry, two entries swapped, a removed tail, an altered head.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.rules.audit import GENESIS, ChainCheck, Entry, canonical, link, walk

ICT = timezone(timedelta(hours=7))
FIELDS = Entry._fields
Row = tuple[int, Entry, bytes]


def entry(i: int = 0, **overrides: object) -> Entry:
    values: dict[str, object] = {
        "time": datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC) + timedelta(seconds=i),
        "agency_id": f"agency-{i % 3}",
        "method": "/registry.v1.IdentityService/GetCitizen",
        "pins": (f"001200{i:06d}",),
        "outcome": "OK",
        "purpose": f"purpose {i}",
        "request_id": f"req-{i}",
    }
    values.update(overrides)
    return Entry(**values)  # type: ignore[arg-type]


def chain(entries: list[Entry]) -> list[Row]:
    """Rows (seq, entry, stored hash) as the writer stores them, from position 1."""
    rows: list[Row] = []
    previous = GENESIS
    for seq, e in enumerate(entries, start=1):
        previous = link(previous, seq, e)
        rows.append((seq, e, previous))
    return rows


def head_of(rows: list[Row]) -> tuple[int, bytes]:
    return (rows[-1][0], rows[-1][2]) if rows else (0, GENESIS)


def edited(value: object) -> object:
    """A different value of the same type."""
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, tuple):
        return (*value, "079185000123")
    assert isinstance(value, str)
    return value + "x"


# -- canonical encoding (format version 1) ------------------------------------------------------

KNOWN = Entry(
    # 19:08:13.0005 in Vietnam (UTC+7): encoded as the same instant in UTC.
    time=datetime(2026, 11, 22, 19, 8, 13, 500, tzinfo=ICT),
    agency_id="bank-vcb",
    method="/registry.v1.IdentityService/VerifyIdentity",
    pins=("001200000001", "079185000123"),
    outcome="OK",
    purpose="xác minh khách hàng",
    request_id="req-7",
)
# A compact JSON array, UTF-8 (not \u escapes): version, position, UTC time with microseconds,
# agency, method, PINs, outcome, purpose, request id.
KNOWN_BYTES = (
    b'[1,7,"2026-11-22T12:08:13.000500+00:00","bank-vcb",'
    b'"/registry.v1.IdentityService/VerifyIdentity",["001200000001","079185000123"],"OK",'
    b'"x\xc3\xa1c minh kh\xc3\xa1ch h\xc3\xa0ng","req-7"]'
)
KNOWN_PREVIOUS = bytes(range(32))
KNOWN_LINK = "060cc5d03703c7bde803df1c8234aa7f7d77cb9f7ca80447d984eb999c4bae1f"


def test_canonical_encoding_known_answer():
    assert canonical(7, KNOWN) == KNOWN_BYTES


def test_the_known_answer_is_the_documented_format():
    # The same bytes built independently from the format's description.
    fields = [1, 7, "2026-11-22T12:08:13.000500+00:00", "bank-vcb",
              "/registry.v1.IdentityService/VerifyIdentity", ["001200000001", "079185000123"],
              "OK", "xác minh khách hàng", "req-7"]  # fmt: skip
    built = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert built == KNOWN_BYTES


def test_link_known_answer():
    independent = hashlib.sha256(KNOWN_PREVIOUS + KNOWN_BYTES).hexdigest()
    assert independent == KNOWN_LINK
    assert link(KNOWN_PREVIOUS, 7, KNOWN).hex() == KNOWN_LINK


def test_first_link_chains_to_the_genesis_hash():
    assert bytes(32) == GENESIS
    expected = hashlib.sha256(bytes(32) + canonical(1, KNOWN)).digest()
    assert link(GENESIS, 1, KNOWN) == expected


def test_time_is_encoded_in_utc_whatever_its_zone():
    same_instant = KNOWN._replace(time=KNOWN.time.astimezone(UTC))
    assert canonical(7, same_instant) == KNOWN_BYTES
    whole_second = KNOWN._replace(time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert b'"2026-01-02T03:04:05.000000+00:00"' in canonical(7, whole_second)


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_is_covered_by_the_encoding(name):
    changed = KNOWN._replace(**{name: edited(getattr(KNOWN, name))})
    assert canonical(7, changed) != KNOWN_BYTES
    assert link(KNOWN_PREVIOUS, 7, changed).hex() != KNOWN_LINK


def test_position_and_previous_hash_are_covered():
    assert link(KNOWN_PREVIOUS, 8, KNOWN).hex() != KNOWN_LINK
    assert link(GENESIS, 7, KNOWN).hex() != KNOWN_LINK


def test_pins_are_not_ambiguous():
    # Two PINs are not one PIN with a separator in it.
    one = KNOWN._replace(pins=("001200000001,079185000123",))
    assert canonical(7, one) != KNOWN_BYTES


# -- walk ---------------------------------------------------------------------------------------

ENTRIES = [entry(i) for i in range(1, 9)]
ROWS = chain(ENTRIES)
N = len(ROWS)


def test_intact_chain():
    result = walk(ROWS, head_of(ROWS))
    assert result.intact
    assert (result.broken_at, result.problem) == (None, "")
    assert (result.entries, result.last_seq, result.last_hash) == (N, N, ROWS[-1][2])


def test_intact_chain_without_a_head():
    result = walk(ROWS)
    assert result.intact and result.entries == N


def test_empty_chain_with_the_genesis_head():
    result = walk([], (0, bytes(32)))
    assert result.intact
    assert (result.entries, result.last_seq, result.last_hash) == (0, 0, GENESIS)


def test_empty_chain_with_a_head_further_on_is_broken_at_entry_1():
    result = walk([], (3, ROWS[2][2]))
    assert (result.broken_at, result.entries) == (1, 0)


def test_genesis_head_with_an_altered_hash_is_broken():
    result = walk([], (0, b"\x01" * 32))
    assert not result.intact and result.broken_at == 1


def assert_broken_at(rows: list[Row], at: int, head: tuple[int, bytes] | None = None) -> None:
    result = walk(rows, head_of(ROWS) if head is None else head)
    assert not result.intact
    assert result.broken_at == at, result
    # Everything before the break was checked and found good.
    assert result.entries == at - 1
    assert result.last_seq == at - 1
    assert result.last_hash == (ROWS[at - 2][2] if at > 1 else GENESIS)
    assert f"entry {at}" in result.problem or f"entry {at - 1}" in result.problem


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("position", [1, 4, N])
def test_an_edited_field_breaks_the_chain_at_that_entry(name, position):
    rows = list(ROWS)
    seq, e, stored = rows[position - 1]
    rows[position - 1] = (seq, e._replace(**{name: edited(getattr(e, name))}), stored)
    assert_broken_at(rows, position)


@pytest.mark.parametrize("position", [1, 4, N])
def test_an_edited_hash_breaks_the_chain_at_that_entry(position):
    rows = list(ROWS)
    seq, e, stored = rows[position - 1]
    rows[position - 1] = (seq, e, bytes(b ^ 1 for b in stored))
    assert_broken_at(rows, position)


def test_an_edited_entry_with_a_recomputed_hash_breaks_the_next_link():
    rows = list(ROWS)
    seq, e, _ = rows[3]
    forged = e._replace(purpose="nothing to see")
    rows[3] = (seq, forged, link(rows[2][2], seq, forged))
    result = walk(rows, head_of(ROWS))
    # Entry 4 is consistent with its (forged) hash; entry 5 no longer chains to it.
    assert (result.broken_at, result.entries, result.last_hash) == (5, 4, rows[3][2])


def test_a_whole_rewritten_chain_is_caught_by_the_recorded_head():
    forged = chain([e._replace(purpose="rewritten") for e in ENTRIES])
    assert walk(forged).intact  # without the head nothing can tell
    result = walk(forged, head_of(ROWS))
    assert (result.intact, result.broken_at) == (False, N + 1)


@pytest.mark.parametrize("position", [1, 2, 5, N - 1])
def test_a_deleted_entry_breaks_the_chain_at_its_position(position):
    rows = ROWS[: position - 1] + ROWS[position:]
    assert_broken_at(rows, position)
    assert "missing" in walk(rows).problem


def test_a_deleted_entry_renumbered_still_breaks_at_its_position():
    # The following entries moved up one position, keeping their stored hashes.
    rows = ROWS[:2] + [(seq - 1, e, h) for seq, e, h in ROWS[3:]]
    assert_broken_at(rows, 3)


@pytest.mark.parametrize(("i", "j"), [(1, 2), (3, 4), (2, 6), (N - 1, N)])
def test_two_entries_swapped_in_order_break_at_the_first(i, j):
    rows = list(ROWS)
    rows[i - 1], rows[j - 1] = rows[j - 1], rows[i - 1]
    assert_broken_at(rows, i)


@pytest.mark.parametrize(("i", "j"), [(1, 2), (3, 4), (2, 6), (N - 1, N)])
def test_two_entries_with_swapped_positions_break_at_the_first(i, j):
    # The stored rows keep their content and hash but exchange their seq (what an UPDATE of
    # seq does): read back in seq order.
    rows = list(ROWS)
    (si, ei, hi), (sj, ej, hj) = rows[i - 1], rows[j - 1]
    rows[i - 1], rows[j - 1] = (si, ej, hj), (sj, ei, hi)
    assert_broken_at(rows, i)


@pytest.mark.parametrize("removed", [1, 2, N - 1])
def test_a_removed_tail_is_found_with_the_head(removed):
    rows = ROWS[: N - removed]
    assert walk(rows).intact  # only the head can tell
    assert_broken_at(rows, N - removed + 1)
    assert "removed" in walk(rows, head_of(ROWS)).problem


def test_every_entry_removed_is_found_with_the_head():
    assert_broken_at([], 1)


def test_an_altered_head_hash_is_found():
    seq, stored = head_of(ROWS)
    assert_broken_at(ROWS, N + 1, head=(seq, bytes(b ^ 0x80 for b in stored)))


def test_a_head_moved_back_is_found():
    result = walk(ROWS, (N - 2, ROWS[N - 3][2]))
    assert not result.intact and result.broken_at == N - 1


def test_a_head_further_on_than_the_chain_is_found():
    result = walk(ROWS, (N + 1, ROWS[-1][2]))
    assert not result.intact and result.broken_at == N + 1


def test_a_chain_not_starting_at_1_is_broken_at_1():
    assert_broken_at(ROWS[1:], 1)


def test_chain_check_stops_at_the_first_break():
    check = ChainCheck()
    rows = list(ROWS)
    seq, e, stored = rows[2]
    rows[2] = (seq, e._replace(outcome="NOT_FOUND"), stored)
    fed = [check.feed(*row) for row in rows]
    assert fed == [True, True] + [False] * (N - 2)
    assert check.finish(head_of(ROWS)).broken_at == 3


# -- any single edit anywhere in any chain ------------------------------------------------------

text = st.text(max_size=12)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, ICT, timezone(timedelta(hours=-5, minutes=-30))]),
)
pin = st.integers(0, 10**12 - 1).map(lambda n: f"{n:012d}")
pins = st.lists(pin, max_size=3).map(tuple)
entries = st.builds(
    Entry,
    time=times,
    agency_id=text,
    method=text,
    pins=pins,
    outcome=st.sampled_from(["OK", "NOT_FOUND", "PERMISSION_DENIED", "INVALID_ARGUMENT"]),
    purpose=text,
    request_id=text,
)


@st.composite
def edits(draw: st.DrawFn) -> tuple[list[Entry], int, Entry]:
    """A chain, a position in it and a different entry to put there."""
    chain_entries = draw(st.lists(entries, min_size=1, max_size=8))
    position = draw(st.integers(1, len(chain_entries)))
    original = chain_entries[position - 1]
    name = draw(st.sampled_from(FIELDS))
    value = draw(
        {
            "time": times,
            "pins": pins,
            "outcome": st.sampled_from(["OK", "NOT_FOUND", "UNAVAILABLE", "CANCELLED"]),
        }.get(name, text)
    )
    if name == "time":
        # The same instant in another zone is the same entry.
        changed = value.astimezone(UTC) != original.time.astimezone(UTC)
    else:
        changed = value != getattr(original, name)
    if not changed:
        value = edited(getattr(original, name))
    return chain_entries, position, original._replace(**{name: value})


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(entries, max_size=8))
def test_any_chain_built_by_linking_is_intact(entries):
    rows = chain(entries)
    result = walk(rows, head_of(rows))
    assert result.intact and result.entries == len(entries)


@settings(max_examples=60, deadline=None)
@given(case=edits())
def test_any_single_field_edit_anywhere_is_found_at_its_position(case):
    chain_entries, position, replacement = case
    rows = chain(chain_entries)
    seq, _, stored = rows[position - 1]
    rows[position - 1] = (seq, replacement, stored)
    result = walk(rows, head_of(chain(chain_entries)))
    assert (result.intact, result.broken_at, result.entries) == (False, position, position - 1)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), chain_entries=st.lists(entries, min_size=2, max_size=8))
def test_any_deleted_entry_is_found_at_its_position(data, chain_entries):
    rows = chain(chain_entries)
    position = data.draw(st.integers(1, len(rows)))
    result = walk(rows[: position - 1] + rows[position:], head_of(rows))
    assert (result.intact, result.broken_at) == (False, position)
