"""Tests for registry.rules.pin: the keyed permutation of a bucket and PIN allocation (the
issue order of a bucket, its known answers, its limits)."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.rules import pin
from registry.rules.pin import (
    BUCKET_SIZE,
    BucketExhausted,
    Permutation,
    Sex,
)
from tests.rules.pins import KEY, OTHER_KEY, TABLE, keys

# --- permutation -----------------------------------------------------------------------------


@given(key=keys, half_bits=st.integers(1, 6))
def test_feistel_inverts_without_cycle_walking(key: bytes, half_bits: int) -> None:
    # With a domain of exactly 4**h no cycle-walk happens, so a wrong inverse fails here at
    # once rather than walking forever in the tests below.
    domain = 1 << (2 * half_bits)
    perm = Permutation(key, domain)
    assert [perm.inverse(perm.forward(i)) for i in range(domain)] == list(range(domain))


@settings(max_examples=60, deadline=None)
@given(key=keys, domain=st.integers(1, 5000))
def test_permutation_is_a_bijection_on_small_domains(key: bytes, domain: int) -> None:
    perm = Permutation(key, domain)
    images = [perm.forward(i) for i in range(domain)]
    assert sorted(images) == list(range(domain))
    assert [perm.inverse(x) for x in images] == list(range(domain))


@given(key=keys, domain=st.integers(1, 1 << 20), data=st.data())
def test_permutation_inverse_on_any_domain(key: bytes, domain: int, data: st.DataObject) -> None:
    perm = Permutation(key, domain)
    n = data.draw(st.integers(0, domain - 1))
    x = perm.forward(n)
    assert 0 <= x < domain
    assert perm.inverse(x) == n


def test_permutation_is_a_bijection_on_a_whole_bucket() -> None:
    perm = Permutation(KEY)
    started = time.perf_counter()
    seen = bytearray(BUCKET_SIZE)
    forward = perm.forward
    for n in range(BUCKET_SIZE):
        seen[forward(n)] = 1  # an image out of range would raise IndexError
    assert seen.count(1) == BUCKET_SIZE
    elapsed = time.perf_counter() - started
    assert elapsed < 20, f"forward() over a whole bucket took {elapsed:.1f} s"


def test_permutation_depends_on_key() -> None:
    a = Permutation(KEY, 1000)
    b = Permutation(OTHER_KEY, 1000)
    assert [a.forward(i) for i in range(1000)] != [b.forward(i) for i in range(1000)]
    # Deterministic: the same key gives the same permutation in another instance.
    assert [Permutation(KEY, 1000).forward(i) for i in range(1000)] == [
        a.forward(i) for i in range(1000)
    ]


@pytest.mark.parametrize("key", [b"", b"x" * 15, b"x" * 65])
def test_permutation_rejects_bad_keys(key: bytes) -> None:
    with pytest.raises(ValueError, match="key"):
        Permutation(key)


@pytest.mark.parametrize("domain", [0, -1, (1 << 20) + 1])
def test_permutation_rejects_bad_domains(domain: int) -> None:
    with pytest.raises(ValueError, match="domain"):
        Permutation(KEY, domain)


def test_permutation_rejects_values_outside_domain() -> None:
    perm = Permutation(KEY, 10)
    for bad in (-1, 10):
        with pytest.raises(ValueError):
            perm.forward(bad)
        with pytest.raises(ValueError):
            perm.inverse(bad)


# --- allocation ------------------------------------------------------------------------------


@given(
    key=keys,
    code=st.sampled_from(sorted(TABLE)),
    sex=st.sampled_from(Sex),
    year=st.integers(pin.MIN_BIRTH_YEAR, pin.MAX_BIRTH_YEAR),
    counter=st.integers(0, BUCKET_SIZE - 1),
)
@settings(deadline=None)
def test_allocated_pin_fits_its_bucket(
    key: bytes, code: str, sex: Sex, year: int, counter: int
) -> None:
    bucket = pin.bucket_for(code, sex, year)
    allocated = pin.allocate(bucket, key, counter)
    assert pin.check_structure(allocated, TABLE, sex=sex, birth_year=year) == []
    parts = pin.parse(allocated)
    assert parts.bucket == bucket
    assert pin.bucket_permutation(bucket, key).inverse(parts.random_part) == counter


def test_allocation_is_unique_within_a_bucket() -> None:
    bucket = pin.bucket_for("001", Sex.MALE, 2025)
    pins = {pin.allocate(bucket, KEY, counter) for counter in range(50_000)}
    assert len(pins) == 50_000


@settings(max_examples=10, deadline=None)
@given(key=keys)
def test_allocation_is_not_sequential(key: bytes) -> None:
    bucket = pin.bucket_for("079", Sex.FEMALE, 2025)
    parts = [pin.parse(pin.allocate(bucket, key, c)).random_part for c in range(10_001)]
    adjacent = sum(1 for a, b in itertools.pairwise(parts) if abs(a - b) == 1)
    assert adjacent < 100  # fewer than 1% of 10,000 consecutive pairs
    # Nor is it a constant stride.
    strides = {b - a for a, b in itertools.pairwise(parts)}
    assert len(strides) > 9_000


def test_allocation_differs_between_keys_and_buckets() -> None:
    bucket = pin.bucket_for("001", Sex.MALE, 2025)
    other_bucket = pin.bucket_for("001", Sex.FEMALE, 2025)
    own = [pin.parse(pin.allocate(bucket, KEY, c)).random_part for c in range(1000)]
    other_key = [pin.parse(pin.allocate(bucket, OTHER_KEY, c)).random_part for c in range(1000)]
    other_bkt = [pin.parse(pin.allocate(other_bucket, KEY, c)).random_part for c in range(1000)]
    # Independent sequences of a million values agree by chance in about 1 place in 10**6.
    assert sum(a == b for a, b in zip(own, other_key, strict=True)) < 5
    assert sum(a == b for a, b in zip(own, other_bkt, strict=True)) < 5


def test_bucket_exhausted_at_one_million() -> None:
    bucket = pin.bucket_for("001", Sex.MALE, 2025)
    last = pin.allocate(bucket, KEY, BUCKET_SIZE - 1)
    assert pin.parse(last).bucket == bucket
    with pytest.raises(BucketExhausted) as info:
        pin.allocate(bucket, KEY, BUCKET_SIZE)
    assert info.value.bucket == bucket
    assert "001225" in str(info.value)
    with pytest.raises(BucketExhausted):
        pin.allocate(bucket, KEY, BUCKET_SIZE + 12345)


def test_negative_counter_is_rejected() -> None:
    bucket = pin.bucket_for("001", Sex.MALE, 2025)
    with pytest.raises(ValueError, match="negative"):
        pin.allocate(bucket, KEY, -1)


@settings(max_examples=60, deadline=None)
@given(
    keys,
    st.sampled_from(["001", "079", "096"]),
    st.sampled_from(list(Sex)),
    st.integers(1900, 2099),
    st.integers(0, BUCKET_SIZE - 20),
    st.integers(0, 20),
)
def test_allocate_many_gives_what_allocate_gives_one_by_one(
    key: bytes, code: str, sex: Sex, year: int, first: int, count: int
) -> None:
    # Counts up to 8 take the unmemoised walk, more the cached permutation: both checked.
    bucket = pin.bucket_for(code, sex, year)
    expected = [pin.allocate(bucket, key, c) for c in range(first, first + count)]
    assert pin.allocate_many(bucket, key, first, count) == expected


def test_allocate_many_covers_a_small_domain_walk_and_the_bucket_end() -> None:
    bucket = pin.bucket_for("001", Sex.FEMALE, 1990)
    assert pin.allocate_many(bucket, KEY, BUCKET_SIZE - 3, 3) == [
        pin.allocate(bucket, KEY, c) for c in range(BUCKET_SIZE - 3, BUCKET_SIZE)
    ]
    assert pin.allocate_many(bucket, KEY, 5, 0) == []
    with pytest.raises(BucketExhausted):
        pin.allocate_many(bucket, KEY, BUCKET_SIZE - 2, 3)
    with pytest.raises(ValueError, match="negative"):
        pin.allocate_many(bucket, KEY, -1, 2)
    with pytest.raises(ValueError, match="negative"):
        pin.allocate_many(bucket, KEY, 0, -2)
    with pytest.raises(ValueError):
        pin.allocate_many(bucket, b"short", 0, 1)
    # The walk restricts the 2**20 network to the million numbers: counters whose network
    # image lies beyond (cycle-walked) are among the first few thousand.
    permutation = pin.bucket_permutation(bucket, KEY)
    walked = next(n for n in range(10_000) if _network_image(permutation, n) >= BUCKET_SIZE)
    assert pin.allocate_many(bucket, KEY, walked, 1) == [pin.allocate(bucket, KEY, walked)]


def _network_image(permutation: pin.Permutation, n: int) -> int:
    """One pass of the Feistel network (before cycle-walking), from its tables."""
    shift, mask = permutation._shift, permutation._mask
    left, right = n >> shift, n & mask
    for round_no, table in enumerate(permutation._tables):
        f = table[right]
        if f < 0:
            f = permutation._round(round_no, right)
        left, right = right, left ^ f
    return (left << shift) | right


def test_allocation_known_answers() -> None:
    bucket = pin.bucket_for("001", Sex.FEMALE, 2025)
    assert [pin.allocate(bucket, KEY, c) for c in (0, 1, 2, BUCKET_SIZE - 1)] == [
        "001325802056", "001325383882", "001325517719", "001325985717",
    ]  # fmt: skip
    assert pin.allocate_many(bucket, KEY, 0, 3) == [
        "001325802056", "001325383882", "001325517719",
    ]  # fmt: skip
    other = pin.bucket_for("079", Sex.MALE, 1950)
    assert pin.allocate_many(other, KEY, 0, 2) == ["079050491825", "079050444967"]


def test_permutation_known_answers_on_small_domains() -> None:
    assert [Permutation(KEY, 10).forward(i) for i in range(10)] == [4, 2, 0, 8, 1, 3, 9, 6, 7, 5]
    assert [Permutation(KEY, 3).forward(i) for i in range(3)] == [2, 1, 0]
    assert [Permutation(KEY, 1000).forward(i) for i in range(5)] == [782, 820, 980, 421, 249]
    assert Permutation(KEY, 1000).domain == 1000
    assert Permutation(KEY).domain == BUCKET_SIZE


def test_inverse_of_a_fresh_permutation_computes_its_own_rounds() -> None:
    # No forward() first: every round value the inverse needs is hashed by the inverse itself.
    assert [Permutation(KEY, 10).inverse(x) for x in (4, 2, 0, 8)] == [0, 1, 2, 3]
    assert Permutation(KEY, 1000).inverse(782) == 0


def test_a_walk_through_the_first_number_past_the_bucket_goes_on() -> None:
    # The counter whose cycle-walk passes through exactly 1,000,000 (the first value outside
    # the bucket) must walk on: stopping there would hand out a 7-digit random part.
    bucket = pin.bucket_for("001", Sex.FEMALE, 1990)
    permutation = pin.bucket_permutation(bucket, KEY)
    counter = _network_preimage(permutation, BUCKET_SIZE)
    while counter >= BUCKET_SIZE:
        counter = _network_preimage(permutation, counter)
    expected = pin.allocate(bucket, KEY, counter)
    assert pin.allocate_many(bucket, KEY, counter, 1) == [expected]
    assert pin.parse(expected).bucket == bucket


@pytest.mark.parametrize("domain", [(1 << k) + 1 for k in range(11)])
def test_permutation_is_a_bijection_just_above_each_power_of_two(domain: int) -> None:
    # The network is sized from (domain - 1)'s bit length: one past a power of two is where a
    # network one size too small would still run (and repeat values) instead of failing.
    permutation = Permutation(KEY, domain)
    images = [permutation.forward(n) for n in range(domain)]
    assert sorted(images) == list(range(domain))
    assert [permutation.inverse(x) for x in images] == list(range(domain))


def _network_preimage(permutation: pin.Permutation, x: int) -> int:
    """One pass of the Feistel network backwards (before cycle-walking)."""
    shift, mask = permutation._shift, permutation._mask
    left, right = x >> shift, x & mask
    for round_no in range(len(permutation._tables) - 1, -1, -1):
        f = permutation._tables[round_no][left]
        if f < 0:
            f = permutation._round(round_no, left)
        left, right = right ^ f, left
    return (left << shift) | right
