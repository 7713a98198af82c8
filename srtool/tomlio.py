"""TOML in and out for presets: hostile files become one-line user errors, and what srtool writes reads back
exactly.

Reading: the bytes must be UTF-8 (a Latin-1 or binary file is named, with the offending byte), and nesting
is bounded *before* :mod:`tomllib` sees the text: tomllib recurses on nested arrays and inline tables
(``RecursionError`` at a few thousand levels) and its dotted-key handling is quadratic (a 10,000-part key
takes seconds and hundreds of MB). A preset is at most four levels deep, so :data:`MAX_DEPTH` is generous.

Writing: :func:`toml_value` renders strings with TOML escapes for every control character (a newline in a
description or a tab in a name round-trips), floats with ``repr`` (shortest exact form, ``inf``/``nan``).
"""

from __future__ import annotations

import math
import tomllib
from typing import Any

from .errors import UserError

MAX_DEPTH = 64
"""Deepest nesting of arrays/inline tables, and most parts of one dotted key, that a preset file may have."""

MAX_BYTES = 1 << 20
"""Largest preset file read (shipped presets are ~2 kB; ``presets show`` output ~6 kB)."""


def _nesting_error(text: str) -> str | None:
    """Why ``text`` nests too deeply for a preset, or None. A linear scan that skips strings and comments."""
    depth = dots = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote)
            while i < n and not text.startswith(quote, i):
                if ch == '"' and text[i] == "\\":
                    i += 1
                elif len(quote) == 1 and text[i] == "\n":
                    break  # an unterminated one-line string: tomllib reports it
                i += 1
            i += len(quote)
            continue
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return f"arrays or tables nested more than {MAX_DEPTH} levels deep"
        elif ch in "]}":
            depth = max(depth - 1, 0)
        if ch == ".":
            dots += 1
            if dots >= MAX_DEPTH:
                return f"a dotted key with more than {MAX_DEPTH} parts"
        elif ch in "=,[]{}\n":
            dots = 0
        i += 1
    return None


def parse_toml(data: bytes | str, label: str) -> dict[str, Any]:
    """Parse TOML text (or UTF-8 bytes) from ``label``; every problem is a one-line :class:`UserError`."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise UserError(f"{label}: {len(data):,} bytes is too large for a TOML preset (at most {MAX_BYTES:,})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{label}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                "TOML files must be saved as UTF-8"
            ) from None
    else:
        text = data
    text = text.removeprefix("\ufeff")  # a BOM some editors write
    problem = _nesting_error(text)
    if problem:
        raise UserError(f"{label}: invalid TOML ({problem})")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{label}: invalid TOML ({exc})") from None
    except RecursionError:  # not reachable after the scan; kept so no input can end in a traceback
        raise UserError(f"{label}: invalid TOML (nested too deeply)") from None


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: str) -> str:
    """A TOML basic string that parses back to exactly ``value`` (control characters escaped)."""
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """A TOML literal for a preset value: bool, int, float, string or a (nested) list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"no TOML form for {type(value).__name__}")
