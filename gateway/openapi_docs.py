"""Request-body schemas in the OpenAPI document for routes that decode their own bodies.

The hot-path routes read the raw body (it goes to the engine unchanged) and decode it with msgspec, so
Litestar cannot see their body type. ``json_body(T)`` gives such a route an ``operation_class`` that
documents ``T``'s JSON schema, so clients and the schemathesis fuzz run see the real contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar.openapi.spec import Operation, RequestBody
from litestar.openapi.spec.base import BaseSchemaObject
from litestar.openapi.spec.media_type import OpenAPIMediaType


@dataclass
class RawSchema(BaseSchemaObject):
    """A JSON schema given as a ready dict."""

    raw: dict[str, Any] = field(default_factory=dict)

    def to_schema(self) -> dict[str, Any]:
        return self.raw


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def json_schema_of(type_: Any) -> dict[str, Any]:
    schema = msgspec.json.schema(type_)
    return dict(_inline_refs(schema, schema.get("$defs", {})))


def json_body(type_: Any) -> type[Operation]:
    schema = json_schema_of(type_)

    @dataclass
    class _JsonBodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"application/json": OpenAPIMediaType(schema=RawSchema(raw=schema))},  # type: ignore[arg-type]
                required=True,
            )

    return _JsonBodyOperation
