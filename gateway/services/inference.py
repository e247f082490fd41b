"""The inference path: forward an OpenAI request to an engine replica, relay the answer, meter it.

Framework-free: routes hand in the raw body and the decoded fields the gateway acts on, and get back a
:class:`JsonReply` or a :class:`StreamReply` to turn into HTTP. Bodies go to the engine as they came,
except that a stream always asks the engine for usage (so every call is metered); the usage chunk is
then held back from a client that did not ask for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec

from gateway.auth.principal import Principal
from gateway.engines.client import EngineClient, EngineReply
from gateway.engines.errors import EngineError, EngineStreamBrokenError
from gateway.engines.normalize import normalize_error_body
from gateway.engines.replica import Purpose
from gateway.engines.stream import EngineStream
from gateway.errors import encode_error, error_body_for
from gateway.services.sse import SseRelay, inject_include_usage
from observability.usage import INT4_MAX, UsageEvent, UsageMeter

Endpoint = Literal["chat.completions", "completions", "embeddings"]

_PATHS: dict[Endpoint, tuple[str, Purpose]] = {
    "chat.completions": ("/v1/chat/completions", "generate"),
    "completions": ("/v1/completions", "generate"),
    "embeddings": ("/v1/embeddings", "embed"),
}


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int | None = 0


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


_decode_usage = msgspec.json.Decoder(_WithUsage).decode


@dataclass(slots=True)
class JsonReply:
    status: int
    body: bytes


@dataclass(slots=True)
class StreamReply:
    chunks: AsyncIterator[bytes]


@dataclass(slots=True)
class CallContext:
    """What one call needs besides its body; built by the route."""

    principal: Principal
    endpoint: Endpoint
    model: str
    request_id: str
    started: float  # time.perf_counter() when the request arrived
    arrived_at: datetime
    stream: bool = False
    wants_usage: bool = False
    headers: dict[str, str] | None = None


class InferenceService:
    def __init__(self, client: EngineClient, meter: UsageMeter) -> None:
        self._client = client
        self._meter = meter

    async def call(self, ctx: CallContext, body: bytes) -> JsonReply:
        """A non-streaming call (chat, completions, embeddings)."""
        path, purpose = _PATHS[ctx.endpoint]
        try:
            reply = await self._client.post(ctx.model, purpose, path, body, ctx.headers)
        except EngineError as exc:
            self._record_failure(ctx, exc)
            raise
        except asyncio.CancelledError:
            self._record(ctx, 499, "client_disconnected")
            raise
        if reply.status != 200:
            return self._engine_error_reply(ctx, reply)
        try:
            usage = _decode_usage(reply.body).usage
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._record(ctx, 502, "engine_bad_response")
            message = "The engine answered with a body that is not a valid response."
            return JsonReply(502, encode_error(message, "server_error", None, "engine_bad_response"))
        self._record(ctx, 200, None, usage)
        return JsonReply(200, reply.body)

    async def open_stream(self, ctx: CallContext, body: bytes, stream_options_present: bool) -> JsonReply | StreamReply:
        """Start a streaming call; errors before the first byte are answered as ordinary JSON errors."""
        path, purpose = _PATHS[ctx.endpoint]
        if not ctx.wants_usage:
            body = inject_include_usage(body, stream_options_present)
        try:
            opened = await self._client.open_stream(ctx.model, purpose, path, body, ctx.headers)
        except EngineError as exc:
            self._record_failure(ctx, exc)
            raise
        except asyncio.CancelledError:
            self._record(ctx, 499, "client_disconnected")
            raise
        if isinstance(opened, EngineReply):
            return self._engine_error_reply(ctx, opened)
        return StreamReply(self._relay(ctx, opened))

    async def _relay(self, ctx: CallContext, stream: EngineStream) -> AsyncIterator[bytes]:
        relay = SseRelay(keep_usage_chunk=ctx.wants_usage)
        status, error_code, ttft = 200, None, None
        try:
            async for raw in stream:
                out = relay.feed(raw)
                if out:
                    if ttft is None:
                        ttft = (time.perf_counter() - ctx.started) * 1000.0
                    yield out
            tail = relay.finish()
            if tail:
                yield tail
            if not relay.saw_done:
                raise EngineStreamBrokenError("The engine closed the stream before it was complete.")
            if relay.error is not None:
                status, error_code = relay.error_status, relay.error.code
        except EngineError as exc:
            body = error_body_for(exc)
            status, error_code = body.status, body.code
            yield _error_event(body.message, body.type, body.code)
        except (asyncio.CancelledError, GeneratorExit):
            # A client may hang up right after [DONE] (the OpenAI SDK does): that answer was complete.
            if not relay.saw_done:
                status, error_code = 499, "client_disconnected"
            raise
        finally:
            await stream.aclose()
            usage = relay.usage
            self._record(ctx, status, error_code, usage, ttft)

    def _engine_error_reply(self, ctx: CallContext, reply: EngineReply) -> JsonReply:
        info = normalize_error_body(reply.status, reply.body)
        status = reply.status if 400 <= reply.status < 500 else 502
        self._record(ctx, status, info.code or info.type)
        return JsonReply(status, msgspec.json.encode(info.to_openai()))

    def _record_failure(self, ctx: CallContext, exc: EngineError) -> None:
        body = error_body_for(exc)
        self._record(ctx, body.status, body.code)

    def _record(
        self, ctx: CallContext, status: int, error_code: str | None, usage: Any = None,
        ttft_ms: float | None = None,
    ) -> None:
        prompt = completion = 0
        if usage is not None:  # an engine's counts, clamped to what a usage row can hold
            prompt = min(max(usage.prompt_tokens or 0, 0), INT4_MAX)
            completion = min(max(usage.completion_tokens or 0, 0), INT4_MAX)
        p = ctx.principal
        self._meter.record(
            UsageEvent(
                created_at=ctx.arrived_at, request_id=ctx.request_id, tenant_id=p.tenant_id, key_id=p.key_id,
                endpoint=ctx.endpoint, model=storable_model_name(ctx.model), stream=ctx.stream, status_code=status,
                error_code=error_code, prompt_tokens=prompt, completion_tokens=completion,
                latency_ms=(time.perf_counter() - ctx.started) * 1000.0, ttft_ms=ttft_ms,
            )
        )


MAX_STORED_MODEL_NAME = 256


def storable_model_name(model: str) -> str:
    """The model name as a usage row can hold it: a client's name may be anything, and Postgres text
    cannot hold NUL, which would fail the whole batch it is written in."""
    return model.replace("\x00", "\ufffd")[:MAX_STORED_MODEL_NAME]


def _error_event(message: str, type_: str, code: str | None) -> bytes:
    return b"data: " + encode_error(message, type_, None, code) + b"\n\ndata: [DONE]\n\n"

