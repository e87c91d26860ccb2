"""The audit log's entries and their hash chain (SPEC §7).

Every call that touches a citizen appends an `Entry`: when, which agency, which method, which
PINs, how it ended (the gRPC status code name), the purpose the caller declared and the call's
request id. Entries form one chain: entry n stores

    hash_n = SHA-256(hash_{n-1} || canonical(n, entry))        hash_0 = 32 zero bytes

over a canonical encoding fixed here (version 1: a compact JSON array, UTF-8, of the version,
the position and the fields in a fixed order, the time in UTC with microseconds). Editing,
deleting or reordering an entry changes a hash that every later entry depends on, so
`walk` — what `registry audit verify` runs — finds the first broken link. Nothing here talks
to the database or to gRPC.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

GENESIS = bytes(32)
FORMAT_VERSION = 1
MAX_TEXT = 200


class Entry(NamedTuple):
    """One access to citizens' data, as recorded (a tuple: made on every call, cheaply)."""

    time: datetime
    agency_id: str
    method: str
    pins: tuple[str, ...]
    outcome: str
    purpose: str
    request_id: str


def clean_text(value: str, limit: int = MAX_TEXT) -> str:
    """Return caller-supplied text as it may be recorded: printable, valid UTF-8, bounded."""
    if value.isprintable() and len(value) <= limit and value.isascii():
        return value
    kept = "".join(ch for ch in value[: limit * 2] if ch.isprintable() and not _surrogate(ch))
    return kept[:limit]


def _surrogate(ch: str) -> bool:
    return "\ud800" <= ch <= "\udfff"


def canonical(seq: int, entry: Entry) -> bytes:
    """Return the bytes entry `seq` is hashed over (format version 1).

    Byte for byte what ``json.dumps([version, seq, time, agency_id, method, [pins...],
    outcome, purpose, request_id], ensure_ascii=False, separators=(",", ":")).encode()``
    gives (`canonical_reference`, the definition, compared in tests), built from the JSON
    string encoder json.dumps itself uses: one is made per verified claim, and the whole
    json.dumps machinery cost more than the rest of the link.
    """
    text = _json_string
    pins = ",".join(map(text, entry.pins))
    return (
        f"[{FORMAT_VERSION},{seq:d},{_utc_text(entry.time)},{text(entry.agency_id)},"
        f"{text(entry.method)},[{pins}],{text(entry.outcome)},{text(entry.purpose)},"
        f"{text(entry.request_id)}]"
    ).encode()


def canonical_reference(seq: int, entry: Entry) -> bytes:
    """The definition of the version-1 encoding (what `canonical` must equal)."""
    return json.dumps(
        [
            FORMAT_VERSION,
            seq,
            entry.time.astimezone(UTC).isoformat(timespec="microseconds"),
            entry.agency_id,
            entry.method,
            list(entry.pins),
            entry.outcome,
            entry.purpose,
            entry.request_id,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


# json.dumps(ensure_ascii=False) encodes every string with this function (the C one).
_json_string = json.encoder.encode_basestring


@functools.lru_cache(maxsize=1024)
def _utc_text(at: datetime) -> str:
    """An entry's time as its JSON string (the entries of one call share it)."""
    return _json_string(at.astimezone(UTC).isoformat(timespec="microseconds"))


def link(previous: bytes, seq: int, entry: Entry) -> bytes:
    """Return entry `seq`'s hash, chained to the previous entry's hash."""
    return hashlib.sha256(previous + canonical(seq, entry)).digest()


@dataclass(frozen=True)
class Walk:
    """What walking the chain found."""

    entries: int
    """Entries checked (up to the first broken link)."""
    last_seq: int
    last_hash: bytes
    broken_at: int | None = None
    """Position of the first broken link; None when the chain is whole."""
    problem: str = ""

    @property
    def intact(self) -> bool:
        """Tell whether every link held."""
        return self.broken_at is None


class ChainCheck:
    """Checks a chain fed entry by entry in position order, stopping at the first broken link.

    A gap or reordering in positions, or a stored hash that is not the hash of its entry
    chained to its predecessor (an edited entry, or one whose predecessor was deleted or
    replaced), breaks the chain. `finish` compares the end with the recorded head, so a removed
    tail is detected too.
    """

    def __init__(self) -> None:
        self._count = 0
        self._previous = GENESIS
        self._broken: Walk | None = None

    def feed(self, seq: int, entry: Entry, stored: bytes) -> bool:
        """Check the next entry; return False once the chain is broken."""
        if self._broken is not None:
            return False
        expected = self._count + 1
        if seq != expected:
            what = "missing" if seq > expected else "out of order"
            self._break(expected, f"entry {expected} is {what} (found entry {seq} in its place)")
            return False
        computed = link(self._previous, seq, entry)
        if computed != stored:
            self._break(
                seq, f"entry {seq} does not match its hash: it, or the entry before it, was altered"
            )
            return False
        self._previous = computed
        self._count += 1
        return True

    def _break(self, at: int, problem: str) -> None:
        self._broken = Walk(self._count, self._count, self._previous, at, problem)

    def finish(self, head: tuple[int, bytes] | None = None) -> Walk:
        """Return the result; with `head`, the chain must end exactly at the recorded head."""
        if self._broken is not None:
            return self._broken
        if head is not None and (head[0] != self._count or head[1] != self._previous):
            return Walk(
                self._count,
                self._count,
                self._previous,
                min(head[0], self._count) + 1,
                f"the chain ends at entry {self._count} but its recorded head is entry "
                f"{head[0]}: entries after it were removed, or the head was altered",
            )
        return Walk(self._count, self._count, self._previous)


def walk(rows: Iterable[tuple[int, Entry, bytes]], head: tuple[int, bytes] | None = None) -> Walk:
    """Check a whole chain given as (seq, entry, stored hash) in position order."""
    check = ChainCheck()
    for seq, entry, stored in rows:
        if not check.feed(seq, entry, stored):
            break
    return check.finish(head)
