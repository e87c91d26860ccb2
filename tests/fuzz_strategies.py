"""Hypothesis strategies for fuzzing the registry's gRPC API from its protobuf descriptors.

Everything here is generic over a message descriptor: a strategy per field type (strings with
control characters, NUL, combining marks, right-to-left text, emoji and 64 KiB monsters;
integers at their extremes; every enum value plus unknown numbers; absurd `google.type.Date`s;
`FieldMask`s full of garbage), random raw bodies that are not valid protobuf or carry invalid
UTF-8 inside string fields, odd call metadata, and token headers and claims of any JSON
value. No knowledge of the registry's rules lives here beyond a few realistic values that let
random requests get past the first checks.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import field_mask_pb2, message_factory, timestamp_pb2
from google.protobuf.message import Message
from google.type import date_pb2
from hypothesis import assume
from hypothesis import strategies as st

from registry.v1 import citizen_pb2

FieldDescriptor = _descriptor.FieldDescriptor
Descriptor = _descriptor.Descriptor

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1
HUGE_TEXT = 64 * 1024

# -- text ----------------------------------------------------------------------------------------

REALISTIC_TEXT = (
    "Nguyễn Văn An",
    "Trần Thị Bích Ngọc",
    "NGUYỄN VĂN AN",
    "Nguyễn  Văn   An ",
    "Nguye\u0302\u0303n Va\u0306n An",  # NFD
    "Bệnh viện Phụ sản Hà Nội",
    "Kinh",
    "VN",
    "vn",
    " VN ",
    "001",
    "079",
    "999",
    "UBND phường Láng Hạ",
    "0421/2026",
    "CA Hà Nội",
    "FZ-0001",
    "123456789",
    "123456789012",
)
ODD_TEXT = (
    "\x00",
    "Nguyễn\x00An",
    "001\x00",
    "\x00" * 12,
    "\t",
    " ",
    "\u00a0",
    "\u3000",
    "\r\n",
    "\x7f",
    "\x85",
    "\u2028\u2029",
    "\u200b",
    "\ufeff",
    "\u2060",
    "\u00ad",
    "\u0301",
    "A\u0301\u0301\u0301\u0301\u0301\u0301\u0301\u0301",
    "Z\u0351\u0352\u0357\u035b\u0363\u0364\u0365\u0366\u0367\u0368",
    "\u202eNguyễn",
    "\u202dAn\u202c",
    "\u200fאבג",
    "محمد",
    "שלום עליכם",
    "😀",
    "👨\u200d👩\u200d👧\u200d👦",
    "🇻🇳",
    "𠀀𪚥",
    "ß",
    "ǅ",
    "İ",
    "ﬁ",
    "Ａｎ",
    "*",
    "%s%n%x",
    "'; DROP TABLE citizens; --",
    "\\",
    "..",
    "null",
    "-1",
)
# Characters `str.isdigit()` (or `int()`) accepts that are not ASCII digits: a validator using
# the wrong test lets them through to places that need ASCII digits.
NON_ASCII_DIGITS = ("٣", "３", "²", "৩", "߃", "𝟘", "〇", "Ⅻ", "¹", "₀")


def _text_of(alphabet: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, max_size=max_size)


def control_characters() -> st.SearchStrategy[str]:
    return st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(
        ["\x7f", "\x85", "\u2028", "\u2029", "\u200e", "\u200f", "\u202e", "\ufff9", "\ufffe"]
    )


def digit_strings() -> st.SearchStrategy[str]:
    """ASCII digit strings around the lengths identifiers have (3, 9, 12), and near misses."""
    exact = st.sampled_from([3, 9, 11, 12, 13]).flatmap(
        lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n)
    )
    near = st.tuples(
        st.text(alphabet="0123456789", min_size=12, max_size=12),
        st.integers(0, 11),
        st.sampled_from([*NON_ASCII_DIGITS, "\x00", " ", "a", "-", "\u0301", "\u200b"]),
        st.booleans(),
    ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + (1 if t[3] else 0) :])
    padded = st.text(alphabet="0123456789", min_size=12, max_size=12).flatmap(
        lambda s: st.sampled_from([f" {s}", f"{s} ", f"\t{s}\n", f"+{s}", f"{s}\x00", f"-{s}"])
    )
    return exact | near | padded | _text_of(st.sampled_from("0123456789"), 40)


@st.composite
def huge_text(draw: st.DrawFn) -> str:
    """A long string (up to 64 KiB characters) made by repeating a short random chunk."""
    chunk = draw(
        st.sampled_from(["a", "Nguyễn ", "0", "😀", "\u0301", "\x00", "ắ", "\u202e", " "])
        | st.text(min_size=1, max_size=5)
    )
    length = draw(st.sampled_from([129, 501, 1025, 4097, HUGE_TEXT]) | st.integers(1, HUGE_TEXT))
    return (chunk * (length // len(chunk) + 1))[:length]


def small_weird_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.sampled_from(REALISTIC_TEXT),
        st.sampled_from(ODD_TEXT),
        st.text(max_size=30),
        _text_of(control_characters(), 8),
        st.characters(codec="ascii"),
    )


def weird_text(extra: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Any string: realistic, odd, mixed, digit-like, or huge. `extra`: values worth trying."""
    pieces = small_weird_text()
    mixed = st.lists(pieces, min_size=2, max_size=4).map("".join)
    choices = [pieces, digit_strings(), mixed, huge_text()]
    if extra:
        choices.insert(0, st.sampled_from(list(extra)))
    return st.one_of(*choices)


# -- numbers, enums, dates, masks ------------------------------------------------------------------


def int_range(lo: int, hi: int) -> st.SearchStrategy[int]:
    specials = (0, 1, -1, 2, 12, 13, 31, 50, 1000, 1001, lo, hi, lo + 1, hi - 1)
    return st.sampled_from([v for v in specials if lo <= v <= hi]) | st.integers(lo, hi)


def enum_numbers(enum: _descriptor.EnumDescriptor) -> st.SearchStrategy[int]:
    """Every declared value, plus numbers the enum does not declare (open proto3 enums)."""
    known = [v.number for v in enum.values]
    unknown = [max(known) + 1, -1, 99, INT32_MAX, INT32_MIN]
    return st.sampled_from(known) | st.sampled_from(unknown) | st.integers(INT32_MIN, INT32_MAX)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def dates() -> st.SearchStrategy[date_pb2.Date]:
    """google.type.Date, sensible and absurd: year 0/9999/negative, month 13, 31 February..."""
    today = _today()
    sensible = st.sampled_from(
        [
            (today.year, today.month, today.day),
            (today.year, today.month, 1),
            (today.year, 0, 0),
            (today.year, today.month, 0),
            (today.year + 1, 1, 1),
            (1990, 5, 17),
            (1900, 1, 1),
            (1899, 12, 31),
            (2000, 2, 29),
            (2023, 2, 29),
            (2024, 2, 29),
            (1999, 12, 31),
            (2099, 12, 31),
            (2024, 2, 31),
            (2023, 2, 30),
            (2024, 4, 31),
            (2024, 13, 1),
            (2024, 0, 15),
            (0, 0, 0),
            (0, 1, 1),
            (9999, 12, 31),
            (-1, 1, 1),
            (-2024, 6, 15),
        ]
    )
    absurd = st.tuples(
        st.sampled_from([0, 1, 1899, 1900, 1999, 2000, 2100, 9999, 10000, -1, -2024])
        | st.integers(INT32_MIN, INT32_MAX),
        st.sampled_from([0, 1, 2, 12, 13, -1, 255]) | st.integers(INT32_MIN, INT32_MAX),
        st.sampled_from([0, 1, 28, 29, 30, 31, 32, -1]) | st.integers(INT32_MIN, INT32_MAX),
    )
    return (sensible | absurd).map(lambda t: date_pb2.Date(year=t[0], month=t[1], day=t[2]))


def timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    seconds = st.sampled_from([0, -1, -62135596801, 253402300800, INT64_MIN, INT64_MAX])
    nanos = st.sampled_from([0, -1, 999_999_999, 1_000_000_000, INT32_MIN, INT32_MAX])
    return st.builds(
        timestamp_pb2.Timestamp,
        seconds=seconds | st.integers(INT64_MIN, INT64_MAX),
        nanos=nanos | st.integers(INT32_MIN, INT32_MAX),
    )


CITIZEN_FIELD_NAMES = tuple(f.name for f in citizen_pb2.Citizen.DESCRIPTOR.fields)


def mask_paths() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(CITIZEN_FIELD_NAMES),
        st.sampled_from(
            [
                "",
                "*",
                "date_of_birth.year",
                "date_of_birth.month.day",
                "citizen.full_name",
                "full_name.",
                ".full_name",
                "full_name,sex",
                "FullName",
                "fullName",
                "full_name ",
                " full_name",
                "FULL_NAME",
                "full_name\x00",
                "other_names[0]",
                "legacy_ids.0",
                "a.b.c.d.e.f.g.h",
            ]
        ),
        small_weird_text(),
    )


@st.composite
def field_masks(draw: st.DrawFn) -> field_mask_pb2.FieldMask:
    """Masks with garbage, duplicate, nested and huge lists of paths."""
    shape = draw(st.sampled_from(["few", "duplicated", "huge_same", "huge_mixed"]))
    if shape == "few":
        paths = draw(st.lists(mask_paths(), max_size=6))
    elif shape == "duplicated":
        paths = draw(st.lists(mask_paths(), min_size=1, max_size=3)) * draw(st.integers(2, 4))
    elif shape == "huge_same":
        paths = [draw(mask_paths())] * draw(st.integers(100, 20_000))
    else:
        base = draw(st.lists(st.sampled_from(CITIZEN_FIELD_NAMES), min_size=1, max_size=28))
        paths = (base * (5000 // len(base) + 1))[: draw(st.integers(100, 5000))]
        if draw(st.booleans()):
            paths.append(draw(small_weird_text()))
    return field_mask_pb2.FieldMask(paths=paths)


# -- messages ------------------------------------------------------------------------------------

SPECIAL_MESSAGES: dict[str, Callable[[], st.SearchStrategy[Message]]] = {
    "google.type.Date": dates,
    "google.protobuf.Timestamp": timestamps,
    "google.protobuf.FieldMask": field_masks,
}
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (INT32_MIN, INT32_MAX),
    FieldDescriptor.TYPE_SINT32: (INT32_MIN, INT32_MAX),
    FieldDescriptor.TYPE_SFIXED32: (INT32_MIN, INT32_MAX),
    FieldDescriptor.TYPE_INT64: (INT64_MIN, INT64_MAX),
    FieldDescriptor.TYPE_SINT64: (INT64_MIN, INT64_MAX),
    FieldDescriptor.TYPE_SFIXED64: (INT64_MIN, INT64_MAX),
    FieldDescriptor.TYPE_UINT32: (0, UINT32_MAX),
    FieldDescriptor.TYPE_FIXED32: (0, UINT32_MAX),
    FieldDescriptor.TYPE_UINT64: (0, UINT64_MAX),
    FieldDescriptor.TYPE_FIXED64: (0, UINT64_MAX),
}


def scalar_values(
    field: FieldDescriptor, depth: int, text: Sequence[str]
) -> st.SearchStrategy[Any]:
    """Values for one (non-repeated) occurrence of a field."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return weird_text(text)
    if kind in _INT_RANGES:
        return int_range(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return enum_numbers(field.enum_type)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1, text)
    raise NotImplementedError(f"no strategy for field type {kind} ({field.full_name})")


def field_values(
    field: FieldDescriptor, depth: int = 0, text: Sequence[str] = ()
) -> st.SearchStrategy[Any]:
    """Values for a field: one value, or a list of values for a repeated field."""
    single = scalar_values(field, depth, text)
    if not field.is_repeated:
        return single
    short = st.lists(single, max_size=5)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return short
    # A huge list of one small value: thousands of elements without megabytes of choices.
    small = weird_text(text) if field.type == FieldDescriptor.TYPE_STRING else single
    if field.type == FieldDescriptor.TYPE_STRING:
        small = small.filter(lambda s: len(s) <= 64)
    huge = st.tuples(small, st.integers(100, 5000)).map(lambda t: [t[0]] * t[1])
    return short | short.map(lambda v: v + v) | huge


def set_field(message: Message, field: FieldDescriptor, value: Any) -> None:
    """Set a field of a message to a value drawn from `field_values` (replacing what was there)."""
    message.ClearField(field.name)
    target = getattr(message, field.name)
    if field.is_repeated:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def messages(
    descriptor: Descriptor, depth: int = 0, text: Sequence[str] = ()
) -> st.SearchStrategy[Message]:
    """A random message of this type: each field unset or set to a random value."""
    special = SPECIAL_MESSAGES.get(descriptor.full_name)
    if special is not None:
        return special()
    cls = message_factory.GetMessageClass(descriptor)
    fields = [f for f in descriptor.fields if not (depth >= 3 and f.type == f.TYPE_MESSAGE)]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in fields:
            if draw(st.booleans()):
                set_field(message, field, draw(field_values(field, depth, text)))
        return message

    return build()


def huge_everywhere(descriptor: Descriptor, depth: int = 0) -> Message:
    """A message with every string field 64 KiB long (three of them in repeated fields)."""
    message = message_factory.GetMessageClass(descriptor)()
    if descriptor.full_name in SPECIAL_MESSAGES:
        return message
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            set_field(
                message, field, ["x" * HUGE_TEXT] * 3 if field.is_repeated else "x" * HUGE_TEXT
            )
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated and depth < 3:
            set_field(message, field, huge_everywhere(field.message_type, depth + 1))
    return message


def mutated(seed: Message, text: Sequence[str] = ()) -> st.SearchStrategy[Message]:
    """A valid-looking seed request with some of its fields replaced by random values.

    Random messages rarely get past the first check; a seed with one or two fields broken
    reaches the deeper rules and the database.
    """
    fields = list(seed.DESCRIPTOR.fields)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = type(seed)()
        message.CopyFrom(seed)
        chosen = draw(st.lists(st.sampled_from(fields), max_size=3, unique=True)) if fields else []
        for field in chosen:
            if draw(st.integers(0, 4)) == 0:
                message.ClearField(field.name)
            else:
                set_field(message, field, draw(field_values(field, 0, text)))
        return message

    return build()


def requests(
    descriptor: Descriptor, seeds: Sequence[Message] = (), text: Sequence[str] = ()
) -> st.SearchStrategy[Message]:
    """Requests of a type: mutated seeds (when given) or entirely random messages."""
    random_messages = messages(descriptor, 0, text)
    if not seeds:
        return random_messages
    return st.sampled_from(list(seeds)).flatmap(lambda s: mutated(s, text)) | random_messages


# -- raw bodies ----------------------------------------------------------------------------------

INVALID_UTF8 = (
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc3\x28",
    b"\xc0\xaf",  # overlong '/'
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xe1\xba",  # truncated sequence
    b"Nguy\xe1\xbb\x85n\xff",
    b"001\xff\xfe\xfd",
)


def varint(value: int) -> bytes:
    value &= UINT64_MAX
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def invalid_utf8() -> st.SearchStrategy[bytes]:
    def bad(b: bytes) -> bool:
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    return st.sampled_from(INVALID_UTF8) | st.binary(min_size=1, max_size=16).filter(bad)


def _string_paths(descriptor: Descriptor, depth: int = 0) -> list[tuple[int, ...]]:
    """Field-number paths to every string field, through nested message fields."""
    paths: list[tuple[int, ...]] = []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            paths.append((field.number,))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            paths.extend((field.number, *p) for p in _string_paths(field.message_type, depth + 1))
    return paths


@st.composite
def bad_utf8_bodies(draw: st.DrawFn, descriptor: Descriptor, valid: bytes) -> bytes:
    """Valid wire format whose (possibly nested) string field holds invalid UTF-8."""
    paths = _string_paths(descriptor) or [(1,)]
    path = draw(st.sampled_from(paths))
    prefix = draw(st.text(max_size=5)).encode()
    body = length_delimited(path[-1], prefix + draw(invalid_utf8()))
    for number in reversed(path[:-1]):
        body = length_delimited(number, body)
    where = draw(st.sampled_from(["alone", "after", "before"]))
    return {"alone": body, "after": valid + body, "before": body + valid}[where]


@st.composite
def corrupt_bodies(draw: st.DrawFn, valid: bytes) -> bytes:
    """Bytes that break the wire format itself."""
    kind = draw(
        st.sampled_from(
            [
                "random",
                "truncated",
                "length_too_long",
                "overlong_varint",
                "field_zero",
                "bad_wire_type",
                "unmatched_end_group",
                "deep_groups",
                "garbage_tail",
            ]
        )
    )
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=128))
    if kind == "truncated" and len(valid) > 1:
        return valid[: draw(st.integers(1, len(valid) - 1))]
    if kind == "length_too_long":
        return tag(draw(st.integers(1, 30)), 2) + varint(draw(st.integers(5, 2**62))) + b"abcd"
    if kind == "overlong_varint":
        return tag(draw(st.integers(1, 30)), 0) + b"\xff" * draw(st.integers(10, 20))
    if kind == "field_zero":
        return b"\x00\x01" + valid
    if kind == "bad_wire_type":
        return tag(draw(st.integers(1, 30)), draw(st.sampled_from([6, 7]))) + b"\x01\x02"
    if kind == "unmatched_end_group":
        return valid + tag(draw(st.integers(1, 30)), 4)
    if kind == "deep_groups":
        depth = draw(st.integers(50, 5000))
        return tag(99, 3) * depth + tag(99, 4) * depth
    return valid + draw(st.binary(min_size=1, max_size=16))


def raw_bodies(descriptor: Descriptor, valid: bytes) -> st.SearchStrategy[bytes]:
    """Request bodies that are not valid protobuf of this type (or barely are)."""
    return corrupt_bodies(valid) | bad_utf8_bodies(descriptor, valid)


# -- metadata ------------------------------------------------------------------------------------

VALID = "valid"  # a valid token with every scope: authentication must pass
INVALID = "invalid"  # no usable token: must be UNAUTHENTICATED
EITHER = "either"  # ambiguous (duplicated keys, scheme variants, narrowed scopes)


METADATA_BUDGET = 7 * 1024


def metadata_size(pairs: Sequence[tuple[str, str | bytes]]) -> int:
    """Size of metadata as HTTP/2 counts it (key + value + 32 per entry; -bin is base64)."""
    return sum(
        len(k) + (len(v) * 4 // 3 + 4 if isinstance(v, bytes) else len(v)) + 32 for k, v in pairs
    )


@dataclass(frozen=True)
class Metadata:
    pairs: tuple[tuple[str, str | bytes], ...]
    auth: str


def header_text(max_size: int) -> st.SearchStrategy[str]:
    """Text a gRPC client can send as an ASCII header value (0x20-0x7E)."""
    return st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=max_size
    )


def header_keys() -> st.SearchStrategy[str]:
    """Keys for text values: never ending in -bin, which gRPC reserves for bytes values (the
    client library refuses a str there with TypeError before anything is sent)."""
    return (
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=20)
        .map(lambda s: f"x-{s}")
        .filter(lambda key: not key.endswith("-bin"))
    )


def odd_extras() -> st.SearchStrategy[list[tuple[str, str | bytes]]]:
    """Extra metadata: odd x-purpose, -bin keys with invalid UTF-8, duplicated keys."""
    purpose = st.one_of(
        header_text(200),
        st.sampled_from(["", " ", "%00", "\\x00", "null", "birth registration", "a" * 200]),
        st.integers(201, 4000).map(lambda n: "p" * n),
    )
    binary = invalid_utf8() | st.binary(max_size=512)
    pair: st.SearchStrategy[tuple[str, str | bytes]] = st.one_of(
        st.tuples(st.just("x-purpose"), purpose),
        st.tuples(st.just("x-purpose-bin"), binary),
        st.tuples(st.just("authorization-bin"), binary),
        st.tuples(header_keys().map(lambda k: f"{k}-bin"), binary),
        st.tuples(header_keys(), header_text(100)),
    )
    return st.lists(pair, max_size=4).flatmap(
        lambda pairs: st.sampled_from([pairs, pairs + pairs])  # duplicated keys
    )


def garbage_authorization() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            [
                "",
                "Bearer",
                "Bearer ",
                "Basic dXNlcjpwYXNz",
                "Bearer null",
                "Bearer a.b.c",
                "Bearer ..",
                "Bearer eyJhbGciOiJub25lIn0.e30.",
                "Token x",
            ]
        ),
        header_text(300).map(lambda s: f"Bearer {s}"),
        header_text(300),
        st.integers(1000, 6000).map(lambda n: "Bearer " + "A" * n),
    )


def flip_signature(token: str, index: int) -> str:
    """Change one character in the middle of a JWT's signature (every bit of it counts)."""
    head, _, signature = token.rpartition(".")
    position = 1 + index % (len(signature) - 2)
    replacement = "A" if signature[position] != "A" else "B"
    return f"{head}.{signature[:position]}{replacement}{signature[position + 1 :]}"


@dataclass(frozen=True)
class Tokens:
    """Tokens of one agency: `valid` has every scope; `bad` must be refused (expired, wrong
    audience, unknown key...); `narrowed` carry a `scope` claim narrowing the agency's scopes."""

    valid: str
    bad: tuple[str, ...]
    narrowed: tuple[str, ...]


def call_metadata(tokens: Callable[[], Tokens]) -> st.SearchStrategy[Metadata]:
    """Metadata for a call: mostly a valid token plus oddities; sometimes no usable token.

    `tokens` is called at each draw, so that long runs never use an expired token.
    """

    @st.composite
    def build(draw: st.DrawFn) -> Metadata:
        current = tokens()
        token = current.valid
        auth = ("authorization", f"Bearer {token}")
        extras = draw(odd_extras())
        kind = draw(st.sampled_from([VALID] * 7 + [INVALID, INVALID, EITHER]))
        if kind == VALID:
            pairs: list[tuple[str, str | bytes]] = [auth]
        elif kind == INVALID:
            choice = draw(st.sampled_from(["none", "garbage", "bad_token", "flipped"]))
            if choice == "none":
                pairs = []
            elif choice == "garbage":
                pairs = [("authorization", draw(garbage_authorization()))]
            elif choice == "bad_token":
                pairs = [("authorization", f"Bearer {draw(st.sampled_from(current.bad))}")]
            else:
                flipped = flip_signature(token, draw(st.integers(0, 10_000)))
                pairs = [("authorization", f"Bearer {flipped}")]
        else:
            choice = draw(st.sampled_from(["duplicated", "scheme", "narrowed"]))
            if choice == "duplicated":
                other = ("authorization", draw(garbage_authorization()))
                pairs = draw(st.sampled_from([[auth, other], [other, auth], [auth, auth]]))
            elif choice == "scheme":
                scheme = draw(st.sampled_from(["bearer", "BEARER", "Bearer ", "bEaReR"]))
                pairs = [("authorization", f"{scheme} {token}")]
            else:
                narrowed = draw(st.sampled_from(current.narrowed))
                pairs = [("authorization", f"Bearer {narrowed}")]
        # Stay under gRPC's default 8 KiB metadata soft limit: above it the transport refuses
        # calls at random before the registry sees them (test_oversized_metadata covers that).
        while extras and metadata_size([*extras, *pairs]) > METADATA_BUDGET:
            extras.pop()
        position = draw(st.integers(0, len(extras)))
        return Metadata(tuple(extras[:position] + pairs + extras[position:]), kind)

    return build()


# -- token contents ------------------------------------------------------------------------------

# JSON-encoded, a "huge" token value stays near this size: with the rest of a token it must
# reach the server under its 16 KiB metadata limit (beyond it the transport refuses the call).
HUGE_JSON_VALUE = 10_000
# The JSON of a fuzzed token's header and claims together stays under this: base64 makes it 4/3
# longer, and the server's transport refuses any metadata value over 16,384 bytes with
# RESOURCE_EXHAUSTED before the registry sees it (a huge value plus a few 300-digit integers
# reached 16,414 characters). 11,800 bytes of JSON make at most ~15,900 with the signature.
TOKEN_JSON_BUDGET = 11_800
_HEADER_NAMES = ("alg", "kid", "typ", "crit", "b64", "jku", "x5u", "cty")
_CLAIM_NAMES = ("iss", "aud", "iat", "exp", "nbf", "scope", "sub", "jti")


@st.composite
def huge_token_text(draw: st.DrawFn) -> str:
    """A string whose JSON form is about HUGE_JSON_VALUE bytes (NUL and emoji escape long)."""
    chunk = draw(st.sampled_from(["a", "k1", "0", " ", "\x00", "\x1b", "😀", "ắ", "\ud800"]))
    encoded = len(json.dumps(chunk)) - 2
    return chunk * (HUGE_JSON_VALUE // encoded)


def json_scalars() -> st.SearchStrategy[Any]:
    """Every kind of JSON scalar, at its extremes: NaN, ±Infinity, 300-digit integers."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(10**300), 10**300]),
        st.floats(allow_nan=True, allow_infinity=True),
        small_weird_text(),
        st.text(alphabet=control_characters(), max_size=4),
    )


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, and lists and objects nesting them."""
    return st.recursive(
        json_scalars(),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(small_weird_text(), inner, max_size=4)
        ),
        max_leaves=12,
    )


def token_value(realistic: Sequence[Any], huge: bool = True) -> st.SearchStrategy[Any]:
    """What a header parameter or claim may be set to: anything, or near-valid values."""
    near = st.sampled_from(list(realistic)) if realistic else st.nothing()
    return st.one_of(json_values(), near, *([huge_token_text()] if huge else []))


@st.composite
def token_contents(
    draw: st.DrawFn, header: dict[str, Any], claims: dict[str, Any]
) -> tuple[Any, Any]:
    """A valid token's (header, claims) with a few parameters or claims set to any JSON value,
    added or removed; now and then a header or payload that is not an object at all. At most
    one value is huge, and the whole stays within TOKEN_JSON_BUDGET: a longer token is refused
    by the transport, not by the registry."""
    hints = [*header.values(), *claims.values(), "none", "HS256", "ES256 ", str(claims["iat"])]

    def changed(base: dict[str, Any], names: Sequence[str]) -> Any:
        if draw(st.integers(0, 19)) == 0:
            return draw(json_values())
        result = dict(base)
        for index in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(list(names)) | small_weird_text())
            if draw(st.integers(0, 5)) == 0:
                result.pop(name, None)
            else:
                result[name] = draw(token_value(hints, huge=index == 0))
        return result

    if draw(st.booleans()):
        contents = changed(header, _HEADER_NAMES), claims
    else:
        contents = header, changed(claims, _CLAIM_NAMES)
    assume(sum(len(json.dumps(part, allow_nan=True)) for part in contents) <= TOKEN_JSON_BUDGET)
    return contents
