"""InferenceService, the pipeline runner, against a fake engine client: no server, no database.

Steps, answer and stream filters (the hook before ``[DONE]`` included), observers, a step that ends the call
with a 429 and its headers, and streams that end early (the client, the engine, a shutdown).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from gateway.engines.client import EngineReply
from gateway.engines.errors import EngineError, EngineStreamBrokenError, ModelNotServedError
from gateway.engines.models import ModelCard
from gateway.engines.replica import Purpose, Replica
from gateway.engines.routes import Route
from gateway.errors import ApiError
from gateway.openai.decode import BodyLimits
from gateway.openai.requests import ChatCompletionRequest
from gateway.routes.inference import CHAT
from gateway.services.call import Call
from gateway.services.inference import InferenceService, JsonReply, StreamReply
from gateway.services.pipeline import Pipeline
from gateway.services.shutdown import ShutdownWatch
from tests.unit.calls import PRINCIPAL, make_call

MODEL = "base-chat"
REPLICA = Replica("http://engine-a:8000", "generate")
ROUTE = Route(MODEL, "generate", (REPLICA,), ModelCard(id=MODEL))


def answer(prompt: int = 2, completion: int = 3) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return msgspec.json.encode({"id": "c1", "object": "chat.completion", "choices": [], "usage": usage})


def chunk(word: str, completion: int, prompt: int = 2) -> bytes:
    """One event as vLLM sends it when asked for running usage (the gateway always asks)."""
    total = prompt + completion
    usage = f'"usage":{{"prompt_tokens":{prompt},"total_tokens":{total},"completion_tokens":{completion}}}'
    return b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"' + word.encode() + b'"}}],' + \
        usage.encode() + b"}\n\n"


def plain(word: str) -> bytes:
    """The same chunk as a client that did not ask for usage sees it."""
    return b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"' + word.encode() + b'"}}]}\n\n'


FINAL = b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":2,"total_tokens":5,"completion_tokens":3}}\n\n'
DONE = b"data: [DONE]\n\n"
WHOLE_STREAM = [chunk("one", 1), chunk("two", 2), chunk("three", 3), FINAL, DONE]


class FakeStream:
    """An engine stream: hands out ``chunks``, then raises ``error`` if any; ``gate`` holds each chunk back."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None, gate: asyncio.Event | None = None):
        self.replica = REPLICA
        self._chunks = list(chunks)
        self._error = error
        self._gate = gate
        self.closed = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> bytes:
        if self._gate is not None:
            await self._gate.wait()
        if self._chunks:
            return self._chunks.pop(0)
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeEngines:
    """The engine client: records what it was sent, answers what it was told to."""

    reply: EngineReply = field(default_factory=lambda: EngineReply(200, answer(), REPLICA))
    stream: FakeStream | None = None
    sent: list[tuple[Route, str, bytes, dict[str, str]]] = field(default_factory=list)

    async def post(self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> EngineReply:
        self.sent.append((route, path, body, dict(headers or {})))
        return self.reply

    async def open_stream(
        self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply | FakeStream:
        self.sent.append((route, path, body, dict(headers or {})))
        assert self.stream is not None
        return self.stream


class OneModel:
    def resolve(self, principal: Any, model: str, purpose: Purpose) -> Route:
        if model != MODEL or purpose != "generate":
            raise ModelNotServedError(model)
        return ROUTE


@dataclass
class Seen:
    """An observer that keeps what it saw of each ended call."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, call: Call) -> None:
        self.calls.append({
            "status": call.status, "error_code": call.error_code, "end_reason": call.end_reason,
            "model": call.model_label, "tokens": (call.prompt_tokens, call.completion_tokens),
            "ttft": call.ttft_ms is not None, "replica": call.replica,
        })


def service(
    engines: FakeEngines, seen: Seen, shutdown: ShutdownWatch | None = None, **pipeline: Any
) -> InferenceService:
    observers = (*pipeline.pop("observers", ()), seen)
    return InferenceService(engines, OneModel(), Pipeline(observers=observers, **pipeline), shutdown=shutdown)


def chat_call(body: dict[str, Any] | bytes) -> Call:
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    call = make_call(raw)
    request = msgspec.json.decode(raw, type=ChatCompletionRequest)
    call.request, call.model, call.stream = request, request.model, bool(request.stream)
    call.upstream_headers["x-request-id"] = call.request_id
    return call


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}


async def read(reply: JsonReply | StreamReply) -> bytes:
    assert isinstance(reply, StreamReply)
    return b"".join([piece async for piece in reply.chunks])


# -- built-in parts only -------------------------------------------------------------------------------


async def test_without_plug_ins_the_body_goes_to_the_engine_as_it_came_and_the_answer_back() -> None:
    engines, seen = FakeEngines(), Seen()
    call = chat_call(b'{"model":"base-chat", "messages":[{"role":"user","content":"hi"}],"temperature":1e999}')
    reply = await service(engines, seen).run(call)
    assert isinstance(reply, JsonReply) and (reply.status, reply.body) == (200, engines.reply.body)
    route, path, body, headers = engines.sent[0]
    assert body is call.body and (route, path) == (ROUTE, "/v1/chat/completions")  # the same object, untouched
    assert headers == {"x-request-id": "req_unit"}
    assert seen.calls == [{"status": 200, "error_code": None, "end_reason": "completed", "model": MODEL,
                           "tokens": (2, 3), "ttft": False, "replica": REPLICA}]


async def test_a_stream_asks_for_running_usage_by_a_splice_and_hides_it_from_a_client_that_did_not_ask() -> None:
    engines, seen = FakeEngines(stream=FakeStream(WHOLE_STREAM)), Seen()
    call = chat_call(chat(stream=True))
    out = await read(await service(engines, seen).run(call))
    assert out == plain("one") + plain("two") + plain("three") + DONE
    sent = engines.sent[0][2]
    assert sent.endswith(call.body[1:])  # spliced in after the brace, the rest as it came
    assert msgspec.json.decode(sent)["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert seen.calls[0] | {"replica": None} == {"status": 200, "error_code": None, "end_reason": "completed",
                                                  "model": MODEL, "tokens": (2, 3), "ttft": True, "replica": None}


async def test_a_client_that_asked_for_running_usage_gets_the_engine_bytes_unchanged() -> None:
    engines, seen = FakeEngines(stream=FakeStream(WHOLE_STREAM)), Seen()
    options = {"include_usage": True, "continuous_usage_stats": True}
    out = await read(await service(engines, seen).run(chat_call(chat(stream=True, stream_options=options))))
    assert out == b"".join(WHOLE_STREAM)


async def test_an_unknown_model_is_observed_as_unknown_and_never_sent() -> None:
    engines, seen = FakeEngines(), Seen()
    with pytest.raises(ModelNotServedError):
        await service(engines, seen).run(chat_call({**chat(), "model": "secret-adapter"}))
    assert engines.sent == []
    assert seen.calls[0]["model"] == "unknown" and seen.calls[0]["status"] == 404


# -- steps ---------------------------------------------------------------------------------------------


class RateLimitedError(ApiError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


@dataclass
class Limiter:
    """A step that lets ``allow`` calls through, adds x-ratelimit headers to each, and refuses the rest."""

    allow: int

    async def __call__(self, call: Call) -> None:
        call.add_response_header("x-ratelimit-remaining-requests", str(max(self.allow - 1, 0)))
        if self.allow <= 0:
            call.add_response_header("retry-after", "7")
            raise RateLimitedError("Rate limit reached for requests.")
        self.allow -= 1


class Retrieval:
    """A step that rewrites the messages, tells the engine who asked, and adds sources to the answer."""

    async def __call__(self, call: Call) -> None:
        messages = [{"role": "system", "content": "Answer from [1]."}, {"role": "user", "content": "hi"}]
        call.set_field("messages", msgspec.json.encode(messages))
        call.upstream_headers["traceparent"] = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        sources = Sources(b'[{"index":1,"file_id":"file-1"}]')
        call.add_answer_filter(sources)
        call.add_stream_filter(sources)


@dataclass
class Sources:
    raw: bytes

    def answer(self, body: bytes) -> bytes:
        return body[:-1] + b',"sources":' + self.raw + b"}"

    def event(self, event: bytes) -> bytes:
        return event

    def before_done(self) -> bytes:
        return b'data: {"id":"c1","choices":[],"sources":' + self.raw + b"}\n\n"


async def test_a_step_edits_the_body_once_adds_headers_and_filters_the_json_answer() -> None:
    engines, seen = FakeEngines(), Seen()
    call = chat_call(b'{"model":"base-chat","messages":[{"role":"user","content":"hi"}],"temperature":1e999}')
    reply = await service(engines, seen, steps=(Limiter(5), Retrieval())).run(call)
    _, _, body, headers = engines.sent[0]
    assert b'"temperature":1e999' in body  # members the step did not touch go on as raw bytes
    top = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    assert msgspec.json.decode(top["messages"])[0]["role"] == "system"
    assert headers["traceparent"].startswith("00-111")
    assert isinstance(reply, JsonReply) and msgspec.json.decode(reply.body)["sources"] == [
        {"index": 1, "file_id": "file-1"}]
    assert call.response_headers == [("x-ratelimit-remaining-requests", "4")]
    assert seen.calls[0]["tokens"] == (2, 3)


async def test_a_step_ends_the_call_with_a_429_whose_headers_reach_the_client() -> None:
    engines, seen = FakeEngines(), Seen()
    inference = service(engines, seen, steps=(Limiter(0),))
    call = chat_call(chat())
    with pytest.raises(RateLimitedError):
        await inference.run(call)
    assert engines.sent == []
    assert call.response_headers == [("x-ratelimit-remaining-requests", "0"), ("retry-after", "7")]
    assert seen.calls[0] | {"replica": None} == {"status": 429, "error_code": "rate_limit_exceeded",
                                                  "end_reason": "rejected", "model": MODEL, "tokens": (0, 0),
                                                  "ttft": False, "replica": None}
    # and through the plain-ASGI route: status, OpenAI error body and the step's headers
    status, headers, body = await asgi_post(inference, chat())
    assert status == 429 and msgspec.json.decode(body)["error"]["code"] == "rate_limit_exceeded"
    assert (b"retry-after", b"7") in headers and (b"x-ratelimit-remaining-requests", b"0") in headers
    assert len(seen.calls) == 2


async def asgi_post(inference: InferenceService, doc: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """POST ``doc`` to the chat route's ASGI app over fake services (a key that authenticates, no database)."""

    async def tenant(authorization: str | None, **kwargs: Any) -> Any:
        return PRINCIPAL

    services = SimpleNamespace(
        auth=SimpleNamespace(tenant=tenant), inference=inference, body_limits=BodyLimits(),
        settings=SimpleNamespace(max_body_bytes=1 << 20),
    )
    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "state": {"request_id": "req_asgi"},
        "app": SimpleNamespace(state=SimpleNamespace(services=services)),
        "headers": [(b"authorization", b"Bearer sk-tg-x"), (b"content-type", b"application/json")],
    }
    messages = [{"type": "http.request", "body": msgspec.json.encode(doc), "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await CHAT(scope, receive, send)  # type: ignore[arg-type]
    return sent[0]["status"], sent[0]["headers"], b"".join(m.get("body", b"") for m in sent[1:])


# -- stream filters ------------------------------------------------------------------------------------


class Shout:
    """A service-wide stream filter: capital letters in every chunk's content."""

    def event(self, event: bytes) -> bytes:
        return event.replace(b'"content":"', b'"content":"!').upper()

    def before_done(self) -> bytes:
        return b""


async def test_stream_filters_see_each_chunk_after_the_usage_is_hidden_and_add_events_before_done() -> None:
    engines, seen = FakeEngines(stream=FakeStream(WHOLE_STREAM)), Seen()
    inference = service(engines, seen, steps=(Retrieval(),), stream_filters=(Shout(),))
    out = await read(await inference.run(chat_call(chat(stream=True))))
    events = out.split(b"\n\n")[:-1]
    assert events[:3] == [plain(w).upper().strip().replace(b'"CONTENT":"', b'"CONTENT":"!') for w in
                          ("one", "two", "three")]
    assert msgspec.json.decode(events[3].removeprefix(b"data: "))["sources"] == [{"index": 1, "file_id": "file-1"}]
    assert events[4] == b"data: [DONE]"
    assert seen.calls[0]["tokens"] == (2, 3)  # metered from the engine's usage, whatever the filters did


async def test_the_before_done_hook_runs_only_for_a_stream_the_engine_finished() -> None:
    engines, seen = FakeEngines(stream=FakeStream(WHOLE_STREAM[:2], error=EngineStreamBrokenError("lost"))), Seen()
    out = await read(await service(engines, seen, steps=(Retrieval(),)).run(chat_call(chat(stream=True))))
    assert b"sources" not in out
    assert out.endswith(DONE) and b'"code":"engine_disconnected"' in out
    assert seen.calls[0] | {"replica": None} == {"status": 502, "error_code": "engine_disconnected",
                                                  "end_reason": "engine_error", "model": MODEL, "tokens": (2, 2),
                                                  "ttft": True, "replica": None}


# -- observers and early ends --------------------------------------------------------------------------


class Broken:
    def __call__(self, call: Call) -> None:
        raise RuntimeError("observer bug")


async def test_an_observer_that_fails_costs_neither_the_answer_nor_the_other_observers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engines, seen = FakeEngines(), Seen()
    reply = await service(engines, seen, observers=(Broken(),)).run(chat_call(chat()))
    assert isinstance(reply, JsonReply) and reply.status == 200
    assert len(seen.calls) == 1 and "pipeline observer" in caplog.text


async def test_a_client_that_leaves_mid_stream_is_observed_with_what_it_received() -> None:
    stream = FakeStream(WHOLE_STREAM)
    engines, seen = FakeEngines(stream=stream), Seen()
    reply = await service(engines, seen).run(chat_call(chat(stream=True)))
    assert isinstance(reply, StreamReply)
    chunks = reply.chunks
    assert await anext(chunks) == plain("one")
    await chunks.aclose()  # type: ignore[attr-defined]  # what the server does when the client goes away
    assert stream.closed
    assert seen.calls[0] | {"replica": None} == {"status": 499, "error_code": "client_disconnected",
                                                  "end_reason": "client_disconnected", "model": MODEL,
                                                  "tokens": (2, 1), "ttft": True, "replica": None}


async def test_a_stream_the_engine_ends_without_done_is_a_broken_stream() -> None:
    engines, seen = FakeEngines(stream=FakeStream(WHOLE_STREAM[:1])), Seen()
    out = await read(await service(engines, seen).run(chat_call(chat(stream=True))))
    assert out.startswith(plain("one")) and out.endswith(DONE) and b"engine_disconnected" in out
    assert seen.calls[0]["status"] == 502 and seen.calls[0]["tokens"] == (2, 1)


async def test_a_shutdown_ends_a_waiting_stream_with_an_error_event_and_done() -> None:
    gate = asyncio.Event()
    gate.set()
    stream = FakeStream(WHOLE_STREAM, gate=gate)
    engines, seen, shutdown = FakeEngines(stream=stream), Seen(), ShutdownWatch(0.0)
    reply = await service(engines, seen, shutdown).run(chat_call(chat(stream=True)))
    assert isinstance(reply, StreamReply)
    chunks = reply.chunks
    assert await anext(chunks) == plain("one")
    gate.clear()  # the engine takes its time with the next chunk
    rest = asyncio.ensure_future(anext(chunks))
    await asyncio.sleep(0.01)
    shutdown.cut()
    assert b'"code":"server_shutting_down"' in await rest
    assert [piece async for piece in chunks] == []
    assert stream.closed
    assert seen.calls[0]["status"] == 503 and seen.calls[0]["end_reason"] == "server_shutdown"
    assert seen.calls[0]["tokens"] == (2, 1)


async def test_an_engine_error_before_the_stream_began_is_raised_and_observed() -> None:
    class Failing(FakeEngines):
        async def open_stream(self, route: Route, path: str, body: bytes,
                              headers: Mapping[str, str] | None = None) -> EngineReply | FakeStream:
            raise EngineError("The engine failed.")

    seen = Seen()
    with pytest.raises(EngineError):
        await service(Failing(), seen).run(chat_call(chat(stream=True)))
    assert seen.calls[0]["status"] == 502 and seen.calls[0]["end_reason"] == "engine_error"
