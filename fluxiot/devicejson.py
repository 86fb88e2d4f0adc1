"""Parsing the JSON devices send (telemetry, attributes, command replies).

orjson, for speed on the ingest path (about four times the standard library's rate on small
objects) and because it refuses what PostgreSQL could not store anyway: ``NaN``/``Infinity`` and
lone UTF-16 surrogates are not JSON to it. One thing remains: ``\\u0000`` is valid JSON but neither
``text`` nor ``jsonb`` can hold a NUL character, so a payload carrying one is refused here rather
than failing the database write of the whole batch it arrived in.
"""

from __future__ import annotations

import codecs
import math
from typing import Any

import orjson

_NUL_ESCAPE = b"\\u0000"  # the only way a NUL can appear in JSON text (raw control characters are invalid)


class UnstorableJSON(ValueError):
    """Valid JSON with a value the database cannot keep (a NUL character)."""


def loads(payload: bytes) -> Any:
    """The parsed payload. Raises ``ValueError`` for invalid JSON (incl. ``NaN``, ``Infinity``, lone
    surrogates and invalid UTF-8) and ``UnstorableJSON`` for a NUL character in a key or a string."""
    if payload[:3] == codecs.BOM_UTF8:
        payload = payload[3:]
    data = orjson.loads(payload)
    if _NUL_ESCAPE in payload and (problem := unstorable(data)):  # the substring alone could be an escaped backslash
        raise UnstorableJSON(problem)
    return data


def unstorable(value: Any) -> str:
    """Why PostgreSQL could not keep ``value`` (a NUL character in a string or key, a non-finite
    number, at any depth), or ``""``. For values that do not come through ``loads`` (rules' derived
    values)."""
    if isinstance(value, str):
        return "a string holds a NUL character (\\u0000), which cannot be stored" if "\x00" in value else ""
    if isinstance(value, float):
        return "" if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, dict):
        for key, item in value.items():
            if problem := unstorable(key) or unstorable(item):
                return problem
    elif isinstance(value, list):
        for item in value:
            if problem := unstorable(item):
                return problem
    return ""
