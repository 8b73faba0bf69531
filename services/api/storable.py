"""Can MongoDB store this free-form value, and read it back as it was sent?

A job's payload is free-form JSON; everything in it ends up in a BSON document. Some
JSON that Python parses happily cannot be encoded, or comes back changed, and must be
refused at submit (422, the field named) rather than fail inside the group commit:

- integers outside BSON's int64 (PyMongo raises ``OverflowError``);
- ``NaN`` / ``Infinity`` (Python's JSON parser accepts them; JSON answers cannot hold them);
- strings that are not valid UTF-8 (a lone surrogate such as ``"\\ud800"``);
- dict keys with a NUL byte (PyMongo raises ``InvalidDocument``), or starting with ``$``:
  MongoDB reserves them for operators, and PyMongo decodes ``{"$ref", "$id"}`` as a
  ``DBRef``, so the job could not be shown again. Keys with ``.`` are stored and read
  back unchanged (MongoDB 5.0+, PyMongo and the test server all accept them), so they
  are allowed;
- nesting deeper than :data:`MAX_DEPTH` (MongoDB refuses documents nested past 100
  levels; the job document itself adds a few).

The walk is iterative, so no input depth can exhaust the interpreter's stack.
"""

from __future__ import annotations

import math
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32
"""Levels of objects/arrays a free-form value may nest (the top-level object is 1)."""


def problems(value: Any, field: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Every reason ``value`` cannot be stored, as ``{field, message, type}`` details
    (at most one per kind of problem, so a huge bad input gives a short answer)."""
    found: dict[str, dict[str, Any]] = {}

    def note(kind: str, where: tuple[Any, ...], message: str) -> None:
        found.setdefault(kind, {"field": ".".join(map(_shown, where)), "message": message,
                                "type": kind})

    stack: list[tuple[tuple[Any, ...], Any, int]] = [(field, value, 1)]
    while stack:
        where, item, depth = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_DEPTH:
            note("too_deep", where, f"nested deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(item, dict):
            for key, child in item.items():
                _check_key(key, (*where, key), note)
                stack.append(((*where, key), child, depth + 1))
        elif isinstance(item, list):
            stack.extend(((*where, i), child, depth + 1) for i, child in enumerate(item))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                note("int_out_of_range", where, "integers must fit in 64 bits "
                     f"({INT64_MIN} to {INT64_MAX})")
        elif isinstance(item, float):
            if not math.isfinite(item):
                note("float_not_finite", where, "NaN and Infinity cannot be stored")
        elif isinstance(item, str) and not _is_utf8(item):
            note("string_unicode", where, "not valid Unicode (a lone surrogate)")
    return list(found.values())


def _check_key(key: Any, where: tuple[Any, ...], note: Any) -> None:
    if not isinstance(key, str):
        note("key_type", where, "object keys must be strings")
    elif "\x00" in key:
        note("key_nul", where, "object keys must not contain a NUL character")
    elif key.startswith("$"):
        note("key_dollar", where, "object keys must not start with '$'")
    elif not _is_utf8(key):
        note("string_unicode", where, "not valid Unicode (a lone surrogate)")


def _shown(part: Any) -> str:
    """A path segment fit for a JSON answer: lone surrogates escaped, long keys cut."""
    text = str(part).encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= 100 else text[:100] + "..."


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
