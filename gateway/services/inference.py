"""The inference path: run one call through the pipeline, forward it to an engine route, relay the answer.

Framework-free: the route hands in a :class:`~gateway.services.call.Call` (principal, endpoint, decoded
request, raw body, upstream headers) and gets back a :class:`JsonReply` or a :class:`StreamReply` to turn
into HTTP. :class:`InferenceService` is the pipeline runner (see ``gateway.services.pipeline`` for the
plug-in points): the built-in stream usage edit, model resolution to an engine route, the steps, the
engine call, the answer or stream filters, and the observers, which see every call once, however it ended.

Every call ends with an ``end_reason``: ``completed``, ``rejected`` (a 4xx: the gateway, a step or the
engine refused the request), ``client_disconnected``, ``engine_error``, ``timeout`` or ``server_shutdown``.
Requests refused after authentication but before the service ran (bad body, 413, ...) are observed too
(:meth:`InferenceService.reject`). A model no route was found for is labelled ``unknown``
(``Call.model_label``), so clients cannot multiply the names in usage rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from msgspec import UNSET

from gateway.auth.principal import Principal
from gateway.engines.client import EngineReply
from gateway.engines.errors import EngineBadResponseError, EngineError, EngineStreamBrokenError
from gateway.engines.normalize import normalize_error_body, redact
from gateway.engines.replica import Purpose, Replica
from gateway.engines.routes import Route
from gateway.errors import ClientDisconnectedError, ServerShuttingDownError, error_body_for
from gateway.openai.requests import EmbeddingRequest
from gateway.services.call import UNKNOWN_MODEL, Call, Endpoint, EndReason
from gateway.services.model_names import PublicModelName
from gateway.services.pipeline import Pipeline, StreamFilter
from gateway.services.salts import CacheSalts
from gateway.services.shutdown import ShutdownWatch
from gateway.services.sse import (
    DEFAULT_MAX_EVENT_BYTES,
    HIDE_ALL_USAGE,
    HIDE_RUNNING_USAGE,
    SseRelay,
    StreamUsage,
    ask_for_running_usage,
    engine_failed_message,
    usage_filter,
)

__all__ = [
    "SHUTTING_DOWN_CODE", "UNKNOWN_MODEL", "Call", "EndReason", "Endpoint", "EngineCalls", "EngineStreamLike",
    "InferenceService", "JsonReply", "ModelResolver", "StreamReply", "end_reason_for",
]

log = logging.getLogger(__name__)

SHUTTING_DOWN_CODE = ServerShuttingDownError.default_code

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


class EngineStreamLike(Protocol):
    """What the runner needs of an open engine stream (``gateway.engines.EngineStream``)."""

    @property
    def replica(self) -> Replica: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class EngineCalls(Protocol):
    """What the runner needs of the engine client (``gateway.engines.EngineClient``; tests give a fake)."""

    async def post(
        self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply: ...

    async def open_stream(
        self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply | EngineStreamLike: ...


class ModelResolver(Protocol):
    """Public model -> engine route for one principal (``gateway.services.catalog.ModelCatalog``)."""

    def resolve(self, principal: Principal, model: str, purpose: Purpose) -> Route: ...


class InferenceService:
    """Runs calls through ``pipeline`` (steps, filters, observers; usage metering is one of its observers).

    ``max_event_bytes``: the largest stream event taken from an engine. ``shutdown``: ends the streams
    still running when a graceful stop is about to time out (see ``gateway.services.shutdown``). ``salts``:
    every engine request carries its tenant's ``cache_salt`` (see ``gateway.services.salts``); None sends none.
    """

    def __init__(
        self, client: EngineCalls, models: ModelResolver, pipeline: Pipeline | None = None, *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, shutdown: ShutdownWatch | None = None,
        salts: CacheSalts | None = None,
    ) -> None:
        pipeline = pipeline if pipeline is not None else Pipeline()
        self._client = client
        self._models = models
        self._steps = tuple(pipeline.steps)
        self._answer_filters = tuple(pipeline.answer_filters)
        service_filters: tuple[StreamFilter, ...] = tuple(pipeline.stream_filters)
        # The filters of a stream call by the usage filter it needs: built once, so a call allocates none.
        self._stream_filters: dict[StreamFilter | None, tuple[StreamFilter, ...]] = {
            None: service_filters,
            HIDE_ALL_USAGE: (HIDE_ALL_USAGE, *service_filters),
            HIDE_RUNNING_USAGE: (HIDE_RUNNING_USAGE, *service_filters),
        }
        self._observers = tuple(pipeline.observers)
        self._max_event_bytes = max_event_bytes
        self._shutdown = shutdown if shutdown is not None else ShutdownWatch(0.0)
        self._salts = salts

    async def run(self, call: Call) -> JsonReply | StreamReply:
        """Run one call whose request and body the route has read; errors before the first byte are
        raised (and observed) for the route to answer, with ``call.response_headers``."""
        path, purpose = _PATHS[call.endpoint]
        client = self._client
        try:
            self._prepare(call, purpose)
            for step in self._steps:
                await step(call)
            assert call.route is not None
            if call.stream:
                opened = await client.open_stream(call.route, path, call.engine_body(), call.upstream_headers)
            else:
                reply = await client.post(call.route, path, call.engine_body(), call.upstream_headers)
        except asyncio.CancelledError:
            self._end(call, *self._cancelled_outcome())
            raise
        except Exception as exc:
            self.reject(call, exc)
            raise
        if call.stream:
            if isinstance(opened, EngineReply):
                return self._engine_error_reply(call, opened)
            return self._start_relay(call, opened)
        if reply.status != 200:
            return self._engine_error_reply(call, reply)
        return self._answer(call, reply)

    def _prepare(self, call: Call, purpose: Purpose) -> None:
        """The built-in parts before the steps: the stream usage edit and filters, the tenant's cache salt,
        model resolution."""
        request = call.request
        if call.stream and request is not None and not isinstance(request, EmbeddingRequest):
            ask_for_running_usage(call, request.stream_options is not UNSET)
            call.stream_filters = self._stream_filters[usage_filter(call)]
        elif self._answer_filters:
            call.answer_filters = self._answer_filters
        if self._salts is not None and request is not None:
            salt = self._salts.json_value(call.principal.tenant_id)
            call.set_field("cache_salt", salt, absent=request.cache_salt is UNSET)
        route = call.route = self._models.resolve(call.principal, call.model, purpose)
        if route.engine_model != call.model:  # an adapter: the engine knows it by its opaque engine name
            _rename_model(call, route.engine_model)

    def _answer(self, call: Call, reply: EngineReply) -> JsonReply:
        call.replica = reply.replica
        body = reply.body
        try:
            usage = _decode_usage(body).usage
        except (msgspec.DecodeError, msgspec.ValidationError):
            bad = EngineBadResponseError("The engine answered with a body that is not a valid response.")
            error = error_body_for(bad)
            self._end(call, error.status, error.code, "engine_error")
            return JsonReply(error.status, error.to_bytes())
        if call.answer_filters:
            try:
                for answer_filter in call.answer_filters:
                    body = answer_filter.answer(body)
            except Exception as exc:
                self.reject(call, exc)
                raise
        self._end(call, 200, None, "completed", usage)
        return JsonReply(200, body)

    def _start_relay(self, call: Call, stream: EngineStreamLike) -> StreamReply:
        call.replica = stream.replica
        relay = SseRelay(call.stream_filters, max_event_bytes=self._max_event_bytes, request_id=call.request_id)
        run = _StreamRun()
        chunks = self._relay(call, stream, relay, run)
        run.agen = chunks
        return StreamReply(chunks)

    async def _relay(
        self, call: Call, stream: EngineStreamLike, relay: SseRelay, run: _StreamRun
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
                        ttft = (time.perf_counter() - call.started) * 1000.0
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
            yield body.stream_event()
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
            self._end(call, status, error_code, reason, relay.metered_usage(), ttft)

    def reject(self, call: Call, exc: BaseException) -> None:
        """Observe a call refused with ``exc`` (by the route before the service ran, a step, or the engine
        layer before any answer): 0 tokens, its status and error code."""
        body = error_body_for(exc)
        self._end(call, body.status, body.code, end_reason_for(body.status))

    def _engine_error_reply(self, call: Call, reply: EngineReply) -> JsonReply:
        call.replica = reply.replica
        if 400 <= reply.status < 500:  # the engine refused the tenant's request: its words reach the tenant
            body = reply.body
            route = call.route
            if route is not None and route.engine_model != call.model:
                body = PublicModelName(route.engine_model, call.model).error(body)
            info = normalize_error_body(reply.status, body)
            self._end(call, reply.status, info.code or info.type, end_reason_for(reply.status))
            return JsonReply(reply.status, msgspec.json.encode(info.to_openai()))
        # The engine failed: what it said is for the operator (logged, redacted), not for the tenant.
        log.warning(
            "engine answered HTTP %d: %s", reply.status,
            redact(reply.body[:4096].decode("utf-8", "replace")) or "(empty body)",
            extra={"engine": reply.replica.display_url},
        )
        error = error_body_for(EngineError(engine_failed_message(call.request_id)))
        self._end(call, error.status, error.code, "engine_error")
        return JsonReply(error.status, error.to_bytes())

    def _cancelled_outcome(self) -> _Outcome:
        """Why a call was cancelled: the server cancels what is left when its drain time is up; otherwise
        the client went away."""
        return _SHUT_DOWN if self._shutdown.cutting else _CLIENT_GONE

    def _interrupted(self, relay: SseRelay) -> _Outcome:
        """A stream stopped from outside: complete all the same if [DONE] was relayed (the OpenAI SDK hangs
        up right after it)."""
        return _outcome_of(relay) if relay.saw_done else self._cancelled_outcome()

    def _end(
        self, call: Call, status: int, error_code: str | None, end_reason: EndReason,
        usage: _Usage | StreamUsage | None = None, ttft_ms: float | None = None,
    ) -> None:
        """Set the call's outcome and show it to every observer (once per call)."""
        call.status = status
        call.error_code = error_code
        call.end_reason = end_reason
        if usage is not None:
            call.prompt_tokens = usage.prompt_tokens or 0
            call.completion_tokens = usage.completion_tokens or 0
        else:
            call.prompt_tokens = call.completion_tokens = 0
        call.ttft_ms = ttft_ms
        call.latency_ms = (time.perf_counter() - call.started) * 1000.0
        for observer in self._observers:
            try:
                observer(call)
            except Exception:  # one observer's bug must not cost the others their view, nor the client its answer
                log.exception("pipeline observer %r failed", observer)


def _rename_model(call: Call, engine_model: str) -> None:
    """Send the engine its own name for the model; answer with the public one."""
    call.set_field("model", msgspec.json.encode(engine_model))
    public = PublicModelName(engine_model, call.model)
    if call.stream:
        call.add_stream_filter(public)
    else:
        call.add_answer_filter(public)


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
_SHUT_DOWN: _Outcome = (ServerShuttingDownError.status, SHUTTING_DOWN_CODE, "server_shutdown")
_CLIENT_GONE: _Outcome = (ClientDisconnectedError.status, ClientDisconnectedError.default_code, "client_disconnected")


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


def _shutdown_event() -> bytes:
    message = "The server is shutting down; the stream was ended before it was complete. Please retry."
    return error_body_for(ServerShuttingDownError(message)).stream_event()

