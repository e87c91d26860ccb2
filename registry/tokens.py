"""Agency tokens (SPEC §6): asymmetric JWTs signed by the calling agency, verified with pyjwt.

The verifier never trusts the token's header to choose the algorithm: the algorithm is the one
of the registered key named by (iss, kid), and only asymmetric algorithms exist there, so
`alg: none` and HMAC tokens (including ones "signed" with a public key as the secret) fail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from registry.db.agencies import Agency
from registry.errors import unauthenticated
from registry.model import CHANGE_TYPES, Caller

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
    diacritic_insensitive: bool = False
    miss_budget: int | None = None
    watch_types: frozenset[int] = frozenset()


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
    expires_at: float


def unverified_key_id(token: str) -> tuple[str, str] | None:
    """Return the (iss, kid) a token claims, unverified; None if it names none."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None
    if isinstance(kid, str) and kid and isinstance(issuer, str) and issuer:
        return issuer, kid
    return None


def _parse_scope(claim: object) -> frozenset[str] | None:
    if claim is None:
        return None
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, list) and all(isinstance(s, str) for s in claim):
        return frozenset(claim)
    raise unauthenticated("TOKEN_SCOPE_INVALID", "the scope claim must be a space-separated string")


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
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise unauthenticated("TOKEN_MALFORMED", "the bearer token is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise unauthenticated(
                "TOKEN_ALGORITHM_NOT_ALLOWED",
                f"alg {alg!r} is not accepted; sign with ES256, EdDSA or RS256",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise unauthenticated("TOKEN_KID_MISSING", "the token header must name its key (kid)")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise unauthenticated("TOKEN_ISSUER_MISSING", "the token must carry iss = agency id")
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
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("TOKEN_EXPIRED", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthenticated("TOKEN_NOT_YET_VALID", "the token is not valid yet") from None
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
        except jwt.PyJWTError as exc:
            raise unauthenticated("TOKEN_INVALID", f"the token is invalid: {exc}") from None
        iat, exp = claims["iat"], claims["exp"]
        if iat > now + self.leeway_s:
            raise unauthenticated("TOKEN_NOT_YET_VALID", "the token was issued in the future")
        if exp - iat > self.max_lifetime_s:
            raise unauthenticated(
                "TOKEN_LIFETIME_TOO_LONG",
                f"exp - iat must be at most {self.max_lifetime_s} seconds",
            )
        return _Verified(issuer, kid, _parse_scope(claims.get("scope")), float(exp))
