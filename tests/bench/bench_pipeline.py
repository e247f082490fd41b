"""What the request pipeline costs per call: ``InferenceService`` against an in-process fake engine client.

    python -m tests.bench.bench_pipeline [--requests 20000] [--rounds 7] [--base-parts]

Each call is built as the inference route builds it (a ``Call`` with the decoded request, the raw body and
the upstream headers) and run to its end: a non-streaming chat answer, and a stream of 16 chunks with
running usage that the client did not ask for (so the usage body edit and the usage filter both run), read
whole. Usage metering, the built-in observer, records into a ``UsageMeter`` that is never flushed. The
figures are microseconds of CPU per call (``time.process_time``), the median of ``--rounds``, for the
built-in parts alone and with one no-op step, one no-op stream filter and one extra observer installed.
Nothing here is a test: the figures go in the README.

``--base-parts``: what tenant adapters (issue 11) add to a call that names a base model, part by part, each
variant one step beyond the one before, alternated round by round: the tenant's ``cache_salt`` spliced into the
body, model resolution through the ``ModelCatalog`` with the adapter directory and base isolation (a replica
without runtime LoRA: the base route itself), and a base model on a replica that takes LoRA adapters (sent as its
identity adapter: the model renamed in the body, which then is decoded and encoded again, and the public name put
back in the answer or in every stream event). Then the same parts alone, timed with ``timeit`` (the smallest of
several repeats), for the ``--body-kb`` sizes of request bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import timeit
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import msgspec

from gateway.auth.principal import Principal
from gateway.engines.client import EngineReply
from gateway.engines.models import ModelCard
from gateway.engines.pool import EnginePool
from gateway.engines.replica import Purpose, Replica
from gateway.engines.routes import Route
from gateway.openai.requests import ChatCompletionRequest
from gateway.services.call import Call
from gateway.services.catalog import AdapterEntryLike, ModelCatalog
from gateway.services.inference import InferenceService, StreamReply
from gateway.services.metering import MeterUsage
from gateway.services.model_names import PublicModelName
from gateway.services.pipeline import Pipeline
from gateway.services.salts import CacheSalts
from observability.usage import UsageMeter

MODEL = "bench-chat"
REPLICA = Replica("http://engine:8000", "generate")
ROUTE = Route(MODEL, "generate", (REPLICA,), ModelCard(id=MODEL))
PRINCIPAL = Principal(uuid.uuid4(), "bench", uuid.uuid4(), "user")
NOW = datetime.now(UTC)
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


IDENTITY = "tga-" + "0" * 32  # the identity adapter's engine name (the form of a real one)
SALT_KEY = bytes(range(32))


def answer_of(engine_model: str) -> tuple[bytes, list[bytes]]:
    """The engine's answer and stream chunks, naming the model as the engine was sent it."""
    name = msgspec.json.encode(engine_model)
    return ANSWER.replace(b'"bench-chat"', name), [c.replace(b'"bench-chat"', name) for c in CHUNKS]


class NamedEngines(FakeEngines):
    """The fake engine client answering under ``engine_model``."""

    def __init__(self, engine_model: str) -> None:
        body, self._chunks = answer_of(engine_model)
        self.reply = EngineReply(200, body, REPLICA)

    async def open_stream(
        self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply | FakeStream:
        stream = FakeStream()
        stream._chunks = iter(self._chunks)
        return stream


class OneRoutePool:
    """The part of ``EnginePool`` the catalog reads: one generation route."""

    def __init__(self, route: Route) -> None:
        self._route = route

    def route(self, model: str, purpose: Purpose) -> Route:
        return self._route


class NoAdapters:
    """The adapter directory of a gateway where no tenant has an adapter."""

    def lookup(self, tenant_id: uuid.UUID, name: str) -> AdapterEntryLike | None:
        return None

    def for_tenant(self, tenant_id: uuid.UUID) -> list[AdapterEntryLike]:
        return []


class Identities:
    """The guard's identity adapter names (``AdapterGuard.identity_for``): every base model has one."""

    def identity_for(self, base_model: str) -> str | None:
        return IDENTITY


BASE_PARTS = ("before issue 11", "+ cache_salt", "+ catalog, isolation (no LoRA)", "isolated (LoRA replica)")


def base_part_service(part: int) -> InferenceService:
    """The service of variant ``part`` of ``BASE_PARTS`` (each includes the ones before it)."""
    meter = UsageMeter(None, batch_size=10**9, max_pending=10**9)  # type: ignore[arg-type]  # never flushed
    pipeline = Pipeline(observers=(MeterUsage(meter),))
    salts = CacheSalts(SALT_KEY) if part >= 1 else None
    replica = Replica(REPLICA.url, "generate")
    replica.lora = part >= 3
    pool = cast(EnginePool, OneRoutePool(Route(MODEL, "generate", (replica,), ModelCard(id=MODEL))))
    # before issue 11, the catalog looked the route up and asked the grants; now also the adapter directory
    # (only for a name no engine serves) and the isolated route of a base model
    models = ModelCatalog(pool, adapters=NoAdapters(), isolation=Identities()) if part >= 2 else ModelCatalog(pool)
    engines = NamedEngines(IDENTITY if part >= 3 else MODEL)
    return InferenceService(engines, models, pipeline, salts=salts)


async def measure_base_parts(requests: int, rounds: int) -> None:
    print(f"What tenant adapters add to a base-model call: CPU us per call, median of {rounds} rounds of {requests}")
    for stream in (False, True):
        figures: list[list[float]] = [[] for _ in BASE_PARTS]
        for _ in range(rounds):
            for part in range(len(BASE_PARTS)):  # alternated, so drift hits all alike
                figures[part].append(await one_round(base_part_service(part), stream, requests))
        kind = "stream of 16 chunks" if stream else "non-streaming"
        previous = None
        for name, values in zip(BASE_PARTS, figures, strict=True):
            median = statistics.median(values)
            step = "" if previous is None else f"  ({median - previous:+.2f} us)"
            print(f"  {kind:<19} {name:<31} {median:7.2f} us{step}")
            previous = median


def time_parts(body_kbs: list[int]) -> None:
    """Each part alone, with ``timeit``: the smallest of 7 repeats, per operation."""
    salts = CacheSalts(SALT_KEY)
    tenant = PRINCIPAL.tenant_id
    catalog_before = ModelCatalog(cast(EnginePool, OneRoutePool(ROUTE)))
    catalog_now = ModelCatalog(cast(EnginePool, OneRoutePool(ROUTE)), adapters=NoAdapters(), isolation=Identities())
    public = PublicModelName(IDENTITY, MODEL)
    answer, chunks = answer_of(IDENTITY)

    def per_op(fn: Any, number: int = 100_000) -> float:
        return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6

    def body_of(kb: int) -> bytes:
        content = "hello " * max(1, kb * 1024 // 6)
        return msgspec.json.encode({"model": MODEL, "messages": [{"role": "user", "content": content}],
                                    "max_tokens": 16})

    print("The parts alone (timeit, smallest of 7 repeats), us per call")
    print(f"  salt lookup (CacheSalts.json_value)          {per_op(lambda: salts.json_value(tenant)):7.3f}")
    print(f"  resolve, catalog before issue 11             "
          f"{per_op(lambda: catalog_before.resolve(PRINCIPAL, MODEL, 'generate')):7.3f}")
    print(f"  resolve, catalog with isolation (no LoRA)    "
          f"{per_op(lambda: catalog_now.resolve(PRINCIPAL, MODEL, 'generate')):7.3f}")
    print(f"  answer filter: public name in the answer     {per_op(lambda: public.answer(answer)):7.3f}")
    print(f"  stream filter: public name in 18 events      {per_op(lambda: [public.event(c) for c in chunks]):7.3f}")
    for kb in body_kbs:
        body = body_of(kb)
        salt = salts.json_value(tenant)

        def engine_body(edit: int, body: bytes = body, salt: bytes = salt) -> bytes:
            call = Call(PRINCIPAL, "chat.completions", "req_bench", 0.0, NOW)
            call.body = body
            if edit >= 1:
                call.set_field("cache_salt", salt, absent=True)
            if edit >= 2:
                call.set_field("model", msgspec.json.encode(IDENTITY))
            return call.engine_body()

        number = max(1000, 100_000 // kb)
        plain, salted, renamed = (per_op(lambda edit=edit: engine_body(edit), number) for edit in range(3))
        print(f"  engine body of {len(body):>7} bytes: as sent {plain:7.3f}, + salt spliced {salted:7.3f} "
              f"(+{salted - plain:.3f}), + model renamed (decoded, encoded) {renamed:7.3f} (+{renamed - plain:.3f})")


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
    parser.add_argument("--base-parts", action="store_true", help="what tenant adapters add to a base-model call")
    parser.add_argument("--body-kb", type=int, nargs="*", default=[1, 16, 128], help="request sizes for --base-parts")
    args = parser.parse_args(argv)
    if args.base_parts:
        asyncio.run(measure_base_parts(args.requests, args.rounds))
        time_parts(args.body_kb)
        return
    asyncio.run(measure(args.requests, args.rounds))


if __name__ == "__main__":
    main()
