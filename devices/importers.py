"""Parse device import files (CSV or JSON) into rows for ``services.import_devices``.

CSV: a header row naming columns from ``IMPORT_FIELDS``; ``tags`` separated by commas or semicolons
inside the cell; ``metadata`` a JSON object; ``group`` a group id. JSON: a list of objects with the
same keys (``tags`` a list, ``metadata`` an object).
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from devices.services import IMPORT_FIELDS


class ParseError(Exception):
    """The file as a whole cannot be read (not a row problem): encoding, syntax, header, size."""


_TAG_SPLIT = re.compile(r"[,;]")


def _csv_cell(name: str, value: str, number: int, errors: list[dict[str, Any]]) -> Any:
    value = value.strip()
    if name == "tags":
        return [t.strip() for t in _TAG_SPLIT.split(value) if t.strip()] if value else []
    if name == "metadata":
        if not value:
            return {}
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            errors.append({"row": number, "errors": {"metadata": [f"Not valid JSON: {exc.msg}."]}})
            return {}
    if name == "group":
        if not value:
            return None
        if not value.isdigit():
            errors.append({"row": number, "errors": {"group": [f"A group id is a number, not {value!r}."]}})
            return None
        return int(value)
    return value


def parse_csv(data: bytes, *, max_rows: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and cell-level errors (e.g. bad JSON in a metadata cell) of a CSV file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError("The file is not UTF-8 text.") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise ParseError(f"Malformed CSV: {exc}.") from exc
    if not header:
        raise ParseError("The CSV file is empty: it needs a header row.")
    header = [h.strip() for h in header]
    reader.fieldnames = header
    unknown = [h for h in header if h not in IMPORT_FIELDS]
    if unknown:
        raise ParseError(f"Unknown columns: {', '.join(unknown)}. Allowed: {', '.join(IMPORT_FIELDS)}.")
    if "name" not in header:
        raise ParseError("The CSV file needs a 'name' column.")
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    try:
        for number, raw in enumerate(reader, start=1):
            if number > max_rows:
                raise ParseError(f"Too many rows: at most {max_rows} per import.")
            if None in raw:
                errors.append({"row": number, "errors": {"non_field_errors": ["More cells than columns."]}})
                raw.pop(None)
            rows.append({k: _csv_cell(k, v or "", number, errors) for k, v in raw.items()})
    except csv.Error as exc:
        raise ParseError(f"Malformed CSV at line {reader.line_num}: {exc}.") from exc
    return rows, errors


def parse_json(data: bytes, *, max_rows: int) -> list[dict[str, Any]]:
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(f"Malformed JSON: {exc}.") from exc
    if isinstance(payload, dict) and isinstance(payload.get("devices"), list):
        payload = payload["devices"]
    if not isinstance(payload, list):
        raise ParseError('A JSON import is a list of device objects (or {"devices": [...]}).')
    if len(payload) > max_rows:
        raise ParseError(f"Too many rows: at most {max_rows} per import.")
    for number, row in enumerate(payload, start=1):
        if not isinstance(row, dict):
            raise ParseError(f"Row {number} is not an object.")
    return payload


def parse_import(
    data: bytes, *, filename: str = "", content_type: str = "", max_rows: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and cell errors of an upload, its format told by file name, content type or first byte."""
    if not data.strip():
        raise ParseError("The file is empty.")
    is_json = filename.lower().endswith(".json") or "json" in content_type or data.lstrip()[:1] in (b"[", b"{")
    if is_json:
        return parse_json(data, max_rows=max_rows), []
    return parse_csv(data, max_rows=max_rows)
