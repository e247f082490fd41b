"""OpenAI's attribute filters (comparison and compound) -> a SQL condition over ``chunks.attributes``.

A filter is parsed and checked once (:func:`parse_filter`, 400 with the offending path in ``param``) and
then compiled (:func:`to_sql`) into a condition whose every key and value is a query parameter: nothing a
client sends is ever spliced into SQL text.

Semantics, over jsonb (``attributes`` holds string, number and boolean values):

- ``eq``: the key holds that value (numbers compare as numbers, so 1 equals 1.0); ``ne``: the key is
  present and holds another value.
- ``gt`` ``gte`` ``lt`` ``lte``: numbers against numbers, strings against strings (so ISO dates order);
  a value of another type never matches.
- ``in`` / ``nin``: the key holds one of / is present and holds none of a non-empty list of strings and
  numbers.
- A comparison on a key the attributes lack is false, whatever the operator (as SQL's NULL would be).
- ``and`` / ``or`` combine filters, nested to at most :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, cast

import msgspec
from psycopg import sql

from retrieval.errors import InvalidRequest

__all__ = [
    "MAX_COMPARISONS", "MAX_DEPTH", "MAX_LIST_VALUES", "Comparison", "Compound", "Filter", "InvalidFilter",
    "parse_filter", "to_sql",
]

MAX_DEPTH = 8  # compound filters inside compound filters
MAX_COMPARISONS = 64  # comparisons in one filter, all levels together
MAX_LIST_VALUES = 256  # values of one `in` / `nin` list
MAX_KEY_CHARS = 64  # OpenAI's attribute key limit
MAX_STRING_CHARS = 512  # OpenAI's attribute string value limit

ComparisonType = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
Scalar: TypeAlias = str | int | float | bool
_COMPARISONS: frozenset[str] = frozenset(("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"))
_ORDERING = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class InvalidFilter(InvalidRequest):
    """A filter that is not one of OpenAI's comparison or compound filters (400)."""

    code = "invalid_filter"


class Comparison(msgspec.Struct, frozen=True):
    key: str
    type: ComparisonType
    value: Scalar | tuple[str | int | float, ...]


class Compound(msgspec.Struct, frozen=True):
    type: Literal["and", "or"]
    filters: tuple[Filter, ...]


Filter: TypeAlias = Comparison | Compound


def parse_filter(obj: Any, param: str = "filters") -> Filter:
    """The filter ``obj`` (decoded JSON) describes; raises :class:`InvalidFilter` naming the bad part."""
    counter = [0]
    return _parse(obj, param, 1, counter)


def _parse(obj: Any, param: str, depth: int, counter: list[int]) -> Filter:
    if not isinstance(obj, dict):
        raise InvalidFilter("A filter is an object: a comparison {key, type, value} or {type, filters}.", param=param)
    kind = obj.get("type")
    if kind in ("and", "or"):
        if depth > MAX_DEPTH:
            raise InvalidFilter(f"Filters nest at most {MAX_DEPTH} levels deep.", param=param)
        extra = set(obj) - {"type", "filters"}
        if extra:
            raise InvalidFilter(f"Unknown field '{sorted(extra)[0][:64]}' in a compound filter.", param=param)
        items = obj.get("filters")
        if not isinstance(items, list) or not items:
            raise InvalidFilter("A compound filter needs a non-empty list 'filters'.", param=f"{param}.filters")
        parts = tuple(_parse(item, f"{param}.filters[{i}]", depth + 1, counter) for i, item in enumerate(items))
        return Compound(kind, parts)
    if kind not in _COMPARISONS:
        raise InvalidFilter(
            "A filter's 'type' is one of eq, ne, gt, gte, lt, lte, in, nin, and, or.", param=f"{param}.type"
        )
    counter[0] += 1
    if counter[0] > MAX_COMPARISONS:
        raise InvalidFilter(f"A filter holds at most {MAX_COMPARISONS} comparisons.", param=param)
    extra = set(obj) - {"type", "key", "value"}
    if extra:
        raise InvalidFilter(f"Unknown field '{sorted(extra)[0][:64]}' in a comparison filter.", param=param)
    key = obj.get("key")
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or "\x00" in key:
        raise InvalidFilter(
            f"A comparison's 'key' is an attribute name of 1 to {MAX_KEY_CHARS} characters.", param=f"{param}.key"
        )
    if "value" not in obj:
        raise InvalidFilter("A comparison needs a 'value'.", param=f"{param}.value")
    op = cast("ComparisonType", kind)
    return Comparison(key, op, _value(op, obj["value"], f"{param}.value"))


def _value(op: ComparisonType, value: Any, param: str) -> Scalar | tuple[str | int | float, ...]:
    if op in ("in", "nin"):
        if not isinstance(value, list) or not value or len(value) > MAX_LIST_VALUES:
            raise InvalidFilter(
                f"'{op}' compares with a list of 1 to {MAX_LIST_VALUES} strings or numbers.", param=param
            )
        for i, item in enumerate(value):
            if not _is_string_or_number(item):
                raise InvalidFilter(f"'{op}' lists hold strings and numbers only.", param=f"{param}[{i}]")
        return tuple(value)
    if isinstance(value, bool):
        if op not in ("eq", "ne"):
            raise InvalidFilter(f"A boolean can only be compared with eq or ne, not '{op}'.", param=param)
        return value
    if not _is_string_or_number(value):
        raise InvalidFilter(f"'{op}' compares with a string, a number or a boolean.", param=param)
    return cast("Scalar", value)


def _is_string_or_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return len(value) <= MAX_STRING_CHARS and "\x00" not in value  # jsonb holds no NUL
    return isinstance(value, (int, float)) and value == value and value not in (float("inf"), float("-inf"))


# -- SQL -------------------------------------------------------------------------------------------------


def to_sql(flt: Filter, column: str = "attributes") -> tuple[sql.Composed, list[Any]]:
    """The condition ``flt`` puts on the jsonb ``column``, and its parameters (``%s`` placeholders, in order)."""
    params: list[Any] = []
    condition = _sql(flt, sql.Identifier(*column.split(".")), params)
    return sql.Composed([condition]), params


def _sql(flt: Filter, col: sql.Identifier, params: list[Any]) -> sql.Composable:
    if isinstance(flt, Compound):
        joiner = sql.SQL(" AND " if flt.type == "and" else " OR ")
        return sql.SQL("({})").format(joiner.join(_sql(part, col, params) for part in flt.filters))
    key, op, value = flt.key, flt.type, flt.value
    if op in ("eq", "ne"):
        pair = msgspec.json.encode({key: value}).decode()
        contains = sql.SQL("{} @> %s::jsonb").format(col)
        if op == "eq":
            params.append(pair)
            return contains
        params.extend((key, pair))
        return sql.SQL("({} ? %s AND NOT {})").format(col, contains)
    if op in ("in", "nin"):
        values = msgspec.json.encode(list(cast("Sequence[str | int | float]", value))).decode()
        member = sql.SQL("%s::jsonb @> jsonb_build_array({} -> %s)").format(col)
        if op == "in":
            params.extend((values, key))
            return member
        params.extend((key, values, key))
        return sql.SQL("({} ? %s AND NOT {})").format(col, member)
    kind = "string" if isinstance(value, str) else "number"
    params.extend((key, kind, key, msgspec.json.encode(value).decode()))
    return sql.SQL("(jsonb_typeof({} -> %s) = %s AND ({} -> %s) {} %s::jsonb)").format(
        col, col, sql.SQL(_ORDERING[op])
    )
