"""Calling agencies and their public keys as the rules see them (SPEC §6); stored by db/agencies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

KINDS = ("JUSTICE", "POLICE", "PORTAL", "OTHER")


@dataclass(frozen=True)
class AgencyKey:
    """One registered public key of an agency."""

    kid: str
    algorithm: str
    public_key_pem: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Agency:
    """A registered calling system."""

    id: str
    name: str
    kind: str
    scopes: tuple[str, ...]
    fields: tuple[str, ...]
    rate_limit: int | None
    enabled: bool
    keys: tuple[AgencyKey, ...]
    name_matching: str = "STRICT"
    miss_budget: int | None = None
    enabled_at: datetime | None = None
    """When the agency was last enabled again after being disabled (migration 0012)."""
    watch_types: tuple[str, ...] = ()
    confidential: bool = False
