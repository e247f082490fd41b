"""What the request pipeline costs per call: ``InferenceService`` against an in-process fake engine client.

    python -m tests.bench.bench_pipeline [--requests 20000] [--rounds 7]

Each call is built as the inference route builds it (a ``Call`` with the decoded request, the raw body and
the upstream headers) and run to its end: a non-streaming chat answer, and a stream of 16 chunks with
running usage that the client did not ask for (so the usage body edit and the usage filter both run), read
whole. Usage metering, the built-in observer, records into a ``UsageMeter`` that is never flushed. The
figures are microseconds of CPU per call (``time.process_time``), the median of ``--rounds``, for the
built-in parts alone and with one no-op step, one no-op stream filter and one extra observer installed.
Nothing here is a test: the figures go in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from gateway.auth.principal import Principal
from gateway.engines.client import EngineReply
from gateway.engines.models import ModelCard
from gateway.engines.replica import Purpose, Replica
from gateway.engines.routes import Route
from gateway.openai.requests import ChatCompletionRequest
from gateway.services.call import Call
from gateway.services.inference import InferenceService, StreamReply
from gateway.services.metering import MeterUsage
from gateway.services.pipeline import Pipeline
from observability.usage import UsageMeter

MODEL = "bench-chat"
REPLICA = Replica("http://engine:8000", "generate")
ROUTE = Route(MODEL, "generate", (REPLICA,), ModelCard(id=MODEL))
PRINCIPAL = Principal(uuid.uuid4(), "bench", uuid.uuid4(), "user")
ANSWER = msgspec.json.encode({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "w " * 16}, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
})
CHUNKS = [
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"bench-chat","choices":[{"index":0,'
    b'"delta":{"content":"w "},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":'
    + str(12 + i).encode() + b',"completion_tokens":' + str(i).encode() + b"}}\n\n"
    for i in range(1, 17)
] + [
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"bench-chat","choices":[],'
    b'"usage":{"prompt_tokens":12,"total_tokens":28,"completion_tokens":16}}\n\n',
    b"data: [DONE]\n\n",
]
BODY = msgspec.json.encode({"model": MODEL, "messages": [{"role": "user", "content": "hello " * 20}], "max_tokens": 16})
STREAM_BODY = BODY[:-1] + b',"stream":true}'
REQUEST = msgspec.json.decode(BODY, type=ChatCompletionRequest)
STREAM_REQUEST = msgspec.json.decode(STREAM_BODY, type=ChatCompletionRequest)


class FakeStream:
    __slots__ = ("_chunks", "replica")

    def __init__(self) -> None:
        self.replica = REPLICA
        self._chunks = iter(CHUNKS)

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> bytes:
        for piece in self._chunks:
            return piece
        raise StopAsyncIteration

    async def aclose(self) -> None:
        return None


class FakeEngines:
    reply = EngineReply(200, ANSWER, REPLICA)

    async def post(self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> EngineReply:
        return self.reply

    async def open_stream(
        self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply | FakeStream:
        return FakeStream()


class OneModel:
    def resolve(self, principal: Principal, model: str, purpose: Purpose) -> Route:
        return ROUTE


class NoOpStep:
    async def __call__(self, call: Call) -> None:
        return None


class NoOpFilter:
    def event(self, event: bytes) -> bytes:
        return event

    def before_done(self) -> bytes:
        return b""


class NoOpObserver:
    def __call__(self, call: Call) -> None:
        return None


def make_service(extras: bool) -> InferenceService:
    meter = UsageMeter(None, batch_size=10**9, max_pending=10**9)  # type: ignore[arg-type]  # never flushed
    observers: tuple[Any, ...] = (MeterUsage(meter),)
    if not extras:
        return InferenceService(FakeEngines(), OneModel(), Pipeline(observers=observers))
    pipeline = Pipeline(steps=(NoOpStep(),), stream_filters=(NoOpFilter(),), observers=(*observers, NoOpObserver()))
    return InferenceService(FakeEngines(), OneModel(), pipeline)


def new_call(stream: bool) -> Call:
    call = Call(PRINCIPAL, "chat.completions", "req_bench", time.perf_counter(), datetime.now(UTC))
    call.request = STREAM_REQUEST if stream else REQUEST
    call.body = STREAM_BODY if stream else BODY
    call.model = MODEL
    call.stream = stream
    call.upstream_headers["x-request-id"] = "req_bench"
    return call


async def one_round(service: InferenceService, stream: bool, requests: int) -> float:
    """CPU microseconds per call over ``requests`` calls run one after another."""
    started = time.process_time()
    for _ in range(requests):
        reply = await service.run(new_call(stream))
        if isinstance(reply, StreamReply):
            async for _piece in reply.chunks:
                pass
    return (time.process_time() - started) / requests * 1e6


async def measure(requests: int, rounds: int) -> None:
    print(f"InferenceService, fake engine client: CPU us per call, median of {rounds} rounds of {requests}")
    for stream in (False, True):
        figures: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for extras in (False, True):  # alternated, so drift hits both alike
                figures[extras].append(await one_round(make_service(extras), stream, requests))
        base, extra = statistics.median(figures[False]), statistics.median(figures[True])
        kind = "stream of 16 chunks" if stream else "non-streaming     "
        print(f"  {kind}: built-in parts {base:6.2f} us   + no-op step, stream filter, observer {extra:6.2f} us"
              f"   (+{extra - base:.2f} us)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    asyncio.run(measure(args.requests, args.rounds))


if __name__ == "__main__":
    main()
