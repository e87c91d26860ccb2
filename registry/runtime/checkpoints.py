"""Signed checkpoints of the audit chain, and checking a chain against them (SPEC §7).

The hash chain (rules.audit) shows that entries agree with each other, not that they are the
ones recorded: whoever can write the table can rewrite an entry and recompute every later hash,
or cut the tail and rewind the head. A checkpoint pins the chain as it was: the registry signs
(sequence, head hash, time) with its signing key (runtime.attestation), which is kept outside
the database, so nobody holding only the database can make one. A checkpoint holds when the
chain being verified has an entry at its sequence whose hash is its head hash.

A checkpoint is a compact JWS (ES256), verifiable with the GetSigningKeys JWKS:

    header   {"alg": "ES256", "kid": <signing key>, "typ": "audit-checkpoint+jwt"}
    payload  {"iss": "citizen-registry", "aud": "citizen-registry/audit-checkpoint",
              "sub": "audit-log", "seq": <entry position>, "head_hash": <64 hex digits>,
              "iat": <signing time, Unix seconds>}

The `aud` and `typ` keep a checkpoint and an attestation from being taken for each other: an
attestation has no `aud` (a JWT library verifying one with no audience refuses a token that has
one), and a checkpoint must have this one. Checkpoints do not expire.

Outside the database, a server appends every checkpoint it signs to a file in its data
directory (Settings.checkpoint_file): one JWS per line, fsync'd. Nothing here talks to the
database or gRPC.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from registry.rules.audit import Walk
from registry.runtime.attestation import ALGORITHM, ISSUER, SigningKeys

AUDIENCE = "citizen-registry/audit-checkpoint"
SUBJECT = "audit-log"
TYPE = "audit-checkpoint+jwt"
# A line longer than this is no checkpoint (a real one is about 400 bytes).
_MAX_JWS = 4096


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature verified (or that this process just signed)."""

    seq: int
    head_hash: bytes
    time: datetime
    jws: str
    kid: str

    def describe(self) -> str:
        """Name the checkpoint for an operator: position and signing time."""
        return f"checkpoint at sequence {self.seq} (signed {_iso(self.time)})"


class CheckpointInvalid(ValueError):
    """A JWS that is not a checkpoint signed by the registry; the message says why."""


def sign(keys: SigningKeys, seq: int, head_hash: bytes, at: datetime) -> Checkpoint:
    """Sign the chain's link at `seq` as it is at time `at` (whole seconds are kept)."""
    iat = int(at.timestamp())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "seq": seq,
        "head_hash": head_hash.hex(),
        "iat": iat,
    }
    token, kid = keys.sign_payload(payload, TYPE)
    return Checkpoint(seq, head_hash, datetime.fromtimestamp(iat, UTC), token, kid)


def decode(token: str, keys: Mapping[str, ec.EllipticCurvePublicKey]) -> Checkpoint:
    """Verify a checkpoint's signature with the registry's public keys and read it.

    Raises CheckpointInvalid naming what is wrong: not a JWS, a key the registry never had, a
    signature that does not verify, or a signed token that is not a checkpoint.
    """
    token = token.strip()
    if len(token) > _MAX_JWS:
        raise CheckpointInvalid("not a compact JWS (too long)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise CheckpointInvalid("not a compact JWS") from None
    kid = header.get("kid")
    if header.get("alg") != ALGORITHM:
        raise CheckpointInvalid(f"signed with alg {header.get('alg')!r}, not {ALGORITHM}")
    if not isinstance(kid, str) or kid not in keys:
        raise CheckpointInvalid(f"signed with key {kid!r}, which is not one of the registry's")
    try:
        raw = jwt.PyJWS().decode(token, keys[kid], algorithms=[ALGORITHM])
    except jwt.PyJWTError:
        raise CheckpointInvalid(
            f"its signature does not verify with the registry's key {kid}"
        ) from None
    # Signed by the registry from here on: what remains is whether it signed a checkpoint.
    try:
        claims = json.loads(raw)
    except ValueError:
        raise CheckpointInvalid("signed, but its payload is not JSON") from None
    if not isinstance(claims, dict) or header.get("typ") != TYPE or claims.get("aud") != AUDIENCE:
        raise CheckpointInvalid("signed by the registry, but not an audit checkpoint")
    seq, head, iat = claims.get("seq"), claims.get("head_hash"), claims.get("iat")
    if (
        claims.get("iss") != ISSUER
        or claims.get("sub") != SUBJECT
        or not isinstance(seq, int)
        or isinstance(seq, bool)
        or seq < 1
        or not isinstance(iat, int)
        or isinstance(iat, bool)
        or not isinstance(head, str)
        or len(head) != 64
    ):
        raise CheckpointInvalid("signed by the registry, but its claims are malformed")
    try:
        head_hash = bytes.fromhex(head)
        at = datetime.fromtimestamp(iat, UTC)
    except (ValueError, OverflowError, OSError):
        raise CheckpointInvalid("signed by the registry, but its claims are malformed") from None
    return Checkpoint(seq, head_hash, at, token, kid)


def claimed_seq(token: str) -> int | None:
    """Return the sequence a token claims, unverified (to name a forgery), or None."""
    try:
        claims = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    seq = claims.get("seq")
    return seq if _integer(seq) else None


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the file outside the database ---------------------------------------------------------------


def append_to_file(path: Path, token: str) -> None:
    """Append one checkpoint as a line and fsync it (blocking: run it in a thread).

    O_APPEND makes each line one write at the file's end, so servers sharing a data directory
    do not interleave their lines.
    """
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def read_file(path: Path) -> list[tuple[int, str]]:
    """Return the non-blank lines of a checkpoint file as (line number, text)."""
    lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


# -- checking a chain against every checkpoint known ---------------------------------------------


@dataclass
class _Found:
    checkpoint: Checkpoint
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    """A checkpoint that does not hold, or a token given as one that is not."""

    seq: int
    """The position it names (as claimed, for a forgery; 0 when it names none)."""
    message: str


class CheckpointCheck:
    """Collects the checkpoints known from every source, then judges a walked chain by them.

    Feed it every token with where it came from (`add`), walk the chain recording the stored
    hash at each position in `wanted`, then `finish` with the walk and those hashes.
    """

    def __init__(self, keys: Mapping[str, ec.EllipticCurvePublicKey]):
        self._keys = keys
        self._found: dict[str, _Found] = {}
        self._failures: list[Failure] = []

    def add(self, token: str, source: str) -> None:
        """Take a token found at `source` ("the table", "FILE line 3", …)."""
        token = token.strip()
        known = self._found.get(token)
        if known is not None:
            known.sources.append(source)
            return
        try:
            checkpoint = decode(token, self._keys)
        except CheckpointInvalid as exc:
            seq = claimed_seq(token)
            at = f"checkpoint at sequence {seq}" if seq is not None else "checkpoint"
            self._failures.append(Failure(seq or 0, f"{at} ({source}) is forged or corrupt: {exc}"))
            return
        self._found[token] = _Found(checkpoint, [source])

    @property
    def wanted(self) -> set[int]:
        """Return the positions whose stored hash `finish` needs."""
        return {f.checkpoint.seq for f in self._found.values()}

    def finish(self, walk: Walk, hashes: Mapping[int, bytes]) -> CheckpointReport:
        """Judge every valid checkpoint against the walked chain.

        `hashes` maps each wanted position the walk reached intact to its entry's hash. A
        checkpoint beyond a broken link is not judged: the broken link is already the finding.
        """
        failures = list(self._failures)
        held: list[Checkpoint] = []
        unchecked = 0
        for found in sorted(self._found.values(), key=lambda f: f.checkpoint.seq):
            checkpoint = found.checkpoint
            what = f"{checkpoint.describe()}, {', '.join(found.sources)}"
            if not walk.intact and walk.broken_at is not None and checkpoint.seq >= walk.broken_at:
                unchecked += 1
            elif checkpoint.seq > walk.last_seq:
                failures.append(
                    Failure(
                        checkpoint.seq,
                        f"{what}: the log ends at entry {walk.last_seq} — entries after it, up "
                        f"to {checkpoint.seq} at least, were cut off and the head rewound",
                    )
                )
            elif hashes.get(checkpoint.seq) != checkpoint.head_hash:
                failures.append(
                    Failure(
                        checkpoint.seq,
                        f"{what}: head hash differs — entries up to {checkpoint.seq} were "
                        "rewritten",
                    )
                )
            else:
                held.append(checkpoint)
        failures.sort(key=lambda f: f.seq)
        return CheckpointReport(held, failures, unchecked)


@dataclass(frozen=True)
class CheckpointReport:
    """What checking the chain against the known checkpoints found."""

    held: list[Checkpoint]
    """Checkpoints that hold, by position."""
    failures: list[Failure]
    """Checkpoints that do not hold and forgeries, lowest position first."""
    unchecked: int
    """Checkpoints beyond a broken link of the chain."""
