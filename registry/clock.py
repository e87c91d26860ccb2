"""The registry's notion of today: civil dates are Vietnamese dates (UTC+7, no DST)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

VIETNAM = timezone(timedelta(hours=7), "ICT")


def now() -> datetime:
    """Return the current instant (UTC)."""
    return datetime.now(UTC)


def today() -> date:
    """Return today's date in Vietnam, the date births and deaths are registered on."""
    return datetime.now(VIETNAM).date()
