"""Personal identification numbers: structure, prefix table and collision-free allocation.

A PIN is 12 ASCII digits, ``PPP G YY RRRRRR`` (Decree 137/2015 art. 13):

* ``PPP`` the code of the province where the birth was registered (see :class:`PrefixTable`);
* ``G`` century and sex (see :func:`century_sex_digit`);
* ``YY`` the last two digits of the year of birth;
* ``RRRRRR`` the random part, one of :data:`BUCKET_SIZE` numbers per ``(PPP, G, YY)`` bucket.

Allocation draws the random part from a keyed pseudo-random permutation of the bucket indexed
by a per-bucket counter, so that issuing never collides with an earlier issue from the same
bucket, costs the same however full the bucket is, and reveals nothing about other numbers.
"""

from __future__ import annotations

import csv
import enum
import functools
import hashlib
import hmac
import io
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources

__all__ = [
    "BUCKET_SIZE",
    "MAX_BIRTH_YEAR",
    "MIN_BIRTH_YEAR",
    "PIN_LENGTH",
    "Bucket",
    "BucketExhausted",
    "Permutation",
    "PinFormatError",
    "PinParts",
    "PinProblem",
    "Prefix",
    "PrefixTable",
    "Sex",
    "allocate",
    "birth_year_of",
    "bucket_for",
    "bucket_permutation",
    "century_of_digit",
    "century_sex_digit",
    "check_structure",
    "compose",
    "is_well_formed",
    "parse",
    "sex_of_digit",
]

PIN_LENGTH = 12
BUCKET_SIZE = 1_000_000
MIN_BIRTH_YEAR = 1900
MAX_BIRTH_YEAR = 2399

_PREFIX_LENGTH = 3
_RANDOM_DIGITS = 6
_DEFAULT_TABLE_RESOURCE = "data/pin_prefixes.csv"


def _is_ascii_digits(text: str, length: int) -> bool:
    # str.isdigit() alone accepts '١' (Arabic-Indic one) and '²', which int() or a database
    # column would then treat differently from what the user typed.
    return len(text) == length and text.isascii() and text.isdigit()


def _check_province_code(code: str) -> None:
    if not _is_ascii_digits(code, _PREFIX_LENGTH):
        raise ValueError(f"province code must be 3 ASCII digits, got {code!r}")


# ---------------------------------------------------------------------------------------------
# Prefix table


@dataclass(frozen=True)
class Prefix:
    """One birth-registration code that may open a PIN."""

    code: str
    """Three ASCII digits, e.g. ``"001"``."""
    name: str
    """Human-readable name of the place, e.g. ``"Hà Nội"``."""
    kind: str
    """What the code stands for, e.g. ``"province"``; codes for births abroad use another kind."""
    valid_from: date
    """First day on which new PINs may be issued under this code."""
    valid_to: date | None = None
    """Last day on which new PINs may be issued; ``None`` while the code is open."""

    def __post_init__(self) -> None:
        _check_province_code(self.code)
        if self.valid_to is not None and self.valid_to < self.valid_from:
            raise ValueError(
                f"prefix {self.code}: valid_to {self.valid_to} is before valid_from "
                f"{self.valid_from}"
            )

    def open_on(self, day: date) -> bool:
        """Return whether new PINs may be issued under this code on ``day``."""
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


class PrefixTable(Mapping[str, Prefix]):
    """Immutable mapping from prefix code to :class:`Prefix`.

    A code stays *known* after it is closed for issuance: numbers issued under it stay valid
    (the 2025 merger of provinces did not change issued numbers).
    """

    __slots__ = ("_by_code",)

    def __init__(self, prefixes: Iterable[Prefix] = ()) -> None:
        by_code: dict[str, Prefix] = {}
        for prefix in prefixes:
            if prefix.code in by_code:
                raise ValueError(f"duplicate prefix code {prefix.code!r}")
            by_code[prefix.code] = prefix
        self._by_code = by_code

    @classmethod
    def from_rows(cls, rows: Iterable[Prefix]) -> PrefixTable:
        """Build a table from prefixes, e.g. rows read from the database."""
        return cls(rows)

    @classmethod
    def from_csv(cls, lines: Iterable[str]) -> PrefixTable:
        """Build a table from CSV text with columns ``code,name,kind,valid_from,valid_to``.

        Dates are ISO ``YYYY-MM-DD``; an empty ``valid_to`` means the code is open.
        """
        prefixes = []
        for line_no, row in enumerate(csv.DictReader(lines), start=2):
            try:
                valid_to = (row.get("valid_to") or "").strip()
                prefixes.append(
                    Prefix(
                        code=row["code"].strip(),
                        name=row["name"].strip(),
                        kind=row["kind"].strip(),
                        valid_from=date.fromisoformat(row["valid_from"].strip()),
                        valid_to=date.fromisoformat(valid_to) if valid_to else None,
                    )
                )
            except (KeyError, AttributeError, ValueError) as exc:
                raise ValueError(f"prefix table line {line_no}: {exc}") from exc
        return cls(prefixes)

    @classmethod
    def load_default(cls) -> PrefixTable:
        """Return the table packaged with the registry (63 province codes), loaded once."""
        return _default_table()

    def __getitem__(self, code: str) -> Prefix:
        return self._by_code[code]

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __len__(self) -> int:
        return len(self._by_code)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_code)

    def __repr__(self) -> str:
        return f"PrefixTable({len(self)} codes)"

    def is_known(self, code: str) -> bool:
        """Return whether ``code`` is in the table, open for issuance or not."""
        return code in self._by_code

    def open_for_issuance(self, code: str, day: date) -> bool:
        """Return whether new PINs may be issued under ``code`` on ``day``."""
        prefix = self._by_code.get(code)
        return prefix is not None and prefix.open_on(day)


@functools.cache
def _default_table() -> PrefixTable:
    text = resources.files("registry").joinpath(_DEFAULT_TABLE_RESOURCE).read_text("utf-8")
    return PrefixTable.from_csv(io.StringIO(text))


# ---------------------------------------------------------------------------------------------
# Century and sex digit


class Sex(enum.IntEnum):
    """Sex as encoded in the PIN; values equal the proto enum numbers."""

    MALE = 1
    FEMALE = 2


def century_sex_digit(year: int, sex: Sex) -> int:
    """Return the digit ``G`` for a person born in ``year`` of ``sex``.

    The arguments come in the order of the client package's ``century_sex_digit`` (issue 15:
    one order on both sides; tests/vectors/pin.json holds both to the same answers).

    Raises:
        ValueError: ``year`` is outside 1900–2399, which the PIN cannot encode.
    """
    if not MIN_BIRTH_YEAR <= year <= MAX_BIRTH_YEAR:
        raise ValueError(
            f"birth year {year} cannot be encoded in a PIN "
            f"(must be {MIN_BIRTH_YEAR}–{MAX_BIRTH_YEAR})"
        )
    return 2 * ((year - MIN_BIRTH_YEAR) // 100) + (0 if Sex(sex) is Sex.MALE else 1)


def _check_digit(g: int) -> None:
    if not 0 <= g <= 9:
        raise ValueError(f"century/sex digit must be 0–9, got {g}")


def sex_of_digit(g: int) -> Sex:
    """Return the sex encoded by the century/sex digit ``g``."""
    _check_digit(g)
    return Sex.MALE if g % 2 == 0 else Sex.FEMALE


def century_of_digit(g: int) -> int:
    """Return the first year of the century encoded by ``g`` (1900, 2000, … 2300)."""
    _check_digit(g)
    return MIN_BIRTH_YEAR + 100 * (g // 2)


def birth_year_of(g: int, yy: int) -> int:
    """Return the full year of birth encoded by ``g`` and the two-digit year ``yy``."""
    if not 0 <= yy <= 99:
        raise ValueError(f"two-digit year must be 0–99, got {yy}")
    return century_of_digit(g) + yy


# ---------------------------------------------------------------------------------------------
# Format, parsing and composition


class PinFormatError(ValueError):
    """The text is not a PIN: it is not exactly 12 ASCII digits."""


def is_well_formed(pin: str) -> bool:
    """Return whether ``pin`` is exactly 12 ASCII digits."""
    return _is_ascii_digits(pin, PIN_LENGTH)


@dataclass(frozen=True)
class PinParts:
    """The four fields of a well-formed PIN."""

    province_code: str
    """``PPP``, three ASCII digits."""
    g: int
    """Century/sex digit, 0–9."""
    yy: int
    """Last two digits of the year of birth, 0–99."""
    random_part: int
    """``RRRRRR``, 0–999999."""

    @property
    def sex(self) -> Sex:
        """Return the sex the PIN encodes."""
        return sex_of_digit(self.g)

    @property
    def birth_year(self) -> int:
        """Return the year of birth the PIN encodes."""
        return birth_year_of(self.g, self.yy)

    @property
    def bucket(self) -> Bucket:
        """Return the allocation bucket the PIN belongs to."""
        return Bucket(self.province_code, self.g, self.yy)


def parse(pin: str) -> PinParts:
    """Split a PIN into its fields.

    Raises:
        PinFormatError: ``pin`` is not exactly 12 ASCII digits.
    """
    if not is_well_formed(pin):
        raise PinFormatError(f"a PIN must be exactly {PIN_LENGTH} ASCII digits, got {pin!r}")
    return PinParts(
        province_code=pin[0:3],
        g=int(pin[3]),
        yy=int(pin[4:6]),
        random_part=int(pin[6:12]),
    )


def compose(province_code: str, sex: Sex, birth_year: int, random_part: int) -> str:
    """Return the PIN with the given fields.

    Raises:
        ValueError: a field is out of range (the prefix is not looked up in any table).
    """
    return bucket_for(province_code, sex, birth_year).pin(random_part)


class PinProblem(enum.Enum):
    """Why a PIN does not fit a person."""

    MALFORMED = "MALFORMED"
    """Not exactly 12 ASCII digits."""
    UNKNOWN_PREFIX = "UNKNOWN_PREFIX"
    """``PPP`` is not in the prefix table."""
    SEX_MISMATCH = "SEX_MISMATCH"
    """``G`` encodes the other sex."""
    CENTURY_MISMATCH = "CENTURY_MISMATCH"
    """``G`` encodes another century than the year of birth."""
    YEAR_MISMATCH = "YEAR_MISMATCH"
    """``YY`` differs from the last two digits of the year of birth."""


def check_structure(
    pin: str,
    table: PrefixTable,
    *,
    sex: Sex | None = None,
    birth_year: int | None = None,
) -> list[PinProblem]:
    """Return what is structurally wrong with ``pin``; an empty list means consistent.

    Only what is given is checked: without ``sex`` the parity of ``G`` is not compared, without
    ``birth_year`` neither the century nor ``YY``. A malformed PIN yields ``[MALFORMED]`` alone.
    A prefix closed for issuance is still known: numbers already issued under it stay valid.
    """
    if not is_well_formed(pin):
        return [PinProblem.MALFORMED]
    parts = parse(pin)
    problems: list[PinProblem] = []
    if not table.is_known(parts.province_code):
        problems.append(PinProblem.UNKNOWN_PREFIX)
    if sex is not None and parts.sex is not Sex(sex):
        problems.append(PinProblem.SEX_MISMATCH)
    if birth_year is not None:
        if century_of_digit(parts.g) != birth_year - birth_year % 100:
            problems.append(PinProblem.CENTURY_MISMATCH)
        if parts.yy != birth_year % 100:
            problems.append(PinProblem.YEAR_MISMATCH)
    return problems


# ---------------------------------------------------------------------------------------------
# Buckets and allocation


@dataclass(frozen=True)
class Bucket:
    """The 1,000,000 PINs that share ``PPP G YY``."""

    province_code: str
    g: int
    yy: int

    def __post_init__(self) -> None:
        _check_province_code(self.province_code)
        _check_digit(self.g)
        if not 0 <= self.yy <= 99:
            raise ValueError(f"two-digit year must be 0–99, got {self.yy}")

    @property
    def sex(self) -> Sex:
        """Return the sex of everyone in the bucket."""
        return sex_of_digit(self.g)

    @property
    def birth_year(self) -> int:
        """Return the year of birth of everyone in the bucket."""
        return birth_year_of(self.g, self.yy)

    def __str__(self) -> str:
        return f"{self.province_code}{self.g}{self.yy:02d}"

    def pin(self, random_part: int) -> str:
        """Return the PIN in this bucket with the given random part."""
        if not 0 <= random_part < BUCKET_SIZE:
            raise ValueError(f"random part must be 0–{BUCKET_SIZE - 1}, got {random_part}")
        return f"{self}{random_part:0{_RANDOM_DIGITS}d}"


def bucket_for(province_code: str, sex: Sex, birth_year: int) -> Bucket:
    """Return the bucket for a birth registered under ``province_code``."""
    return Bucket(province_code, century_sex_digit(birth_year, sex), birth_year % 100)


class BucketExhausted(Exception):
    """Every random part of a bucket has been issued."""

    def __init__(self, bucket: Bucket) -> None:
        super().__init__(f"all {BUCKET_SIZE:,} PINs of bucket {bucket} have been issued")
        self.bucket = bucket


_MAX_DOMAIN_BITS = 20
_MAX_DOMAIN = 1 << _MAX_DOMAIN_BITS
_ROUNDS = 10
_MIN_KEY_BYTES = 16
_MAX_KEY_BYTES = 64
# blake2b personalisation separates these hashes from any other use of the same key.
_ROUND_PERSON = b"registry.pin.rf1"
_BUCKET_PERSON = b"registry.pin.bk1"
# Round tables are arrays of 16-bit values, -1 where not computed yet: made by copying a
# template and freed without touching their items, so a permutation used once or twice (an
# import touches thousands of buckets once each) costs 7 µs of tables instead of 35 µs for
# lists, and a cached one 20 KB.
_UNSET_TABLES = {
    bits: array("h", [-1]) * (1 << bits) for bits in range(1, _MAX_DOMAIN_BITS // 2 + 1)
}


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"key must be bytes, got {type(key).__name__}")
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        raise ValueError(
            f"key must be {_MIN_KEY_BYTES}–{_MAX_KEY_BYTES} bytes long, got {len(key)}"
        )


class Permutation:
    """A keyed pseudo-random bijection of ``[0, domain)``.

    A balanced Feistel network of :data:`_ROUNDS` rounds permutes ``[0, 2**(2*h))``, where ``h``
    is the smallest half width that covers the domain (10 bits for a 1,000,000-number bucket);
    cycle-walking restricts it to ``[0, domain)``. The round function is keyed BLAKE2b over the
    round number and the half, memoised as it is used: a cold bucket costs a few hashes, not a
    16 ms tabulation that would stall the server's event loop, and a hot one is table look-ups.
    """

    __slots__ = ("_base", "_domain", "_half_bits", "_mask", "_shift", "_tables")

    def __init__(self, key: bytes, domain: int = BUCKET_SIZE) -> None:
        _check_key(key)
        if not 1 <= domain <= _MAX_DOMAIN:
            raise ValueError(f"domain must be 1–{_MAX_DOMAIN}, got {domain}")
        # Sizing the network to the domain, not always to 2**20, keeps cycle-walks short: the
        # expected number of passes is (network size / domain), at most 4 this way.
        half_bits = max(1, ((domain - 1).bit_length() + 1) // 2)
        half_size = 1 << half_bits
        self._base = hashlib.blake2b(key=key, digest_size=4, person=_ROUND_PERSON)
        self._domain = domain
        self._half_bits = half_bits
        self._shift = half_bits
        self._mask = half_size - 1
        # -1 marks a round output not computed yet.
        unset = _UNSET_TABLES[half_bits]
        self._tables = tuple(array("h", unset) for _ in range(_ROUNDS))

    def _round(self, round_no: int, half: int) -> int:
        # The half width is hashed too, so that networks of different sizes built from one key
        # do not share round functions.
        h = self._base.copy()
        h.update(bytes((round_no, self._half_bits)) + half.to_bytes(2, "big"))
        value = int.from_bytes(h.digest(), "big") & self._mask
        self._tables[round_no][half] = value
        return value

    @property
    def domain(self) -> int:
        """Return the number of values permuted."""
        return self._domain

    def forward(self, n: int) -> int:
        """Return the image of ``n``; distinct ``n`` in the domain give distinct images."""
        domain = self._domain
        if not 0 <= n < domain:
            raise ValueError(f"value must be 0–{domain - 1}, got {n}")
        shift, mask, tables = self._shift, self._mask, self._tables
        x = n
        # Cycle-walking: x lies on a cycle of the Feistel permutation, and that cycle comes
        # back to n itself (< domain), so the loop ends; stopping at the first value inside the
        # domain makes the map a bijection of [0, domain).
        while True:
            left, right = x >> shift, x & mask
            for round_no, table in enumerate(tables):
                f = table[right]
                if f < 0:
                    f = self._round(round_no, right)
                left, right = right, left ^ f
            x = (left << shift) | right
            if x < domain:
                return x

    def inverse(self, x: int) -> int:
        """Return the ``n`` whose image is ``x``."""
        domain = self._domain
        if not 0 <= x < domain:
            raise ValueError(f"value must be 0–{domain - 1}, got {x}")
        shift, mask, tables = self._shift, self._mask, self._tables
        n = x
        while True:
            left, right = n >> shift, n & mask
            for round_no in range(_ROUNDS - 1, -1, -1):
                f = tables[round_no][left]
                if f < 0:
                    f = self._round(round_no, left)
                left, right = right ^ f, left
            n = (left << shift) | right
            if n < domain:
                return n


def _bucket_subkey(key: bytes, bucket: Bucket) -> bytes:
    return hashlib.blake2b(
        str(bucket).encode("ascii"), key=key, digest_size=32, person=_BUCKET_PERSON
    ).digest()


@functools.lru_cache(maxsize=256)
def _cached_bucket_permutation(key: bytes, bucket: Bucket) -> Permutation:
    return Permutation(_bucket_subkey(key, bucket), BUCKET_SIZE)


def bucket_permutation(bucket: Bucket, key: bytes) -> Permutation:
    """Return the permutation that orders the random parts of ``bucket``.

    Each bucket gets its own key derived from ``key``, so the issue order seen in one bucket
    says nothing about any other. The result is cached, so a hot bucket (this year's births)
    keeps its memoised round functions.
    """
    _check_key(key)
    return _cached_bucket_permutation(bytes(key), bucket)


def allocate(bucket: Bucket, key: bytes, counter: int) -> str:
    """Return the PIN for the ``counter``-th issue (from 0) in ``bucket``.

    Distinct counters give distinct PINs, so a caller that never reuses a counter never
    collides with its own earlier issues. ``key`` must stay the same for the life of the
    registry: another key orders the bucket differently.

    Raises:
        BucketExhausted: ``counter`` is 1,000,000 or more.
        ValueError: ``counter`` is negative or the key has the wrong length.
    """
    if counter < 0:
        raise ValueError(f"counter must not be negative, got {counter}")
    if counter >= BUCKET_SIZE:
        raise BucketExhausted(bucket)
    return bucket.pin(bucket_permutation(bucket, key).forward(counter))


def allocate_many(bucket: Bucket, key: bytes, first: int, count: int) -> list[str]:
    """Return the PINs of the counters ``first`` to ``first + count - 1`` of ``bucket``: what
    `allocate` gives for each, in order.

    An import draws one or two numbers from each of thousands of buckets: for a few counters
    the rounds are hashed directly, without the memo tables and the cache that pay off for a
    bucket in steady use (this year's births), and without evicting those from the cache.
    """
    if first < 0 or count < 0:
        raise ValueError(f"counters must not be negative, got {first} and {count}")
    if first + count > BUCKET_SIZE:
        raise BucketExhausted(bucket)
    _check_key(key)
    if count > _FEW:
        permutation = _cached_bucket_permutation(bytes(key), bucket)
        return [bucket.pin(permutation.forward(n)) for n in range(first, first + count)]
    walk = _unmemoised_walk(_bucket_subkey(bytes(key), bucket))
    return [bucket.pin(walk(n)) for n in range(first, first + count)]


# Up to this many counters of a bucket at once are drawn without the memo tables.
_FEW = 8


def _unmemoised_walk(subkey: bytes, domain: int = BUCKET_SIZE) -> Callable[[int], int]:
    """Permutation(subkey, domain).forward without its tables: the same network, each round
    hashed when needed (test_pin.py holds the two equal)."""
    half_bits = max(1, ((domain - 1).bit_length() + 1) // 2)
    mask = (1 << half_bits) - 1
    base = hashlib.blake2b(key=subkey, digest_size=4, person=_ROUND_PERSON)

    def forward(n: int) -> int:
        x = n
        while True:
            left, right = x >> half_bits, x & mask
            for round_no in range(_ROUNDS):
                h = base.copy()
                h.update(bytes((round_no, half_bits)) + right.to_bytes(2, "big"))
                left, right = right, left ^ (int.from_bytes(h.digest(), "big") & mask)
            x = (left << half_bits) | right
            if x < domain:
                return x

    return forward


# Bucket key versions (pin_buckets.key_version). Version 0: the stored 32 bytes are the key
# itself, so a copy of the database predicts a bucket's future PINs; buckets made before
# migration 0015 keep it (their permutation cannot change without breaking the bijection).
# Version 1: the stored bytes are a salt; the key is HMAC-SHA256(secret, salt) with the
# registry's PIN secret, kept beside the signing keys and never in the database.
KEY_VERSION_STORED = 0
KEY_VERSION_SECRET = 1
_SECRET_PERSON = b"registry.pin.key.v1\x00"
_FINGERPRINT_PERSON = b"registry.pin.fingerprint.v1\x00"


class PinSecretMissing(RuntimeError):
    """A bucket keyed with the PIN secret was reached without the secret."""


def bucket_key(stored: bytes, version: int, secret: bytes | None) -> bytes:
    """Return the permutation key of a bucket from its stored bytes and key version."""
    if version == KEY_VERSION_STORED:
        return stored
    if version != KEY_VERSION_SECRET:
        raise ValueError(f"unknown PIN bucket key version {version}")
    if secret is None:
        raise PinSecretMissing("this bucket's key needs the registry's PIN secret")
    return hmac.new(secret, _SECRET_PERSON + stored, hashlib.sha256).digest()


def secret_fingerprint(secret: bytes) -> bytes:
    """Return a value that identifies the PIN secret without revealing it (stored in the db,
    so that a server with another secret refuses to issue instead of colliding)."""
    return hmac.new(secret, _FINGERPRINT_PERSON, hashlib.sha256).digest()
