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

import json
import math
import re
from collections.abc import Iterable
from operator import methodcaller
from typing import Any

import bson
import bson.errors

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32
"""Levels of objects/arrays a free-form value may nest (the top-level object is 1)."""
CONTAINERS = frozenset({dict, list})
_DOLLAR = methodcaller("startswith", "$")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\{\}|\[\]")
Node = tuple[Any, Any] | None
"""A place in the value, ``(parent node, key or index)``: paths are spelled out only
for a problem, so walking a large value builds no tuples."""


def problems(value: Any, field: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Every reason ``value`` cannot be stored, as ``{field, message, type}`` details
    (at most one per kind of problem, so a huge bad input gives a short answer)."""
    found: dict[str, dict[str, Any]] = {}

    def note(kind: str, node: Node, message: str) -> None:
        if kind not in found:
            where = (*field, *_names(node))
            found[kind] = {"field": ".".join(map(_shown, where)), "message": message,
                           "type": kind}

    # NOTE: the walk below costs about 5 us per object or array; C-speed passes over
    # the value's JSON text skip it for any value that certainly has no problem, and
    # check numbers and strings one by one only when one of them is bad.
    text = _encoded(value)
    if text is not None and _certainly_fine(text):
        return []
    check_scalars = text is None
    stack: list[tuple[Node, Any, int]] = [(None, value, 1)]
    while stack:
        node, item, depth = stack.pop()
        if depth > MAX_DEPTH:
            note("too_deep", node, f"nested deeper than {MAX_DEPTH} levels")
            continue
        if type(item) is dict:
            if check_scalars or _suspicious_keys(item):
                for key in item:
                    if problem := _key_problem(key):
                        note(problem[0], (node, key), problem[1])
            children = item.values()
        else:
            children = item
        kinds = set(map(type, children))  # C speed; most arrays hold no containers
        if check_scalars and kinds - CONTAINERS:
            for name, child in _places(item):
                if problem := _scalar_problem(child):
                    note(problem[0], (node, name), problem[1])
        if kinds & CONTAINERS:
            stack.extend([((node, name), child, depth + 1) for name, child in _places(item)
                          if type(child) in CONTAINERS])
    return list(found.values())


def _places(item: dict[Any, Any] | list[Any]) -> Iterable[tuple[Any, Any]]:
    return item.items() if type(item) is dict else enumerate(item)


def _suspicious_keys(item: dict[Any, Any]) -> bool:
    """Could a key of ``item`` be refused? (C speed; _key_problem says which.)"""
    if not item:
        return False
    if set(map(type, item)) != {str}:
        return True
    return any(map(_DOLLAR, item)) or "\x00" in "".join(item)


def _names(node: Node) -> list[Any]:
    names = []
    while node is not None:
        node, name = node
        names.append(name)
    return names[::-1]


def _encoded(value: Any) -> str | None:
    """``value`` as JSON text, or None when a number or string in it cannot be stored."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        bson.encode({"value": value})
    except (ValueError, OverflowError, bson.errors.InvalidDocument, RecursionError):
        return None
    return text


def _certainly_fine(text: str) -> bool:
    """No key can start with ``$`` or hold a NUL, and nesting is within MAX_DEPTH."""
    if '"$' in text or "\\u0000" in text:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(MAX_DEPTH):  # each pass removes the innermost level
        brackets = _INNERMOST.sub("", brackets)
    return not brackets


def _scalar_problem(item: Any) -> tuple[str, str] | None:
    if type(item) is int and not INT64_MIN <= item <= INT64_MAX:
        return "int_out_of_range", f"integers must fit in 64 bits ({INT64_MIN} to {INT64_MAX})"
    if type(item) is float and not math.isfinite(item):
        return "float_not_finite", "NaN and Infinity cannot be stored"
    if type(item) is str and not _is_utf8(item):
        return "string_unicode", "not valid Unicode (a lone surrogate)"
    return None


def _key_problem(key: Any) -> tuple[str, str] | None:
    if type(key) is not str:
        return "key_type", "object keys must be strings"
    if "\x00" in key:
        return "key_nul", "object keys must not contain a NUL character"
    if key.startswith("$"):
        return "key_dollar", "object keys must not start with '$'"
    if not _is_utf8(key):
        return "string_unicode", "not valid Unicode (a lone surrogate)"
    return None


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
