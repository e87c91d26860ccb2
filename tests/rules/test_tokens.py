"""registry/rules/tokens.py on its own: token shape checks, signature verification, the clock
rules and the verified-token cache, with a clock the test controls (no server: the gRPC tests in
tests/grpc/auth show the same rules through the channel)."""

from __future__ import annotations

import base64
import json
from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from registry.rules.agencies import Agency, AgencyKey
from registry.rules.errors import Code, RegistryError
from registry.rules.model import CHANGE_TYPES
from registry.rules.tokens import (
    MAX_KID_CHARS,
    MAX_TOKEN_CHARS,
    DirectorySnapshot,
    KeyError_,
    TokenVerifier,
    load_public_key,
    read_unverified,
    unverified_key_id,
    valid_agency_id,
    valid_kid,
)

AUD = "registry.test"
NOW = 1_800_000_000  # a fixed "now", 2027-01-15
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pem(private_key: Any) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def agency(agency_id: str = "bank-x", **overrides: Any) -> Agency:
    fields: dict[str, Any] = {
        "id": agency_id,
        "name": "Ngân hàng X",
        "kind": "OTHER",
        "scopes": ("identity:verify", "citizen:read"),
        "fields": ("full_name", "date_of_birth"),
        "rate_limit": 50,
        "enabled": True,
        "keys": (
            AgencyKey("k1", "ES256", pem(EC_KEY), T0, None),
            AgencyKey("ed", "EdDSA", pem(ED_KEY), T0, None),
        ),
        "miss_budget": 7,
        "watch_types": ("BORN", "DIED"),
    }
    fields.update(overrides)
    return Agency(**fields)


def directory(*agencies: Agency) -> DirectorySnapshot:
    return DirectorySnapshot.from_agencies(agencies or (agency(),))


def token(
    *,
    iss: str = "bank-x",
    kid: str = "k1",
    key: Any = EC_KEY,
    alg: str = "ES256",
    iat: float | None = NOW,
    lifetime: float = 300,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"iss": iss, "aud": AUD}
    if iat is not None:
        payload["iat"] = iat
        payload["exp"] = iat + lifetime
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, **(headers or {})})


def unsigned(header: object, claims: object, signature: str = "c2ln") -> str:
    """A token with exactly this header and payload, signed by no one."""

    def part(value: object) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.{signature}"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None, **options: Any) -> TokenVerifier:
    return TokenVerifier(AUD, clock=clock or Clock(), **options)


def refusal(call: Any, *args: Any, **kwargs: Any) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        call(*args, **kwargs)
    assert info.value.code is Code.UNAUTHENTICATED
    return info.value


# Keys


def test_each_accepted_key_type_gives_its_algorithm():
    assert load_public_key(pem(EC_KEY))[0] == "ES256"
    assert load_public_key(pem(ED_KEY))[0] == "EdDSA"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    algorithm, public = load_public_key(pem(rsa_key))
    assert algorithm == "RS256" and public.public_numbers() == rsa_key.public_key().public_numbers()


@pytest.mark.parametrize(
    "make, says",
    [
        (
            lambda: ec.generate_private_key(ec.SECP384R1()),
            "EC keys must be on P-256 for ES256, not secp384r1",
        ),
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
            "RSA keys must have at least 2048 bits",
        ),
        (
            lambda: x25519.X25519PrivateKey.generate(),
            "unsupported key type {type}: use ES256, EdDSA or RS256",
        ),
    ],
)
def test_weak_or_foreign_keys_are_refused(make, says):
    key = make()
    if "{type}" in says:
        says = says.format(type=type(key.public_key()).__name__)
    with pytest.raises(KeyError_) as info:
        load_public_key(pem(key))
    assert str(info.value) == says


def test_text_that_is_not_a_pem_key_is_refused():
    with pytest.raises(KeyError_, match=r"^not a PEM public key: "):
        load_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_a_snapshot_carries_every_registration_setting_and_skips_unusable_keys(caplog):
    registered = agency(
        name_matching="DIACRITIC_INSENSITIVE",
        enabled_at=T0,
        keys=(
            AgencyKey("k1", "ES256", pem(EC_KEY), T0, None),
            AgencyKey("old", "ES256", pem(OTHER_EC_KEY), T0, T0),
            AgencyKey("bad", "ES256", "not a key", T0, None),
            AgencyKey("liar", "RS256", pem(EC_KEY), T0, None),
            AgencyKey("after", "EdDSA", pem(ED_KEY), T0, None),
        ),
    )
    snapshot = DirectorySnapshot.from_agencies([registered, agency("strict-1", enabled=False)])
    entry = snapshot.agencies["bank-x"]
    assert (entry.id, entry.name, entry.kind, entry.rate_limit, entry.miss_budget) == (
        "bank-x",
        "Ngân hàng X",
        "OTHER",
        50,
        7,
    )
    assert entry.scopes == frozenset({"identity:verify", "citizen:read"})
    assert entry.fields == frozenset({"full_name", "date_of_birth"})
    assert entry.enabled and entry.diacritic_insensitive and entry.enabled_at == T0
    assert entry.watch_types == frozenset({CHANGE_TYPES["BORN"], CHANGE_TYPES["DIED"]})
    other = snapshot.agencies["strict-1"]
    assert not other.enabled and not other.diacritic_insensitive and other.enabled_at is None
    assert sorted(k for k in snapshot.keys if k[0] == "bank-x") == [
        ("bank-x", "after"),
        ("bank-x", "k1"),
        ("bank-x", "old"),
    ]
    assert not snapshot.keys[("bank-x", "k1")].revoked and snapshot.keys[("bank-x", "old")].revoked
    assert snapshot.keys[("bank-x", "k1")].algorithm == "ES256"
    unusable = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(unusable) == 2
    assert unusable[0].startswith("agency bank-x key bad is unusable: not a PEM public key: ")
    assert unusable[1] == "agency bank-x key liar: stored algorithm mismatch"
    with pytest.raises(FrozenInstanceError):
        entry.enabled = False  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        snapshot.keys[("bank-x", "k1")].revoked = True  # type: ignore[misc]


# Names a token may carry


def test_kid_limits():
    assert MAX_KID_CHARS == 128
    assert valid_kid("k") and valid_kid("x" * 128) and valid_kid("khoá 2026")
    assert not valid_kid("") and not valid_kid("x" * 129)
    assert not valid_kid("k\x00") and not valid_kid("k\n") and not valid_kid(7)


def test_agency_id_limits():
    assert valid_agency_id("a") and valid_agency_id("A" + "b.c_d-9" * 9)
    assert valid_agency_id("a" * 64) and not valid_agency_id("a" * 65)
    for bad in ("", ".a", "-a", "a b", "a/b", "ngân", 42, None):
        assert not valid_agency_id(bad), bad


# Shape and claim types, before anything is looked up


def test_a_well_formed_token_names_its_algorithm_key_and_issuer():
    assert read_unverified(token()) == ("ES256", "k1", "bank-x")
    assert unverified_key_id(token(kid="ed", key=ED_KEY, alg="EdDSA")) == ("bank-x", "ed")
    assert unverified_key_id("not a token") is None


def test_length_limit_is_exact():
    assert MAX_TOKEN_CHARS == 8192  # docs/errors.md and the metadata limit are sized on it
    good = token()
    padded = good + "A" * (8192 - len(good))
    assert read_unverified(padded)[2] == "bank-x"  # long enough, still read (signature is later)
    error = refusal(read_unverified, padded + "A")
    assert error.reason == "TOKEN_MALFORMED" and "8192 characters" in error.message


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a.b",
        "a.b.c.d",
        "a b.c.d",
        "eyJ.eyJ.x=",
        unsigned(["alg"], {"iss": "bank-x"}),
        unsigned({"alg": "ES256", "kid": "k1"}, "claims"),
        unsigned({"alg": "ES256", "kid": "k1"}, b"\xff\xfe"),
        unsigned(b'{"alg": NaN}', {"iss": "bank-x"}),
        unsigned({"alg": "ES256", "kid": "k1"}, {"iss": "bank-x"}, signature="abcde"),
    ],
)
def test_what_is_not_a_compact_jws_of_two_json_objects_is_malformed(text):
    assert refusal(read_unverified, text).reason == "TOKEN_MALFORMED"


def test_an_empty_signature_is_read_and_then_fails_verification():
    text = unsigned({"alg": "ES256", "kid": "k1"}, {"iss": "bank-x"}, signature="")
    assert read_unverified(text) == ("ES256", "k1", "bank-x")


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", None, 5, ["ES256"]])
def test_only_the_three_asymmetric_algorithms_are_read(alg):
    error = refusal(read_unverified, unsigned({"alg": alg, "kid": "k1"}, {"iss": "bank-x"}))
    assert (
        error.reason == "TOKEN_ALGORITHM_NOT_ALLOWED" and "ES256, EdDSA or RS256" in error.message
    )


def test_an_alg_is_quoted_only_when_short_and_printable():
    def said(alg: object) -> str:
        return refusal(read_unverified, unsigned({"alg": alg, "kid": "k"}, {"iss": "a"})).message

    tail = "is not accepted; sign with ES256, EdDSA or RS256"
    assert said("HS512") == f"alg 'HS512' {tail}"
    assert said("H" * 32) == f"alg {'H' * 32!r} {tail}"
    assert said("H" * 33) == f"alg (a str) {tail}"
    assert said("x\x00y") == f"alg (a str) {tail}"
    assert said(7) == f"alg (a int) {tail}"


@pytest.mark.parametrize("parameter", ["crit", "b64"])
def test_header_parameters_that_change_the_reading_are_refused(parameter):
    header = {"alg": "ES256", "kid": "k1", parameter: False}
    error = refusal(read_unverified, unsigned(header, {"iss": "bank-x"}))
    assert (error.reason, error.metadata) == ("TOKEN_HEADER_INVALID", {"parameter": parameter})


@pytest.mark.parametrize(
    "header, reason",
    [
        ({"alg": "ES256"}, "TOKEN_KID_MISSING"),
        ({"alg": "ES256", "kid": None}, "TOKEN_KID_MISSING"),
        ({"alg": "ES256", "kid": ""}, "TOKEN_KID_MISSING"),
        ({"alg": "ES256", "kid": 1}, "TOKEN_HEADER_INVALID"),
        ({"alg": "ES256", "kid": "x" * 129}, "TOKEN_HEADER_INVALID"),
        ({"alg": "ES256", "kid": "k\u2028"}, "TOKEN_HEADER_INVALID"),
    ],
)
def test_the_kid_must_name_a_key(header, reason):
    error = refusal(read_unverified, unsigned(header, {"iss": "bank-x"}))
    assert error.reason == reason
    if reason == "TOKEN_HEADER_INVALID":
        assert error.metadata == {"parameter": "kid"}


@pytest.mark.parametrize(
    "claims, reason, claim",
    [
        ({}, "TOKEN_ISSUER_MISSING", None),
        ({"iss": None}, "TOKEN_ISSUER_MISSING", None),
        ({"iss": ""}, "TOKEN_ISSUER_MISSING", None),
        ({"iss": 7}, "TOKEN_CLAIM_INVALID", "iss"),
        ({"iss": "bank x"}, "TOKEN_CLAIM_INVALID", "iss"),
        ({"iss": "a", "iat": "1700000000"}, "TOKEN_CLAIM_INVALID", "iat"),
        ({"iss": "a", "exp": True}, "TOKEN_CLAIM_INVALID", "exp"),
        ({"iss": "a", "nbf": -1}, "TOKEN_CLAIM_INVALID", "nbf"),
        ({"iss": "a", "exp": 10**11 + 1}, "TOKEN_CLAIM_INVALID", "exp"),
        ({"iss": "a", "iat": None}, "TOKEN_CLAIM_INVALID", "iat"),
        ({"iss": "a", "aud": ""}, "TOKEN_CLAIM_INVALID", "aud"),
        ({"iss": "a", "aud": []}, "TOKEN_CLAIM_INVALID", "aud"),
        ({"iss": "a", "aud": [AUD, 3]}, "TOKEN_CLAIM_INVALID", "aud"),
        ({"iss": "a", "aud": "x" * 257}, "TOKEN_CLAIM_INVALID", "aud"),
        ({"iss": "a", "aud": {"x": 1}}, "TOKEN_CLAIM_INVALID", "aud"),
        ({"iss": "a", "scope": 5}, "TOKEN_SCOPE_INVALID", None),
        ({"iss": "a", "scope": ["a", 5]}, "TOKEN_SCOPE_INVALID", None),
        ({"iss": "a", "scope": {"a": 1}}, "TOKEN_SCOPE_INVALID", None),
    ],
)
def test_claims_of_the_wrong_type_or_range_are_refused_naming_the_claim(claims, reason, claim):
    error = refusal(read_unverified, unsigned({"alg": "ES256", "kid": "k1"}, claims))
    assert error.reason == reason
    if claim is not None:
        assert error.metadata == {"claim": claim}


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "a", "iat": 0, "exp": 10**11, "nbf": 1.5},
        {"iss": "a", "aud": "x" * 256},
        {"iss": "a", "aud": "x"},
        {"iss": "a", "aud": ["x"]},
        {"iss": "a", "aud": [AUD, "other"]},
        {"iss": "a", "scope": "a b"},
        {"iss": "a", "scope": ["a", "b"]},
        {"iss": "a", "scope": []},
    ],
)
def test_claims_at_the_edges_of_their_ranges_are_read(claims):
    assert read_unverified(unsigned({"alg": "EdDSA", "kid": "k1"}, claims)) == ("EdDSA", "k1", "a")


# Verification


def test_a_valid_token_proves_its_agency_with_every_registration_setting():
    snapshot = directory(agency(name_matching="DIACRITIC_INSENSITIVE"))
    caller = verifier().verify(token(), snapshot, purpose="KYC")
    assert caller.agency_id == "bank-x" and caller.kid == "k1" and caller.purpose == "KYC"
    assert caller.scopes == frozenset({"identity:verify", "citizen:read"})
    assert caller.fields == frozenset({"full_name", "date_of_birth"})
    assert (caller.rate_limit, caller.miss_budget, caller.diacritic_insensitive) == (50, 7, True)
    assert caller.watch_types == frozenset({CHANGE_TYPES["BORN"], CHANGE_TYPES["DIED"]})
    ed = verifier().verify(token(kid="ed", key=ED_KEY, alg="EdDSA"), directory())
    assert ed.kid == "ed" and not ed.diacritic_insensitive and ed.purpose == ""


@pytest.mark.parametrize(
    "scope, expected",
    [
        ("citizen:read", {"citizen:read"}),
        ("citizen:read card:issue", {"citizen:read"}),
        (["identity:verify", "audit:read"], {"identity:verify"}),
        ("", set()),
    ],
)
def test_a_token_scope_narrows_the_registration_and_never_widens_it(scope, expected):
    assert verifier().verify(token(scope=scope), directory()).scopes == frozenset(expected)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: token(kid="k9"), "TOKEN_KEY_UNKNOWN"),
        (lambda: token(iss="bank-y"), "TOKEN_KEY_UNKNOWN"),
        (lambda: token(kid="ed"), "TOKEN_ALGORITHM_MISMATCH"),
        (lambda: token(key=OTHER_EC_KEY), "TOKEN_SIGNATURE_INVALID"),
        (lambda: token(aud="elsewhere"), "TOKEN_AUDIENCE_INVALID"),
        (lambda: token(iat=None, exp=NOW + 60), "TOKEN_CLAIM_MISSING"),
        (lambda: token(exp=None), "TOKEN_CLAIM_MISSING"),
        (lambda: token(aud=None), "TOKEN_CLAIM_MISSING"),
        (lambda: token(nbf=NOW + 31), "TOKEN_NOT_YET_VALID"),
        (lambda: token(iat=NOW + 31), "TOKEN_NOT_YET_VALID"),
        (lambda: token(iat=NOW - 400), "TOKEN_EXPIRED"),
        (lambda: token(lifetime=901), "TOKEN_LIFETIME_TOO_LONG"),
        (lambda: token(sub=5), "TOKEN_INVALID"),  # pyjwt's own claim checks
    ],
)
def test_each_failure_is_refused_with_its_reason(make, reason):
    assert refusal(verifier().verify, make(), directory()).reason == reason


def test_a_token_with_its_signature_cut_off_is_refused():
    head, body, _ = token().split(".")
    error = refusal(verifier().verify, f"{head}.{body}.", directory())
    assert error.reason == "TOKEN_SIGNATURE_INVALID"


def test_the_clock_rules_hold_to_the_second():
    snapshot = directory()
    at = verifier(Clock(NOW)).verify
    assert at(token(iat=NOW + 30), snapshot).agency_id == "bank-x"  # skew of 30 s allowed
    assert at(token(iat=NOW - 329), snapshot).agency_id == "bank-x"  # expired 29 s ago: leeway
    assert refusal(at, token(iat=NOW - 330), snapshot).reason == "TOKEN_EXPIRED"
    assert at(token(nbf=NOW + 30), snapshot).agency_id == "bank-x"
    assert at(token(lifetime=900), snapshot).agency_id == "bank-x"
    assert refusal(at, token(lifetime=900.5), snapshot).reason == "TOKEN_LIFETIME_TOO_LONG"
    longer = verifier(Clock(NOW), max_lifetime_s=3600, leeway_s=0).verify
    assert longer(token(lifetime=3600), snapshot).agency_id == "bank-x"
    assert refusal(longer, token(iat=NOW + 1), snapshot).reason == "TOKEN_NOT_YET_VALID"
    assert refusal(longer, token(iat=NOW - 300), snapshot).reason == "TOKEN_EXPIRED"
    error = refusal(longer, token(lifetime=3601), snapshot)
    assert "3600 seconds" in error.message


def test_revoked_keys_disabled_and_unknown_agencies_are_refused():
    revoked = agency(keys=(AgencyKey("k1", "ES256", pem(EC_KEY), T0, T0),))
    assert refusal(verifier().verify, token(), directory(revoked)).reason == "TOKEN_KEY_REVOKED"
    disabled = agency(enabled=False)
    assert refusal(verifier().verify, token(), directory(disabled)).reason == "AGENCY_DISABLED"
    keys_only = DirectorySnapshot({}, directory().keys)
    assert refusal(verifier().verify, token(), keys_only).reason == "AGENCY_DISABLED"


def test_tokens_issued_before_the_latest_enable_are_refused():
    enabled_at = datetime.fromtimestamp(NOW - 10, UTC)
    snapshot = directory(agency(enabled_at=enabled_at))
    error = refusal(verifier().verify, token(iat=NOW - 11), snapshot)
    assert error.reason == "TOKEN_ISSUED_BEFORE_ENABLE"
    assert error.metadata == {"enabled_at": enabled_at.isoformat()}
    assert verifier().verify(token(iat=NOW - 10), snapshot).agency_id == "bank-x"


# The verified-token cache


def swapped_key(snapshot: DirectorySnapshot) -> DirectorySnapshot:
    """The same directory with k1's public key replaced: only a cached token still passes."""
    entry = snapshot.keys[("bank-x", "k1")]
    keys = {**snapshot.keys, ("bank-x", "k1"): replace(entry, public_key=OTHER_EC_KEY.public_key())}
    return DirectorySnapshot(snapshot.agencies, keys)


def test_a_verified_token_is_cached_but_agency_and_key_state_are_checked_every_call():
    snapshot = directory()
    tokens = verifier()
    text = token()
    tokens.verify(text, snapshot)
    assert tokens.verify(text, swapped_key(snapshot)).agency_id == "bank-x"  # from the cache
    assert refusal(tokens.verify, token(iat=NOW - 1), swapped_key(snapshot)).reason == (
        "TOKEN_SIGNATURE_INVALID"
    )
    revoked = agency(keys=(AgencyKey("k1", "ES256", pem(EC_KEY), T0, T0),))
    assert refusal(tokens.verify, text, directory(revoked)).reason == "TOKEN_KEY_REVOKED"
    assert refusal(tokens.verify, text, directory(agency(enabled=False))).reason == (
        "AGENCY_DISABLED"
    )
    no_key = DirectorySnapshot(snapshot.agencies, {})
    assert refusal(tokens.verify, text, no_key).reason == "TOKEN_KEY_UNKNOWN"
    narrowed = agency(scopes=("citizen:read",))
    assert tokens.verify(text, directory(narrowed)).scopes == frozenset({"citizen:read"})


def test_a_cached_token_is_verified_again_once_past_its_expiry_and_leeway():
    clock = Clock(NOW)
    tokens = verifier(clock)
    text = token(lifetime=60)
    snapshot = directory()
    tokens.verify(text, snapshot)
    clock.now = NOW + 60 + 29
    assert tokens.verify(text, swapped_key(snapshot)).agency_id == "bank-x"  # still cached
    clock.now = NOW + 60 + 30
    assert refusal(tokens.verify, text, snapshot).reason == "TOKEN_EXPIRED"


def test_a_full_cache_drops_expired_tokens_first_and_else_starts_over():
    clock = Clock(NOW)
    tokens = verifier(clock, cache_size=2)
    snapshot = directory()
    short, long_, third, fourth = (
        token(lifetime=10),
        token(lifetime=600),
        token(lifetime=601),
        token(lifetime=602),
    )
    tokens.verify(short, snapshot)
    tokens.verify(long_, snapshot)
    clock.now = NOW + 10  # short expires now (still within the leeway): the first to go
    tokens.verify(third, snapshot)  # full: short is dropped, long_ kept
    swapped = swapped_key(snapshot)
    assert tokens.verify(long_, swapped).agency_id == "bank-x"
    assert tokens.verify(third, swapped).agency_id == "bank-x"
    assert refusal(tokens.verify, short, swapped).reason == "TOKEN_SIGNATURE_INVALID"
    tokens.verify(fourth, snapshot)  # full of live tokens: the cache starts over
    assert tokens.verify(fourth, swapped).agency_id == "bank-x"
    assert refusal(tokens.verify, long_, swapped).reason == "TOKEN_SIGNATURE_INVALID"


def test_every_refusal_says_exactly_why():
    """The messages are the contract's explanation to the calling agency (docs/errors.md)."""
    snapshot = directory()
    revoked = directory(agency(keys=(AgencyKey("k1", "ES256", pem(EC_KEY), T0, T0),)))
    late = directory(agency(enabled_at=datetime.fromtimestamp(NOW, UTC)))
    header = {"alg": "ES256", "kid": "k1"}
    cached, cached_token = verifier(), token(iat=NOW - 5)
    cached.verify(cached_token, snapshot)
    cases = [
        (lambda: read_unverified("x" * 8193), "the bearer token is longer than 8192 characters"),
        (lambda: read_unverified("a.b"), "the bearer token is not a JWT (three base64url parts)"),
        (
            lambda: read_unverified(unsigned(header, ["x"])),
            "the bearer token is not a JWT (header and payload: JSON objects)",
        ),
        (
            lambda: read_unverified(unsigned({**header, "crit": ["x"]}, {"iss": "a"})),
            "the header parameter 'crit' is not accepted",
        ),
        (
            lambda: read_unverified(unsigned({"alg": "ES256"}, {"iss": "a"})),
            "the token header must name its key (kid)",
        ),
        (
            lambda: read_unverified(unsigned({"alg": "ES256", "kid": 5}, {"iss": "a"})),
            "kid must be a string of 1 to 128 printable characters",
        ),
        (
            lambda: read_unverified(unsigned(header, {})),
            "the token must carry iss = agency id",
        ),
        (
            lambda: read_unverified(unsigned(header, {"iss": "a b"})),
            "iss must be an agency id (1 to 64 letters, digits, '.', '_' or '-')",
        ),
        (
            lambda: read_unverified(unsigned(header, {"iss": "a", "nbf": "x"})),
            "nbf must be a number of seconds since 1970 (a JSON number)",
        ),
        (
            lambda: read_unverified(unsigned(header, {"iss": "a", "aud": 1})),
            "aud must be a string or a list of strings",
        ),
        (
            lambda: read_unverified(unsigned(header, {"iss": "a", "scope": 1})),
            "the scope claim must be a space-separated string (or a list of strings)",
        ),
        (
            lambda: verifier().verify(token(kid="k9"), snapshot),
            "no key 'k9' is registered for agency 'bank-x'",
        ),
        (
            lambda: cached.verify(cached_token, DirectorySnapshot(snapshot.agencies, {})),
            "the token's signing key is not registered",
        ),
        (lambda: verifier().verify(token(), revoked), "key 'k1' has been revoked"),
        (
            lambda: verifier().verify(token(), directory(agency(enabled=False))),
            "agency 'bank-x' is disabled",
        ),
        (
            lambda: verifier().verify(token(iat=NOW - 1), late),
            "the token was issued (iat) before agency 'bank-x' was last enabled; sign a new token",
        ),
        (
            lambda: verifier().verify(token(kid="ed"), snapshot),
            "key 'ed' signs with EdDSA, not ES256",
        ),
        (
            lambda: verifier().verify(token(aud="x"), snapshot),
            "the token's aud must be 'registry.test'",
        ),
        (
            lambda: verifier().verify(token(key=OTHER_EC_KEY), snapshot),
            "the token's signature is invalid",
        ),
        (
            lambda: verifier().verify(token(exp=None), snapshot),
            "the token lacks the exp claim",
        ),
        (
            lambda: verifier().verify(token(sub=5), snapshot),
            "the token is invalid: Subject must be a string",
        ),
        (lambda: verifier().verify(token(iat=NOW - 400), snapshot), "the token has expired"),
        (
            lambda: verifier().verify(token(iat=NOW + 31), snapshot),
            "the token was issued in the future",
        ),
        (lambda: verifier().verify(token(nbf=NOW + 31), snapshot), "the token is not valid yet"),
        (
            lambda: verifier().verify(token(lifetime=901), snapshot),
            "exp - iat must be at most 900 seconds",
        ),
    ]
    for call, message in cases:
        assert refusal(call).message == message
