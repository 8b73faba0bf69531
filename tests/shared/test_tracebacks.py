"""Tracebacks name files relative to their import root, never by absolute path."""

from __future__ import annotations

import json
import re

import pytest

from shared.tracebacks import PROJECT_ROOT, format_traceback, relative_path, strip_paths

ABSOLUTE = re.compile(r'File "/')


def _raised(func: object, *args: object) -> BaseException:
    try:
        func(*args)  # type: ignore[operator]
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def test_project_and_stdlib_frames_are_relative() -> None:
    exc = _raised(json.loads, "not json")
    text = format_traceback(exc)
    assert 'File "tests/shared/test_tracebacks.py", line ' in text
    assert 'File "json/decoder.py", line ' in text
    assert not ABSOLUTE.search(text) and str(PROJECT_ROOT) not in text
    assert text.rstrip().endswith("Expecting value: line 1 column 1 (char 0)")


@pytest.mark.parametrize(("path", "shown"), [
    (str(PROJECT_ROOT / "services/worker/handlers/echo.py"), "services/worker/handlers/echo.py"),
    (pytest.__file__, "pytest/__init__.py"),            # site-packages
    (json.__file__, "json/__init__.py"),                # the standard library
    ("/nowhere/known/handler.py", "handler.py"),        # under no import root
    ("<string>", "<string>"),
    ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap>"),
])
def test_relative_path(path: str, shown: str) -> None:
    assert relative_path(path) == shown


def test_text_from_elsewhere_is_cleaned_too() -> None:
    """A process-pool child's traceback arrives as text, inside the parent's."""
    child = ('Traceback (most recent call last):\n'
             f'  File "{PROJECT_ROOT}/shared/procpool.py", line 340, in _call\n'
             '  File "/opt/app/handlers/report.py", line 7, in build\n'
             "ValueError: File \"/etc/passwd\" is not a report\n")
    assert strip_paths(child) == (
        'Traceback (most recent call last):\n'
        '  File "shared/procpool.py", line 340, in _call\n'
        '  File "report.py", line 7, in build\n'
        "ValueError: File \"/etc/passwd\" is not a report\n")
