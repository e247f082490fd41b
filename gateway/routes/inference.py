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
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send

from gateway.errors import answer_error
from gateway.openai.decode import BodyLimits, check_chat, check_completion, check_embedding, decode_json_body
from gateway.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    CompletionRequestSchema,
    EmbeddingRequest,
    EmbeddingRequestSchema,
)
from gateway.openapi_docs import ANY, BODY, ENGINE, TENANT, ChatCompletion, EmbeddingList, TextCompletion, route_docs
from gateway.routes.common import (
    JsonBytesResponse,
    RequestHead,
    read_body,
    services_of_scope,
    started_of_scope,
    until_disconnect,
)
from gateway.services.call import Call, Endpoint
from gateway.services.container import Services
from gateway.services.inference import JsonReply, StreamReply

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
        call: Call | None = None
        try:
            services = services_of_scope(scope)
            head = RequestHead.of(scope)
            principal = await services.auth.tenant(head.authorization)
            started, arrived_at = started_of_scope(scope)
            call = Call(principal, self.endpoint, scope["state"]["request_id"], started, arrived_at)
            app = await self._handle(call, scope, receive, head, services)
        except Exception as exc:
            error = answer_error(exc, cast("HTTPScope", scope)["method"], scope["path"])
            headers: list[tuple[str, str]] = list(error.headers)
            if call is not None and call.response_headers:  # a step's (say, a 429's Retry-After)
                headers.extend(call.response_headers)
            app = JsonBytesResponse(error.status, error.to_bytes(), headers)
        await app(scope, receive, send)

    async def _handle(
        self, call: Call, scope: Scope, receive: Receive, head: RequestHead, services: Services
    ) -> ASGIApp:
        inference = services.inference
        try:
            req, body = await self._read(receive, head, services)
        except Exception as exc:
            inference.reject(call, exc)  # refused after authentication: observed (metered) all the same
            raise
        call.request = req
        call.body = body
        call.model = req.model
        call.stream = not isinstance(req, EmbeddingRequest) and bool(req.stream)
        headers = call.upstream_headers
        headers["x-request-id"] = call.request_id
        if head.traceparent is not None:
            headers["traceparent"] = head.traceparent
        reply = await until_disconnect(receive, inference.run(call))
        return _response(reply, call.response_headers)

    async def _read(self, receive: Receive, head: RequestHead, services: Services) -> tuple[R, bytes]:
        """The body and its decoded fields; raises the error (4xx) that refuses the request."""
        head.check_json_media_type()
        body = await read_body(receive, head.content_length, services.settings.max_body_bytes)
        limits = services.body_limits
        req = decode_json_body(body, self._type, limits)
        self._check(req, limits)
        return req, body


_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _response(reply: JsonReply | StreamReply, headers: list[tuple[str, str]] | None) -> ASGIApp:
    if isinstance(reply, StreamReply):
        sse_headers = _SSE_HEADERS if not headers else {**_SSE_HEADERS, **dict(headers)}
        return ASGIStreamingResponse(
            iterator=reply.chunks, status_code=200, media_type="text/event-stream", headers=sse_headers
        )
    return JsonBytesResponse(reply.status, reply.body, headers or ())


CHAT = InferenceApp("chat.completions", ChatCompletionRequest, check_chat)
COMPLETIONS = InferenceApp("completions", CompletionRequest, check_completion)
EMBEDDINGS = InferenceApp("embeddings", EmbeddingRequest, check_embedding)

# The outer ASGI layer's direct table: exact path of a POST -> app.
DIRECT: dict[str, ASGIApp] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
}


@post("/v1/chat/completions", status_code=200, tags=["inference"],
      **route_docs(ANY, TENANT, BODY, ENGINE, body=ChatCompletionRequest, ok=ChatCompletion, stream=True,
                   ok_description="A chat.completion object, or with `stream` its chunks as server-sent events"),
      summary="Create a chat completion (OpenAI-compatible, streaming too)")
async def chat_completions() -> ASGIApp:
    return CHAT


@post("/v1/completions", status_code=200, tags=["inference"],
      **route_docs(ANY, TENANT, BODY, ENGINE, body=CompletionRequestSchema, ok=TextCompletion, stream=True,
                   ok_description="A text_completion object, or with `stream` its chunks as server-sent events"),
      summary="Create a text completion (OpenAI-compatible, streaming too)")
async def completions() -> ASGIApp:
    return COMPLETIONS


@post("/v1/embeddings", status_code=200, tags=["inference"],
      **route_docs(ANY, TENANT, BODY, ENGINE, body=EmbeddingRequestSchema, ok=EmbeddingList,
                   ok_description="A list of embedding objects"),
      summary="Create embeddings (OpenAI-compatible)")
async def embeddings() -> ASGIApp:
    return EMBEDDINGS


ROUTES = [chat_completions, completions, embeddings]
