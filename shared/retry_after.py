"""``Retry-After`` from an untrusted server, as a bounded number of seconds.

Receivers and providers are not trusted to send sane values: ``1e12``, ``inf``,
``nan``, ``-5``, garbage and dates in the year 9999 all arrive. A value that is not a
finite, non-negative number of seconds (or an HTTP date) is ignored (None: the caller
falls back to its own schedule); a valid one is clamped to ``cap``, so no answer can
push a retry further out than the caller's own longest wait.
"""

from __future__ import annotations

import math
from email.utils import parsedate_to_datetime

DEFAULT_CAP_SECONDS = 3600.0
"""The clamp when the caller names none (job handlers raising ``Retry``)."""


def retry_after_seconds(value: str | None, now: float,
                        cap: float = DEFAULT_CAP_SECONDS) -> float | None:
    """Seconds to wait, in ``[0, cap]``, or None when the header is absent or invalid.

    ``now`` is the current Unix time, used for the HTTP-date form (a date in the past
    means "now": 0).
    """
    if not value or len(value) > 64:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return max(0.0, min(seconds, cap))  # max: '-0' is 0.0
