"""Agency tokens: short-lived JWTs signed with the agency's private key."""

from __future__ import annotations

import threading
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

#: Token lifetime in seconds (the registry accepts at most 900).
LIFETIME = 300
#: The longest token lifetime the registry accepts (SPEC §6: 15 minutes; not configurable).
MAX_LIFETIME = 900
#: A cached token is replaced when it has less than this many seconds left.
REFRESH_MARGIN = 60


def algorithm_for(key: object) -> str:
    """The JWS algorithm for a private key: ES256 (P-256), EdDSA (Ed25519), RS256 (RSA)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"EC keys must be P-256 for ES256, not {key.curve.name}")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError("RSA keys must have at least 2048 bits")
        return "RS256"
    raise ValueError(f"unsupported key type {type(key).__name__}: use P-256, Ed25519 or RSA")


class TokenSource:
    """Mints and caches the agency's bearer token; thread-safe."""

    def __init__(
        self,
        agency_id: str,
        kid: str,
        private_key_pem: str | bytes,
        audience: str = "citizen-registry",
        lifetime: int = LIFETIME,
    ):
        if not REFRESH_MARGIN < lifetime <= MAX_LIFETIME:
            raise ValueError(
                f"token lifetime must be {REFRESH_MARGIN + 1} to {MAX_LIFETIME} seconds, "
                f"not {lifetime}"
            )
        pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        self._key = load_pem_private_key(pem, password=None)
        self.algorithm = algorithm_for(self._key)
        self.agency_id = agency_id
        self.kid = kid
        self.audience = audience
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._token = ""
        self._expires = 0.0

    def token(self) -> str:
        """A valid token, minting a new one when the cached one is about to expire."""
        with self._lock:
            now = time.time()
            if now >= self._expires - REFRESH_MARGIN:
                iat = int(now)
                claims = {
                    "iss": self.agency_id,
                    "aud": self.audience,
                    "iat": iat,
                    "exp": iat + self.lifetime,
                }
                self._token = jwt.encode(
                    claims,
                    self._key,  # type: ignore[arg-type]
                    algorithm=self.algorithm,
                    headers={"kid": self.kid},
                )
                self._expires = iat + self.lifetime
            return self._token
