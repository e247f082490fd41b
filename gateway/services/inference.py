"""The inference path: forward an OpenAI request to an engine replica, relay the answer, meter it.

Framework-free: routes hand in the raw body and the decoded fields the gateway acts on, and get back a
:class:`JsonReply` or a :class:`StreamReply` to turn into HTTP. Bodies go to the engine as they came,
except that a stream always asks the engine for usage on every chunk, so a stream is metered with the
tokens delivered however it ends; the usage the client did not ask for is taken out again (see
``gateway.services.sse``).

Every call leaves one usage row, with an ``end_reason``: ``completed``, ``rejected`` (a 4xx: the
gateway or the engine refused the request), ``client_disconnected``, ``engine_error``, ``timeout`` or
``server_shutdown``. Requests refused after authentication but before any engine call (bad body, 413,
...) are metered too (:meth:`InferenceService.record_rejected`). A model no engine serves is recorded
under the one label ``unknown``, so clients cannot multiply the names in usage rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec

from gateway.auth.principal import Principal
from gateway.engines.client import EngineClient, EngineReply
from gateway.engines.errors import EngineError, EngineStreamBrokenError, ModelNotServedError
from gateway.engines.normalize import normalize_error_body, redact
from gateway.engines.replica import Purpose
from gateway.engines.stream import EngineStream
from gateway.errors import encode_error, error_body_for
from gateway.services.shutdown import ShutdownWatch
from gateway.services.sse import DEFAULT_MAX_EVENT_BYTES, SseRelay, ask_for_running_usage, engine_failed_message
from observability.usage import INT4_MAX, UsageEvent, UsageMeter

log = logging.getLogger(__name__)

Endpoint = Literal["chat.completions", "completions", "embeddings"]
EndReason = Literal["completed", "rejected", "client_disconnected", "engine_error", "timeout", "server_shutdown"]
UNKNOWN_MODEL = "unknown"  # the model label of a request whose model no engine serves (or not known yet)
SHUTTING_DOWN_CODE = "server_shutting_down"

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
    """``max_event_bytes``: the largest stream event taken from an engine. ``shutdown``: ends the streams
    still running when a graceful stop is about to time out (see ``gateway.services.shutdown``)."""

    def __init__(
        self, client: EngineClient, meter: UsageMeter, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        shutdown: ShutdownWatch | None = None,
    ) -> None:
        self._client = client
        self._meter = meter
        self._max_event_bytes = max_event_bytes
        self._shutdown = shutdown if shutdown is not None else ShutdownWatch(0.0)

    async def call(self, ctx: CallContext, body: bytes) -> JsonReply:
        """A non-streaming call (chat, completions, embeddings)."""
        path, purpose = _PATHS[ctx.endpoint]
        try:
            reply = await self._client.post(ctx.model, purpose, path, body, ctx.headers)
        except EngineError as exc:
            self._record_failure(ctx, exc)
            raise
        except asyncio.CancelledError:
            self._record_cancelled(ctx)
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
        try:
            body, running_usage = ask_for_running_usage(body, stream_options_present)
        except Exception as exc:
            self.record_rejected(ctx, exc)
            raise
        try:
            opened = await self._client.open_stream(ctx.model, purpose, path, body, ctx.headers)
        except EngineError as exc:
            self._record_failure(ctx, exc)
            raise
        except asyncio.CancelledError:
            self._record_cancelled(ctx)
            raise
        if isinstance(opened, EngineReply):
            return self._engine_error_reply(ctx, opened)
        relay = SseRelay(
            keep_usage_chunk=ctx.wants_usage, keep_running_usage=running_usage,
            max_event_bytes=self._max_event_bytes, request_id=ctx.request_id,
        )
        run = _StreamRun()
        chunks = self._relay(ctx, opened, relay, run)
        run.agen = chunks
        return StreamReply(chunks)

    async def _relay(
        self, ctx: CallContext, stream: EngineStream, relay: SseRelay, run: _StreamRun
    ) -> AsyncGenerator[bytes, None]:
        outcome: _Outcome = _COMPLETED
        ttft = None
        run.task = asyncio.current_task()
        self._shutdown.track(run)
        try:
            async for raw in stream:
                out = relay.feed(raw)
                if out:
                    if ttft is None:
                        ttft = (time.perf_counter() - ctx.started) * 1000.0
                    yield out
                    if run.cut_requested and not relay.saw_done:  # asked while the client took that chunk
                        raise _StreamCutError
            tail = relay.finish()
            if tail:
                yield tail
            outcome = _outcome_of(relay)
        except EngineError as exc:
            body = error_body_for(exc)
            outcome = (body.status, body.code, end_reason_for(body.status))
            yield _error_event(body.message, body.type, body.code)
        except _StreamCutError:
            outcome = _SHUT_DOWN
            yield _shutdown_event()
        except asyncio.CancelledError:
            if not run.was_cut():
                outcome = self._interrupted(relay)
                raise
            if not relay.saw_done:
                outcome = _SHUT_DOWN
                yield _shutdown_event()
        except GeneratorExit:
            outcome = self._interrupted(relay)
            raise
        finally:
            self._shutdown.untrack(run)
            await stream.aclose()
            status, error_code, reason = outcome
            self._record(ctx, status, error_code, relay.metered_usage(), ttft, reason)

    def record_rejected(self, ctx: CallContext, exc: BaseException) -> None:
        """Meter a request refused before any engine call (after authentication): 0 tokens, its status
        and error code, the model as ``unknown`` (a name no engine confirmed)."""
        body = error_body_for(exc)
        self._record(ctx, body.status, body.code, model=UNKNOWN_MODEL)

    def _engine_error_reply(self, ctx: CallContext, reply: EngineReply) -> JsonReply:
        if 400 <= reply.status < 500:  # the engine refused the tenant's request: its words reach the tenant
            info = normalize_error_body(reply.status, reply.body)
            self._record(ctx, reply.status, info.code or info.type)
            return JsonReply(reply.status, msgspec.json.encode(info.to_openai()))
        # The engine failed: what it said is for the operator (logged, redacted), not for the tenant.
        log.warning(
            "engine answered HTTP %d: %s", reply.status,
            redact(reply.body[:4096].decode("utf-8", "replace")) or "(empty body)",
            extra={"engine": reply.replica.display_url},
        )
        self._record(ctx, 502, "engine_error")
        message = engine_failed_message(ctx.request_id)
        return JsonReply(502, encode_error(message, "server_error", None, "engine_error"))

    def _record_failure(self, ctx: CallContext, exc: EngineError) -> None:
        body = error_body_for(exc)
        model = UNKNOWN_MODEL if isinstance(exc, ModelNotServedError) else None
        self._record(ctx, body.status, body.code, model=model)

    def _cancelled_outcome(self) -> _Outcome:
        """Why a call was cancelled: the server cancels what is left when its drain time is up; otherwise
        the client went away."""
        return _SHUT_DOWN if self._shutdown.cutting else _CLIENT_GONE

    def _interrupted(self, relay: SseRelay) -> _Outcome:
        """A stream stopped from outside: complete all the same if [DONE] was relayed (the OpenAI SDK hangs
        up right after it)."""
        return _outcome_of(relay) if relay.saw_done else self._cancelled_outcome()

    def _record_cancelled(self, ctx: CallContext) -> None:
        status, code, reason = self._cancelled_outcome()
        self._record(ctx, status, code, end_reason=reason)

    def _record(
        self, ctx: CallContext, status: int, error_code: str | None, usage: Any = None,
        ttft_ms: float | None = None, end_reason: EndReason | None = None, model: str | None = None,
    ) -> None:
        prompt = completion = 0
        if usage is not None:  # an engine's counts, clamped to what a usage row can hold
            prompt = min(max(usage.prompt_tokens or 0, 0), INT4_MAX)
            completion = min(max(usage.completion_tokens or 0, 0), INT4_MAX)
        p = ctx.principal
        self._meter.record(
            UsageEvent(
                created_at=ctx.arrived_at, request_id=ctx.request_id, tenant_id=p.tenant_id, key_id=p.key_id,
                endpoint=ctx.endpoint, model=storable_model_name(model or ctx.model), stream=ctx.stream,
                status_code=status, error_code=error_code, prompt_tokens=prompt, completion_tokens=completion,
                latency_ms=(time.perf_counter() - ctx.started) * 1000.0, ttft_ms=ttft_ms,
                end_reason=end_reason or end_reason_for(status),
            )
        )


def end_reason_for(status: int) -> EndReason:
    """The end reason a status implies (a shutdown is told apart where it happens)."""
    if status < 400:
        return "completed"
    if status == 499:
        return "client_disconnected"
    if status in (408, 504):
        return "timeout"
    if status >= 500:
        return "engine_error"
    return "rejected"


_Outcome = tuple[int, str | None, EndReason]
_COMPLETED: _Outcome = (200, None, "completed")
_SHUT_DOWN: _Outcome = (503, SHUTTING_DOWN_CODE, "server_shutdown")
_CLIENT_GONE: _Outcome = (499, "client_disconnected", "client_disconnected")


def _outcome_of(relay: SseRelay) -> _Outcome:
    """How a stream the engine ended went: an error event it sent, or complete; no [DONE] is a broken stream."""
    if not relay.saw_done:
        raise EngineStreamBrokenError("The engine closed the stream before it was complete.")
    if relay.error is not None:
        status = relay.error_status
        return status, relay.error.code, end_reason_for(status)
    return _COMPLETED


class _StreamCutError(Exception):
    """The shutdown watch asked this stream to end (raised inside the relay, never outside it)."""


class _StreamRun:
    """One relayed stream as the shutdown watch sees it: :meth:`cut` ends it with the shutdown event.

    A relay waiting for the engine is woken by cancelling its task (the relay tells that cancellation from
    any other by ``cancelled``); one that is handing a chunk to a slow client sees ``cut_requested`` when
    the client has taken it.
    """

    __slots__ = ("agen", "cancelled", "cut_requested", "task")

    def __init__(self) -> None:
        self.agen: AsyncGenerator[bytes, None] | None = None
        self.task: asyncio.Task[Any] | None = None
        self.cut_requested = False
        self.cancelled = False

    def cut(self) -> None:
        if self.cut_requested:
            return
        self.cut_requested = True
        task = self.task
        waiting = getattr(self.agen, "ag_await", None) is not None  # suspended in an await, not at a yield
        if waiting and task is not None and not task.done():
            self.cancelled = True
            task.cancel()

    def was_cut(self) -> bool:
        """Whether the cancellation being handled is :meth:`cut`'s alone (then it is taken back)."""
        return self.cancelled and self.task is not None and self.task.uncancel() == 0


MAX_STORED_MODEL_NAME = 256


def storable_model_name(model: str) -> str:
    """The model name as a usage row can hold it: a client's name may be anything, and Postgres text
    cannot hold NUL, which would fail the whole batch it is written in."""
    return model.replace("\x00", "\ufffd")[:MAX_STORED_MODEL_NAME]


def _error_event(message: str, type_: str, code: str | None) -> bytes:
    return b"data: " + encode_error(message, type_, None, code) + b"\n\ndata: [DONE]\n\n"


def _shutdown_event() -> bytes:
    message = "The server is shutting down; the stream was ended before it was complete. Please retry."
    return _error_event(message, "server_error", SHUTTING_DOWN_CODE)

