"""Retry-After from an untrusted server: clamped to the cap, nonsense ignored."""

import pytest

from shared.retry_after import DEFAULT_CAP_SECONDS, retry_after_seconds

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
CAP = 30.0


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    ("", None),
    ("5", 5.0),
    (" 2 ", 2.0),
    ("0", 0.0),
    ("-0", 0.0),
    ("1.5", 1.5),
    ("30", 30.0),
    ("31", CAP),                                   # above the cap: clamped
    ("1e12", CAP),                                 # once an OverflowError
    ("99999999999999999999999999", CAP),
    ("inf", None),                                 # once an OverflowError
    ("-inf", None),
    ("nan", None),
    ("-5", None),
    ("garbage", None),
    ("0x10", None),
    ("5 seconds", None),
    ("x" * 1000, None),
    ("Fri, 31 Dec 9999 23:59:59 GMT", CAP),        # a date far in the future
    ("Tue, 14 Nov 2023 22:13:30 GMT", 10.0),       # an HTTP date 10 s ahead
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),        # a date in the past: now
    ("Wed, 32 Oct 2015 07:28:00 GMT", None),       # not a date
])
def test_clamp(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value, NOW, CAP) == expected


def test_handlers_get_a_documented_default_cap() -> None:
    assert retry_after_seconds("1e12", NOW) == DEFAULT_CAP_SECONDS == 3600.0
