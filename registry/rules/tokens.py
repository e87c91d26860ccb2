"""Agency tokens (SPEC §6): asymmetric JWTs signed by the calling agency, verified with pyjwt.

The verifier never trusts the token's header to choose the algorithm: the algorithm is the one
of the registered key named by (iss, kid), and only asymmetric algorithms exist there, so
`alg: none` and HMAC tokens (including ones "signed" with a public key as the secret) fail.

Everything in a token is the caller's, signed or not: before any value is looked up (iss, kid)
or computed with (iat, exp, nbf), its type, range and characters are checked here, so that no
header or claim an unauthenticated caller sends can reach the database or raise anything but
UNAUTHENTICATED with a reason.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from registry.rules.agencies import Agency
from registry.rules.errors import RegistryError, unauthenticated
from registry.rules.model import CHANGE_TYPES, Caller

log = logging.getLogger(__name__)

ALGORITHMS = ("ES256", "EdDSA", "RS256")
SCOPES = (
    "birth:register",
    "death:register",
    "card:issue",
    "card:revoke",
    "card:read",
    "identity:verify",
    "citizen:read",
    "population:import",
    "citizen:update",
    "changes:watch",
    "audit:read",
    # With audit:read: confidential agencies' access-log entries in full (oversight bodies).
    "audit:read-confidential",
)
_MIN_RSA_BITS = 2048

# A real token is well under 2 KiB (an RS256 signature is 342 characters); gRPC's metadata
# limit (8 KiB by default) stops longer ones earlier anyway.
MAX_TOKEN_CHARS = 8192
MAX_KID_CHARS = 128
# What an iss must look like to name any agency (agencies_id_check, migration 0001).
AGENCY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# NumericDate claims (iat, exp, nbf): seconds since 1970, before the year 5138.
_MAX_NUMERIC_DATE = 10**11
_MAX_AUDIENCE_CHARS = 256
# Header parameters that change how a token is read (RFC 7515 §4.1.11, RFC 7797): agencies
# have no use for them, and a verifier that ignored them would read another token than signed.
_REFUSED_HEADER_PARAMETERS = ("crit", "b64")

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class KeyError_(ValueError):
    """A public key is not acceptable for agency tokens."""


def load_public_key(pem: str) -> tuple[str, PublicKey]:
    """Parse an agency's PEM public key; return (JWT algorithm, key)."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise KeyError_(f"not a PEM public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyError_(f"EC keys must be on P-256 for ES256, not {key.curve.name}")
        return "ES256", key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA", key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise KeyError_(f"RSA keys must have at least {_MIN_RSA_BITS} bits")
        return "RS256", key
    raise KeyError_(f"unsupported key type {type(key).__name__}: use ES256, EdDSA or RS256")


@dataclass(frozen=True)
class AgencyEntry:
    """What the server needs to know of an agency on every call."""

    id: str
    name: str
    kind: str
    scopes: frozenset[str]
    fields: frozenset[str]
    rate_limit: int | None
    enabled: bool
    diacritic_insensitive: bool
    miss_budget: int | None
    enabled_at: datetime | None
    """When an operator last enabled the agency again; tokens issued before are refused."""
    watch_types: frozenset[int]


@dataclass(frozen=True)
class KeyEntry:
    """A parsed agency key."""

    agency_id: str
    kid: str
    algorithm: str
    public_key: PublicKey
    revoked: bool


class DirectorySnapshot:
    """An immutable view of all agencies and keys, swapped whole on every reload."""

    def __init__(self, agencies: dict[str, AgencyEntry], keys: dict[tuple[str, str], KeyEntry]):
        self.agencies = agencies
        self.keys = keys

    @classmethod
    def from_agencies(cls, rows: Iterable[Agency]) -> DirectorySnapshot:
        """Build a snapshot, parsing every key once (a bad stored key is skipped, loudly)."""
        agencies: dict[str, AgencyEntry] = {}
        keys: dict[tuple[str, str], KeyEntry] = {}
        for agency in rows:
            agencies[agency.id] = AgencyEntry(
                id=agency.id,
                name=agency.name,
                kind=agency.kind,
                scopes=frozenset(agency.scopes),
                fields=frozenset(agency.fields),
                rate_limit=agency.rate_limit,
                enabled=agency.enabled,
                diacritic_insensitive=agency.name_matching == "DIACRITIC_INSENSITIVE",
                miss_budget=agency.miss_budget,
                enabled_at=agency.enabled_at,
                watch_types=frozenset(CHANGE_TYPES[t] for t in agency.watch_types),
            )
            for key in agency.keys:
                try:
                    algorithm, public_key = load_public_key(key.public_key_pem)
                except KeyError_ as exc:
                    log.error("agency %s key %s is unusable: %s", agency.id, key.kid, exc)
                    continue
                if algorithm != key.algorithm:
                    log.error("agency %s key %s: stored algorithm mismatch", agency.id, key.kid)
                    continue
                keys[(agency.id, key.kid)] = KeyEntry(
                    agency.id, key.kid, algorithm, public_key, key.revoked_at is not None
                )
        return cls(agencies, keys)


@dataclass(frozen=True)
class _Verified:
    agency_id: str
    kid: str
    token_scopes: frozenset[str] | None
    issued_at: float
    expires_at: float


def valid_kid(value: object) -> bool:
    """Tell whether value can name a registered key: 1 to 128 printable characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_KID_CHARS and value.isprintable()


def valid_agency_id(value: object) -> bool:
    """Tell whether value can name an agency (the agencies_id_check of the database)."""
    return isinstance(value, str) and AGENCY_ID.fullmatch(value) is not None


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _json_segment(segment: str) -> object:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # binascii.Error and UnicodeError are ValueErrors
        return None


def _numeric_date(value: object) -> bool:
    # type(), not isinstance(): True and False are ints to Python, not times to anyone.
    return type(value) in (int, float) and 0 <= value <= _MAX_NUMERIC_DATE  # type: ignore[operator]


def _audience(value: object) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(
        isinstance(v, str) and 0 < len(v) <= _MAX_AUDIENCE_CHARS for v in values
    )


def _shown(value: object) -> str:
    """Quote a short printable string the caller sent; describe anything else by its type."""
    if isinstance(value, str) and len(value) <= 32 and value.isprintable():
        return repr(value)
    return f"(a {type(value).__name__})"


def read_unverified(token: str) -> tuple[str, str, str]:
    """Check a token's shape, header and claim types; return its (alg, kid, iss), unverified.

    Raises UNAUTHENTICATED naming what is wrong: the token's own values are never trusted to
    be of the type, range or characters a lookup or a comparison needs.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise unauthenticated(
            "TOKEN_MALFORMED", f"the bearer token is longer than {MAX_TOKEN_CHARS} characters"
        )
    if _COMPACT_JWS.fullmatch(token) is None:
        raise unauthenticated(
            "TOKEN_MALFORMED", "the bearer token is not a JWT (three base64url parts)"
        )
    head, body, signature = token.split(".")
    header, claims = _json_segment(head), _json_segment(body)
    if not isinstance(header, dict) or not isinstance(claims, dict) or len(signature) % 4 == 1:
        raise unauthenticated(
            "TOKEN_MALFORMED", "the bearer token is not a JWT (header and payload: JSON objects)"
        )
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise unauthenticated(
            "TOKEN_ALGORITHM_NOT_ALLOWED",
            f"alg {_shown(alg)} is not accepted; sign with ES256, EdDSA or RS256",
        )
    for name in _REFUSED_HEADER_PARAMETERS:
        if name in header:
            raise unauthenticated(
                "TOKEN_HEADER_INVALID",
                f"the header parameter {name!r} is not accepted",
                parameter=name,
            )
    kid = header.get("kid")
    if kid is None or kid == "":
        raise unauthenticated("TOKEN_KID_MISSING", "the token header must name its key (kid)")
    if not valid_kid(kid):
        raise unauthenticated(
            "TOKEN_HEADER_INVALID",
            f"kid must be a string of 1 to {MAX_KID_CHARS} printable characters",
            parameter="kid",
        )
    issuer = claims.get("iss")
    if issuer is None or issuer == "":
        raise unauthenticated("TOKEN_ISSUER_MISSING", "the token must carry iss = agency id")
    if not valid_agency_id(issuer):
        raise unauthenticated(
            "TOKEN_CLAIM_INVALID",
            "iss must be an agency id (1 to 64 letters, digits, '.', '_' or '-')",
            claim="iss",
        )
    for name in ("iat", "exp", "nbf"):
        if name in claims and not _numeric_date(claims[name]):
            raise unauthenticated(
                "TOKEN_CLAIM_INVALID",
                f"{name} must be a number of seconds since 1970 (a JSON number)",
                claim=name,
            )
    if "aud" in claims and not _audience(claims["aud"]):
        raise unauthenticated(
            "TOKEN_CLAIM_INVALID", "aud must be a string or a list of strings", claim="aud"
        )
    _parse_scope(claims.get("scope"))
    return alg, kid, issuer


def unverified_key_id(token: str) -> tuple[str, str] | None:
    """Return the (iss, kid) a well-formed token claims, unverified; None if it names none."""
    try:
        _, kid, issuer = read_unverified(token)
    except RegistryError:
        return None
    return issuer, kid


def _parse_scope(claim: object) -> frozenset[str] | None:
    if claim is None:
        return None
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, list) and all(isinstance(s, str) for s in claim):
        return frozenset(claim)
    raise unauthenticated(
        "TOKEN_SCOPE_INVALID",
        "the scope claim must be a space-separated string (or a list of strings)",
    )


class TokenVerifier:
    """Verify agency bearer tokens against a directory snapshot, caching verified tokens."""

    def __init__(
        self,
        audience: str,
        *,
        max_lifetime_s: int = 900,
        leeway_s: int = 30,
        cache_size: int = 100_000,
        clock: Callable[[], float] = time.time,
    ):
        self.audience = audience
        self.max_lifetime_s = max_lifetime_s
        self.leeway_s = leeway_s
        self.cache_size = cache_size
        self._clock = clock
        # Verified tokens by their text: ECDSA verification costs far more than the call it
        # guards. Agency and key state are re-checked on every hit, so revocation still applies.
        self._cache: dict[str, _Verified] = {}

    def verify(self, token: str, directory: DirectorySnapshot, purpose: str = "") -> Caller:
        """Return the caller a token proves, or raise UNAUTHENTICATED saying why."""
        now = self._clock()
        verified = self._cache.get(token)
        if verified is None or verified.expires_at <= now - self.leeway_s:
            verified = self._verify_signature(token, directory, now)
            self._remember(token, verified, now)
        key = directory.keys.get((verified.agency_id, verified.kid))
        if key is None:
            raise unauthenticated("TOKEN_KEY_UNKNOWN", "the token's signing key is not registered")
        if key.revoked:
            raise unauthenticated("TOKEN_KEY_REVOKED", f"key {verified.kid!r} has been revoked")
        agency = directory.agencies.get(verified.agency_id)
        if agency is None or not agency.enabled:
            raise unauthenticated("AGENCY_DISABLED", f"agency {verified.agency_id!r} is disabled")
        if agency.enabled_at is not None and verified.issued_at < agency.enabled_at.timestamp():
            # Disabling an agency ends its tokens for good: enabling it again must not revive
            # those minted before (perhaps the very tokens it was disabled for).
            raise unauthenticated(
                "TOKEN_ISSUED_BEFORE_ENABLE",
                f"the token was issued (iat) before agency {agency.id!r} was last enabled; "
                "sign a new token",
                enabled_at=agency.enabled_at.isoformat(),
            )
        scopes = agency.scopes
        if verified.token_scopes is not None:
            scopes = scopes & verified.token_scopes  # a token narrows, never widens
        return Caller(
            agency_id=agency.id,
            scopes=scopes,
            fields=agency.fields,
            kid=key.kid,
            purpose=purpose,
            diacritic_insensitive=agency.diacritic_insensitive,
            rate_limit=agency.rate_limit,
            miss_budget=agency.miss_budget,
            watch_types=agency.watch_types,
        )

    def _remember(self, token: str, verified: _Verified, now: float) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache = {t: v for t, v in self._cache.items() if v.expires_at > now}
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
        self._cache[token] = verified

    def _verify_signature(self, token: str, directory: DirectorySnapshot, now: float) -> _Verified:
        alg, kid, issuer = read_unverified(token)
        key = directory.keys.get((issuer, kid))
        if key is None:
            raise unauthenticated(
                "TOKEN_KEY_UNKNOWN", f"no key {kid!r} is registered for agency {issuer!r}"
            )
        if key.algorithm != alg:
            raise unauthenticated(
                "TOKEN_ALGORITHM_MISMATCH", f"key {kid!r} signs with {key.algorithm}, not {alg}"
            )
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=issuer,
                # The times are checked below against this verifier's clock, the one its cache
                # uses too (pyjwt would read the wall clock: two clocks, two answers).
                options={
                    "require": ["exp", "iat", "iss", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise unauthenticated(
                "TOKEN_AUDIENCE_INVALID", f"the token's aud must be {self.audience!r}"
            ) from None
        except jwt.InvalidSignatureError:
            raise unauthenticated(
                "TOKEN_SIGNATURE_INVALID", "the token's signature is invalid"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthenticated(
                "TOKEN_CLAIM_MISSING", f"the token lacks the {exc.claim} claim"
            ) from None
        except jwt.DecodeError:
            raise unauthenticated("TOKEN_MALFORMED", "the bearer token is not a JWT") from None
        except jwt.PyJWTError as exc:
            raise unauthenticated("TOKEN_INVALID", f"the token is invalid: {exc}") from None
        # read_unverified has checked that iat, exp and nbf are numbers of seconds.
        iat, exp = claims["iat"], claims["exp"]
        if exp <= now - self.leeway_s:
            raise unauthenticated("TOKEN_EXPIRED", "the token has expired")
        if iat > now + self.leeway_s:
            raise unauthenticated("TOKEN_NOT_YET_VALID", "the token was issued in the future")
        if claims.get("nbf", iat) > now + self.leeway_s:
            raise unauthenticated("TOKEN_NOT_YET_VALID", "the token is not valid yet")
        if exp - iat > self.max_lifetime_s:
            raise unauthenticated(
                "TOKEN_LIFETIME_TOO_LONG",
                f"exp - iat must be at most {self.max_lifetime_s} seconds",
            )
        return _Verified(issuer, kid, _parse_scope(claims.get("scope")), float(iat), float(exp))
