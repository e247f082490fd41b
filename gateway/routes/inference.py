"""``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``: parse, authenticate, forward."""

from __future__ import annotations

from litestar import post
from litestar.types import ASGIApp
from msgspec import UNSET

from gateway.auth.principal import Principal
from gateway.openai.decode import check_chat, check_completion, check_embedding, decode_json_body
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.openapi_docs import json_body
from gateway.routes.common import (
    AnyRequest,
    provide_principal,
    read_json_body,
    request_id_of,
    services_of,
    started_of,
    to_response,
    until_disconnect,
)
from gateway.services.inference import CallContext, Endpoint, JsonReply, StreamReply


def _context(request: AnyRequest, principal: Principal, endpoint: Endpoint, model: str) -> CallContext:
    started, arrived_at = started_of(request)
    request_id = request_id_of(request)
    headers = {"x-request-id": request_id}
    traceparent = request.headers.get("traceparent")
    if traceparent is not None:
        headers["traceparent"] = traceparent
    return CallContext(principal, endpoint, model, request_id, started, arrived_at, headers=headers)


async def _generate(
    request: AnyRequest, principal: Principal, endpoint: Endpoint,
    req: ChatCompletionRequest | CompletionRequest, body: bytes,
) -> ASGIApp:
    ctx = _context(request, principal, endpoint, req.model)
    inference = services_of(request).inference
    reply: JsonReply | StreamReply
    if req.stream:
        ctx.stream = True
        ctx.wants_usage = req.wants_usage_in_stream
        present = req.stream_options is not UNSET
        reply = await until_disconnect(request, inference.open_stream(ctx, body, present))
    else:
        reply = await until_disconnect(request, inference.call(ctx, body))
    return to_response(reply)


# The handlers authenticate in their body rather than through a Litestar dependency, and return an ASGI
# app rather than a Response: on this path Litestar's dependency resolution and response conversion were
# a measurable share of the gateway's own CPU per request (see JsonBytesResponse).


@post("/v1/chat/completions", operation_class=json_body(ChatCompletionRequest), tags=["inference"],
      summary="Create a chat completion (OpenAI-compatible, streaming too)")
async def chat_completions(request: AnyRequest) -> ASGIApp:
    principal = await provide_principal(request)
    body = await read_json_body(request)
    req = decode_json_body(body, ChatCompletionRequest)
    check_chat(req)
    return await _generate(request, principal, "chat.completions", req, body)


@post("/v1/completions", operation_class=json_body(CompletionRequest), tags=["inference"],
      summary="Create a text completion (OpenAI-compatible, streaming too)")
async def completions(request: AnyRequest) -> ASGIApp:
    principal = await provide_principal(request)
    body = await read_json_body(request)
    req = decode_json_body(body, CompletionRequest)
    check_completion(req)
    return await _generate(request, principal, "completions", req, body)


@post("/v1/embeddings", operation_class=json_body(EmbeddingRequest), tags=["inference"],
      summary="Create embeddings (OpenAI-compatible)")
async def embeddings(request: AnyRequest) -> ASGIApp:
    principal = await provide_principal(request)
    body = await read_json_body(request)
    req = decode_json_body(body, EmbeddingRequest)
    check_embedding(req)
    ctx = _context(request, principal, "embeddings", req.model)
    reply = await until_disconnect(request, services_of(request).inference.call(ctx, body))
    return to_response(reply)


ROUTES = [chat_completions, completions, embeddings]
