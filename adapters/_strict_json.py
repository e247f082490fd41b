"""Strict JSON for uploaded metadata: UTF-8, one object, no duplicate keys, no NaN/Infinity, no NUL."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["StrictJsonError", "clip", "loads_object"]


class StrictJsonError(ValueError):
    """The bytes are not a strict JSON object; the message says why (safe to show: it echoes no input)."""


def clip(text: object, limit: int = 120) -> str:
    """``text`` as a string of at most ``limit`` characters, for messages that echo user input."""
    value = str(text)
    return value if len(value) <= limit else value[: limit - 3] + "..."


_KIND: dict[type, str] = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_KIND[type(None)] = "null"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJsonError(f"duplicate key {clip(key)!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise StrictJsonError(f"{name} is not JSON")


def loads_object(data: bytes) -> dict[str, Any]:
    """Parse ``data`` as one JSON object; :class:`StrictJsonError` otherwise (including nesting too deep for
    the parser and integers too long to convert)."""
    if b"\x00" in data:
        raise StrictJsonError("it contains a NUL byte")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJsonError("it is not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except StrictJsonError:
        raise
    except json.JSONDecodeError as exc:
        raise StrictJsonError(f"it is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise StrictJsonError("it is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        raise StrictJsonError(f"it is not usable JSON ({clip(exc, 80)})") from None
    if not isinstance(value, dict):
        raise StrictJsonError(f"it is a JSON {_KIND.get(type(value), 'value')}, not an object")
    return value
