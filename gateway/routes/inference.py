"""``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``: parse, authenticate, forward.

Each endpoint is one plain ASGI app (:class:`InferenceApp`), served two ways by the same code:

- the outer ASGI layer (:class:`gateway.middleware.RequestContextMiddleware`) calls it directly for a ``POST``
  to its exact path, so the hot path never enters Litestar's routing, dependency and response machinery;
- Litestar routes it too (the handlers below return it), so it is in the OpenAPI document, and any spelling
  of the path Litestar accepts but the direct table does not (a trailing slash) reaches the same app.

Bypassing Litestar here cut the gateway's CPU per proxied request by about a fifth (see the README's
benchmark section); the other routes are not hot and stay ordinary Litestar handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, cast

from litestar import post
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send
from msgspec import UNSET

from gateway.errors import answer_error
from gateway.openai.decode import BodyLimits, check_chat, check_completion, check_embedding, decode_json_body
from gateway.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    CompletionRequestSchema,
    EmbeddingRequest,
    EmbeddingRequestSchema,
)
from gateway.openapi_docs import json_body
from gateway.routes.common import (
    JsonBytesResponse,
    RequestHead,
    read_body,
    services_of_scope,
    started_of_scope,
    to_response,
    until_disconnect,
)
from gateway.services.container import Services
from gateway.services.inference import UNKNOWN_MODEL, CallContext, Endpoint, JsonReply, StreamReply

R = TypeVar("R", ChatCompletionRequest, CompletionRequest, EmbeddingRequest)


class InferenceApp(Generic[R]):
    """One inference endpoint as an ASGI app; every failure is answered in the OpenAI error shape."""

    __slots__ = ("_check", "_type", "endpoint")
    _type: type[R]
    _check: Callable[[R, BodyLimits], None]

    def __init__(self, endpoint: Endpoint, request_type: type[R], check: Callable[[R, BodyLimits], None]) -> None:
        self.endpoint = endpoint
        self._type = request_type
        self._check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            app = await self._handle(scope, receive)
        except Exception as exc:
            app = JsonBytesResponse.error(answer_error(exc, cast("HTTPScope", scope)["method"], scope["path"]))
        await app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive) -> ASGIApp:
        services = services_of_scope(scope)
        head = RequestHead.of(scope)
        principal = await services.auth.tenant(head.authorization)
        started, arrived_at = started_of_scope(scope)
        request_id: str = scope["state"]["request_id"]
        ctx = CallContext(principal, self.endpoint, UNKNOWN_MODEL, request_id, started, arrived_at)
        inference = services.inference
        try:
            req, body = await self._read(receive, head, services)
        except Exception as exc:
            inference.record_rejected(ctx, exc)  # refused after authentication: metered all the same
            raise
        ctx.model = req.model
        headers = {"x-request-id": request_id}
        if head.traceparent is not None:
            headers["traceparent"] = head.traceparent
        ctx.headers = headers
        reply: JsonReply | StreamReply
        if isinstance(req, EmbeddingRequest) or not req.stream:
            reply = await until_disconnect(receive, inference.call(ctx, body))
        else:
            ctx.stream = True
            ctx.wants_usage = req.wants_usage_in_stream
            present = req.stream_options is not UNSET
            reply = await until_disconnect(receive, inference.open_stream(ctx, body, present))
        return to_response(reply)

    async def _read(self, receive: Receive, head: RequestHead, services: Services) -> tuple[R, bytes]:
        """The body and its decoded fields; raises the error (4xx) that refuses the request."""
        head.check_json_media_type()
        body = await read_body(receive, head.content_length, services.settings.max_body_bytes)
        limits = services.body_limits
        req = decode_json_body(body, self._type, limits)
        self._check(req, limits)
        return req, body


CHAT = InferenceApp("chat.completions", ChatCompletionRequest, check_chat)
COMPLETIONS = InferenceApp("completions", CompletionRequest, check_completion)
EMBEDDINGS = InferenceApp("embeddings", EmbeddingRequest, check_embedding)

# The outer ASGI layer's direct table: exact path of a POST -> app.
DIRECT: dict[str, ASGIApp] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
}


@post("/v1/chat/completions", operation_class=json_body(ChatCompletionRequest), tags=["inference"],
      summary="Create a chat completion (OpenAI-compatible, streaming too)")
async def chat_completions() -> ASGIApp:
    return CHAT


@post("/v1/completions", operation_class=json_body(CompletionRequestSchema), tags=["inference"],
      summary="Create a text completion (OpenAI-compatible, streaming too)")
async def completions() -> ASGIApp:
    return COMPLETIONS


@post("/v1/embeddings", operation_class=json_body(EmbeddingRequestSchema), tags=["inference"],
      summary="Create embeddings (OpenAI-compatible)")
async def embeddings() -> ASGIApp:
    return EMBEDDINGS


ROUTES = [chat_completions, completions, embeddings]
