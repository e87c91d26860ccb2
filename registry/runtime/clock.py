"""The registry's notion of today: civil dates are Vietnamese dates (UTC+7, no DST)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta, timezone

VIETNAM = timezone(timedelta(hours=7), "ICT")


def now() -> datetime:
    """Return the current instant (UTC)."""
    return datetime.now(UTC)


_cached_second = -1
_cached_today = date.min


def today() -> date:
    """Return today's date in Vietnam, the date births and deaths are registered on."""
    global _cached_second, _cached_today
    second = int(time.time())
    if second != _cached_second:  # called on every verification: compute once a second
        _cached_today = datetime.now(VIETNAM).date()
        _cached_second = second
    return _cached_today
