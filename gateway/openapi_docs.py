"""What the OpenAPI document says of each route: request body, success answer, every error status.

The hot-path routes read the raw body (it goes to the engine unchanged) and decode it with msgspec, and
return a plain ASGI app, so Litestar can see neither their body type nor their answer. ``route_docs``
gives any route the decorator arguments that document them: its error statuses, each in OpenAI's error
shape (``gateway.errors.ErrorResponse``, the type the answers are encoded from), ``Retry-After`` on a 503,
a JSON request body, and for the inference routes OpenAI's answer objects and ``text/event-stream``.
The schemathesis fuzz run checks the live answers against this document.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIHeader, OpenAPIResponse, Operation, RequestBody, Schema
from litestar.openapi.spec.base import BaseSchemaObject
from litestar.openapi.spec.enums import OpenAPIType
from litestar.openapi.spec.media_type import OpenAPIMediaType

from gateway.errors import ErrorResponse

__all__ = [
    "ADMIN",
    "ANY",
    "BODY",
    "ENGINE",
    "TENANT",
    "ChatCompletion",
    "EmbeddingList",
    "TextCompletion",
    "json_schema_of",
    "route_docs",
]

# What each error status means here; every one is answered in OpenAI's error shape.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: a field (`param`), a query parameter, or two Authorization headers",
    401: "No API key, or one that is malformed, unknown, revoked or expired",
    403: "The key may not do this (role), or its tenant is disabled",
    404: "No such model, tenant, key or file",
    408: "The request body did not arrive in time",
    409: "The name is taken",
    413: "The request body is larger than the limit",
    415: "The request body is not JSON",
    431: "The request line and headers are larger than the limit",
    502: "The engine failed, or answered something that is not a valid response",
    503: "Unavailable for now (database or engine outage, server stopping): retry after `Retry-After` seconds",
    504: "The engine did not answer in time",
}

# Error statuses by what a route does; a route's set is the union of those that apply.
ANY = (400, 431)  # every request: two Authorization headers, an oversized head
TENANT = (401, 403, 503)  # authenticated with a tenant key (cached; the database on a miss)
ADMIN = (401, 403, 503)  # the platform admin key; the route reads the database
BODY = (408, 413, 415)  # reads a JSON request body
ENGINE = (404, 502, 503, 504)  # forwards to an engine (unknown model, engine failures)


# OpenAI's answer objects, their documented top-level fields (https://platform.openai.com/docs/api-reference).
# Extra fields an engine adds are allowed: the gateway relays the engine's answer as it came.


class Usage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = None


class ChatCompletionMessage(msgspec.Struct):
    role: str
    content: str | None = None


class ChatCompletionChoice(msgspec.Struct):
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None = None


class ChatCompletion(msgspec.Struct):
    """https://platform.openai.com/docs/api-reference/chat/object"""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None = None


class TextCompletion(msgspec.Struct):
    """https://platform.openai.com/docs/api-reference/completions/object"""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(msgspec.Struct):
    index: int
    object: Literal["embedding"]
    embedding: list[float] | str  # a string with encoding_format "base64"


class EmbeddingList(msgspec.Struct):
    """https://platform.openai.com/docs/api-reference/embeddings/object"""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


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


_RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER), required=True, description="Seconds to wait before retrying"
)
# One server-sent event (before OpenAPI 3.2's ``itemSchema``, an event stream's ``schema`` describes each event).
_EVENT_STREAM = OpenAPIMediaType(
    schema=Schema(
        type=OpenAPIType.OBJECT,
        required=["data"],
        properties={
            "data": Schema(
                type=OpenAPIType.STRING,
                description="A chunk object as JSON; an error object as the last event of a stream that fails;"
                " `[DONE]` last of all",
            ),
            "event": Schema(type=OpenAPIType.STRING),
        },
        description="One server-sent event",
    )
)


def _operation_class(body: Any, stream: bool, retry_after: bool) -> type[Operation]:
    request_schema = None if body is None else json_schema_of(body)

    @dataclass
    class _DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if request_schema is not None:
                self.request_body = RequestBody(
                    content={"application/json": OpenAPIMediaType(schema=RawSchema(raw=request_schema))},  # type: ignore[arg-type]
                    required=True,
                )
            responses = self.responses or {}
            unavailable = responses.get("503")
            if retry_after and isinstance(unavailable, OpenAPIResponse):
                unavailable.headers = {**(unavailable.headers or {}), "Retry-After": _RETRY_AFTER}
            ok = responses.get("200")
            if stream and isinstance(ok, OpenAPIResponse):
                ok.content = {**(ok.content or {}), "text/event-stream": _EVENT_STREAM}

    return _DocumentedOperation


def route_docs(
    *errors: Iterable[int], body: Any = None, ok: Any = None, ok_description: str = "", stream: bool = False
) -> dict[str, Any]:
    """Decorator arguments (``responses``, ``operation_class``) documenting a route: the union of the ``errors``
    sets, in OpenAI's error shape; ``body``, a msgspec type, as the JSON request body; ``ok`` as the 200
    answer's JSON (for a route whose return type does not say it), with ``text/event-stream`` too if ``stream``."""
    statuses = sorted({status for group in errors for status in group})
    responses: dict[int, ResponseSpec] = {
        status: ResponseSpec(
            data_container=ErrorResponse, description=ERROR_DESCRIPTIONS[status], generate_examples=False
        )
        for status in statuses
    }
    if ok is not None:
        responses[200] = ResponseSpec(data_container=ok, description=ok_description or "OK", generate_examples=False)
    return {"responses": responses, "operation_class": _operation_class(body, stream, 503 in statuses)}

