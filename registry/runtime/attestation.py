"""The registry's own signing keys and the attestations it signs with them.

An attestation is a compact JWS (ES256) a verifying agency can hand to a third party as proof
that the register answered a verification: it states the PIN, the fields checked and their
results, the overall result, the agency and the time. Anyone verifies it offline with the
public keys published by IdentityService.GetSigningKeys (a JWKS).

Keys live as `<kid>.pem` files (PKCS#8, mode 0600) in one directory: created on first start,
rotated with `registry keys rotate` (the newest key signs). Every key in the directory is
published, so attestations signed by an older key stay verifiable; an operator prunes a retired
key only after its last attestation expired (`registry keys prune`). The same keys sign the
audit log's checkpoints (runtime.checkpoints), which never expire: pruning deletes a retired
key's private half but keeps its public half in `retired/<kid>.pem`, so `registry audit verify`
still checks the checkpoints it signed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISSUER = "citizen-registry"
ALGORITHM = "ES256"
DEFAULT_LIFETIME_S = 30 * 24 * 3600


@dataclass(frozen=True)
class SigningKey:
    """One of the registry's keys."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created: float


class SigningKeys:
    """The registry's key ring, read from (and, the first time, created in) a directory."""

    def __init__(self, directory: Path, lifetime_s: int = DEFAULT_LIFETIME_S):
        self.directory = directory
        self.lifetime_s = lifetime_s
        self._keys: list[SigningKey] = []
        self._public: dict[str, ec.EllipticCurvePublicKey] = {}
        self._jwks = '{"keys": []}'

    @classmethod
    def open(cls, directory: Path, lifetime_s: int = DEFAULT_LIFETIME_S) -> SigningKeys:
        """Load the key ring, creating its first key if the directory has none."""
        ring = cls(directory, lifetime_s)
        with ring._lock():
            if not any(directory.glob("*.pem")):
                ring._create()
        ring.reload()
        return ring

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two servers starting at once on a shared directory must not both create a key.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.directory / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _create(self) -> str:
        # The kid starts with its creation time to the microsecond, strictly after every
        # existing key's, so name order is age order even for rotations within one second.
        newest = max((_created(p.stem, p) for p in self.directory.glob("*.pem")), default=0.0)
        created = max(time.time(), newest + 1e-6)
        stamp = datetime.fromtimestamp(created, UTC).strftime(_KID_TIME)
        kid = f"{stamp}-{secrets.token_hex(3)}"
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self.directory / f"{kid}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        return kid

    def rotate(self) -> str:
        """Create a new key that signs from now on; older keys stay published."""
        with self._lock():
            kid = self._create()
        self.reload()
        return kid

    def reload(self) -> None:
        """Re-read the directory (picks up keys rotated by another process)."""
        keys = []
        for path in sorted(self.directory.glob("*.pem")):
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{path} is not an EC private key")
            keys.append(SigningKey(path.stem, private, _created(path.stem, path)))
        if not keys:
            raise ValueError(f"no signing keys in {self.directory}")
        keys.sort(key=lambda k: (k.created, k.kid))
        self._keys = keys
        self._public = public_keys(self.directory)
        self._jwks = json.dumps({"keys": [_jwk(k) for k in keys]}, sort_keys=True)

    @property
    def current(self) -> SigningKey:
        """Return the key that signs new attestations."""
        return self._keys[-1]

    @property
    def kids(self) -> list[str]:
        """Return the ids of all published keys, oldest first."""
        return [k.kid for k in self._keys]

    def public_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        """Return every key the registry signed with, published and retired, by kid."""
        return self._public

    def jwks_json(self) -> str:
        """Return the public keys as a JWKS document."""
        return self._jwks

    def sign(self, claims: Mapping[str, Any]) -> str:
        """Sign an attestation: a compact JWS with iss, iat, exp and jti added."""
        now = int(time.time())
        payload = {
            **claims,
            "iss": ISSUER,
            "iat": now,
            "exp": now + self.lifetime_s,
            "jti": uuid.uuid4().hex,
        }
        return self.sign_payload(payload, "JWT")[0]

    def sign_payload(self, payload: Mapping[str, Any], typ: str) -> tuple[str, str]:
        """Sign a payload as it is with the current key; return (compact JWS, kid)."""
        key = self.current
        token = jwt.encode(
            dict(payload),
            key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": key.kid, "typ": typ},
        )
        return token, key.kid

    def prune(self, now: float | None = None) -> list[str]:
        """Delete retired keys whose last attestation has expired; return their kids.

        A key stopped signing when its successor was created, so its last attestation expires
        one lifetime after that. The current key is never pruned. `now` defaults to the clock.
        """
        now = time.time() if now is None else now
        removed = []
        with self._lock():
            for key, successor in zip(self._keys, self._keys[1:], strict=False):
                if now > successor.created + self.lifetime_s:
                    _keep_public_half(self.directory, key)
                    (self.directory / f"{key.kid}.pem").unlink(missing_ok=True)
                    removed.append(key.kid)
        self.reload()
        return removed


_KID_TIME = "%Y%m%dT%H%M%S.%fZ"
RETIRED = "retired"


def _keep_public_half(directory: Path, key: SigningKey) -> None:
    # Checkpoints this key signed stay verifiable after its private half is gone.
    retired = directory / RETIRED
    retired.mkdir(mode=0o700, exist_ok=True)
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (retired / f"{key.kid}.pem").write_bytes(pem)


def public_keys(directory: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    """Return every public key the registry has signed with, by kid, without creating any.

    The published keys (`<kid>.pem`) and the public halves of pruned ones
    (`retired/<kid>.pem`); an empty mapping when the directory does not exist.
    """
    found: dict[str, ec.EllipticCurvePublicKey] = {}
    for path in sorted(directory.glob(f"{RETIRED}/*.pem")):
        public = serialization.load_pem_public_key(path.read_bytes())
        if isinstance(public, ec.EllipticCurvePublicKey):
            found[path.stem] = public
    for path in sorted(directory.glob("*.pem")):
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(private, ec.EllipticCurvePrivateKey):
            found[path.stem] = private.public_key()
    return found


def _created(kid: str, path: Path) -> float:
    """Return a key's creation time: from its kid, else (a key deployed by hand) its file."""
    try:
        return datetime.strptime(kid.split("-", 1)[0], _KID_TIME).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return path.stat().st_mtime


def _jwk(key: SigningKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.private_key.public_key(), as_dict=True)
    jwk.update({"kid": key.kid, "alg": ALGORITHM, "use": "sig"})
    return jwk
