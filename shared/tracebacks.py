"""Tracebacks as clients see them: the usual text, without the server's paths.

A job's ``error.traceback`` is served by the API, so it must not say where the code
lives on the host (``/home/…``, ``/usr/lib/python3.11/site-packages/…``). Every
``File "<path>", line N, in f`` names its file relative to the longest import root
that holds it: the project's checkout (``services/worker/handlers/x.py``) or a
``sys.path`` entry, i.e. the standard library or site-packages (``httpx/_client.py``,
``asyncio/tasks.py``), which is also the file's import path. A file under no root
keeps its name alone. Pseudo-files (``<string>``, ``<frozen …>``) are unchanged.

The rewrite works on the text, so a traceback that arrived as text (a process-pool
child's, chained as the cause) is cleaned too. Exception messages are left as they are.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The directory holding ``shared/``, ``services/`` and ``webhooks/``."""

_FILE = re.compile(r'(File ")([^"\n]+)(", line \d+)')


def _roots() -> list[str]:
    """Import roots, longest first, each ending with the path separator."""
    found: set[str] = set()
    for entry in [str(PROJECT_ROOT), *sys.path]:
        if not entry:
            continue
        for form in (os.path.abspath(entry), os.path.realpath(entry)):
            found.add(form.rstrip(os.sep) + os.sep)
    return sorted(found, key=len, reverse=True)


def relative_path(path: str) -> str:
    """``path`` relative to its import root; its file name alone if it has none."""
    if not os.path.isabs(path):
        return path
    for root in _roots():
        if path.startswith(root):
            return path[len(root):]
    return os.path.basename(path)


def strip_paths(text: str) -> str:
    """Traceback text with each ``File "…"`` made relative (see the module docstring)."""
    return _FILE.sub(lambda m: m[1] + relative_path(m[2]) + m[3], text)


def format_traceback(exc: BaseException) -> str:
    """``traceback.format_exception(exc)`` joined, without server paths."""
    return strip_paths("".join(traceback.format_exception(exc)))
