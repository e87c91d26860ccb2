"""The registry's PIN secret: the key material of PIN buckets, kept out of the database.

32 random bytes in `<signing key dir>/pin-secret.key` (hex, mode 0600), created on first start
beside the attestation signing keys. PIN buckets created since migration 0015 derive their
permutation key from it (registry.rules.pin.bucket_key), so a copy of the database alone does not
predict the next PINs. Every server of one register must hold the same file: the database keeps
its fingerprint, and a server with another secret refuses to start. Back it up with the
signing keys; losing it stops issuing in the buckets keyed with it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path

FILE_NAME = "pin-secret.key"
SECRET_BYTES = 32


class PinSecretError(RuntimeError):
    """The PIN secret file is unusable; the message says what to do."""


def load_or_create(directory: Path) -> bytes:
    """Return the PIN secret of directory, creating it (mode 0600) the first time."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / FILE_NAME
    # The signing keys' lock: two servers starting at once must not both create a secret.
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(SECRET_BYTES) + "\n")
                out.flush()
                os.fsync(out.fileno())
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise PinSecretError(f"{path} is not {SECRET_BYTES} bytes of hex") from None
    if len(secret) != SECRET_BYTES:
        raise PinSecretError(f"{path} is not {SECRET_BYTES} bytes of hex")
    return secret
