"""Link expiry: Trunk8's free-form `expiration_date` turned into a Unix timestamp.

Naive values are server-local time, as in Trunk8; values with an offset or `Z` are
compared correctly instead of crashing (T8-W16); a value that does not parse never
expires (T8-041). Dates at the edges of the calendar (`0001-01-01`) convert too.
"""

from __future__ import annotations

import datetime as dt


def expiry_timestamp(value: str | None) -> float | None:
    """Seconds since the epoch after which the link is expired, or None for never."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    try:
        # A naive datetime's timestamp() is taken in the server's local time zone.
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        # Local time has no answer in year 1 or 9999: there a zone offset hardly matters.
        return moment.replace(tzinfo=dt.UTC).timestamp()
