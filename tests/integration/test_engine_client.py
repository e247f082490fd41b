"""EngineClient over real HTTP against fake vLLM servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.engines import (
    EngineBadResponseError,
    EngineClient,
    EnginePool,
    EngineReply,
    EngineStream,
    EngineStreamBrokenError,
    EngineTimeoutError,
    EngineTimeouts,
    EngineUnavailableError,
    ModelNotServedError,
    Replica,
)
from gateway.engines.http1 import ConnectError, ConnectTimeoutError, HttpClient, HttpResponse, Origin
from tests.fakes.vllm import FakeVLLM

TIMEOUTS = EngineTimeouts(connect=1.0, first_byte=5.0, total=10.0)
CHAT = "/v1/chat/completions"


def chat_body(max_tokens: int = 4, *, stream: bool = False, model: str = "fake-chat") -> bytes:
    doc = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    if stream:
        doc["stream"] = True
    return msgspec.json.encode(doc)


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(connect_timeout=TIMEOUTS.connect)
    yield client
    await client.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[FakeVLLM]]:
    """Two chat replicas serving the same model, and one embedding replica."""
    servers = [FakeVLLM(), FakeVLLM(), FakeVLLM(models=("fake-embed",), purpose="embed")]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


async def make_client(
    http: HttpClient, servers: list[FakeVLLM], timeouts: EngineTimeouts = TIMEOUTS
) -> tuple[EngineClient, EnginePool]:
    pool = EnginePool(http, [servers[0].url, servers[1].url], [servers[2].url], timeouts=timeouts)
    await pool.refresh()
    return EngineClient(pool, http, timeouts), pool


def in_flight(pool: EnginePool) -> list[int]:
    return [r.in_flight for r in pool.replicas]


def health(pool: EnginePool) -> list[bool]:
    return [r.healthy for r in pool.replicas]


async def drain(stream: EngineStream, into: list[bytes], *, close: bool = True) -> None:
    """Read `stream` to its end (or its error) into `into`; `close`: within `async with`."""
    if close:
        async with stream:
            async for chunk in stream:
                into.append(chunk)
    else:
        async for chunk in stream:
            into.append(chunk)


def fail_requests_to(monkeypatch: pytest.MonkeyPatch, http: HttpClient, replica: Replica, exc: Exception) -> None:
    """Every request `http` sends to `replica` fails with `exc` before reaching it; others go through."""
    real_request = http.request

    async def request(origin: Origin, *args: Any, **kwargs: Any) -> HttpResponse:
        if origin is replica.origin:
            raise exc
        return await real_request(origin, *args, **kwargs)

    monkeypatch.setattr(http, "request", request)


async def open_ok_stream(client: EngineClient, pool: EnginePool, body: bytes) -> EngineStream:
    stream = await client.open_stream(pool.route("fake-chat", "generate"), CHAT, body)
    assert isinstance(stream, EngineStream)
    return stream


async def test_post_forwards_body_and_headers(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    body = chat_body()
    route = pool.route("fake-chat", "generate")
    reply = await client.post(route, CHAT, body, {"traceparent": "00-1-2-01", "x-request-id": "r1"})
    assert reply.status == 200
    assert reply.json()["choices"][0]["message"]["content"] == " ".join(FakeVLLM.answer_words("hi", 4))
    target = servers[0] if reply.replica is pool.replicas[0] else servers[1]
    assert target.last_body == body
    assert target.last_headers["Content-Type"] == "application/json"
    assert target.last_headers["traceparent"] == "00-1-2-01"
    assert target.last_headers["X-Request-Id"] == "r1"
    embed_route = pool.route("fake-embed", "embed")
    embed = await client.post(embed_route, "/v1/embeddings", b'{"model": "fake-embed", "input": "x"}')
    assert embed.replica is pool.replicas[2]
    assert len(embed.json()["data"][0]["embedding"]) == 384
    assert in_flight(pool) == [0, 0, 0]


async def test_non_200_is_a_reply(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers[:2]:
        fake.set_models(("other",))  # the pool still believes they serve fake-chat
    reply = await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    assert reply.status == 404
    assert reply.json()["error"]["type"] == "NotFoundError"
    streamed = await client.open_stream(pool.route("fake-chat", "generate"), CHAT, chat_body(stream=True))
    assert isinstance(streamed, EngineReply)
    assert streamed.status == 404
    assert in_flight(pool) == [0, 0, 0]
    assert all(r.healthy for r in pool.replicas)


async def test_stream_arrives_incrementally(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers:
        fake.faults.chunk_delay = 0.1
    stream = await open_ok_stream(client, pool, chat_body(5, stream=True))
    async with stream:
        assert stream.content_type == "text/event-stream"
        chunks: list[bytes] = []
        async for chunk in stream:
            if not chunks:
                assert servers[0].streams_finished + servers[1].streams_finished == 0
                assert stream.replica.in_flight == 1
            chunks.append(chunk)
        assert stream.finished
    data = b"".join(chunks)
    assert len(chunks) > 3
    assert data.endswith(b"data: [DONE]\n\n")
    assert data.count(b"data: ") == 7  # role, 5 words, [DONE]
    assert in_flight(pool) == [0, 0, 0]
    await stream.aclose()  # idempotent
    assert in_flight(pool) == [0, 0, 0]
    assert servers[0].cancelled + servers[1].cancelled == 0


async def test_concurrent_requests_spread_by_load(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers:
        fake.faults.header_delay = 0.2
    route = pool.route("fake-chat", "generate")
    replies = await asyncio.gather(*(client.post(route, CHAT, chat_body()) for _ in range(6)))
    assert all(r.status == 200 for r in replies)
    assert (servers[0].request_count, servers[1].request_count) == (3, 3)
    assert in_flight(pool) == [0, 0, 0]


async def test_retry_lands_on_the_live_replica(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    down, live = pool.replicas[0], pool.replicas[1]
    await servers[0].stop()
    live.in_flight = 1  # so the pool tries the dead (idle-looking) replica first
    reply = await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    live.in_flight = 0
    assert reply.status == 200
    assert reply.replica is live
    assert not down.healthy
    assert down.last_error is not None
    assert down.last_error.startswith("cannot connect")
    assert servers[1].request_count == 1
    assert in_flight(pool) == [0, 0, 0]


async def test_all_down_is_unavailable(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    await servers[0].stop()
    await servers[1].stop()
    with pytest.raises(EngineUnavailableError) as exc_info:
        await client.open_stream(pool.route("fake-chat", "generate"), CHAT, chat_body(stream=True))
    assert "could be reached" in exc_info.value.message
    assert not pool.replicas[0].healthy
    assert not pool.replicas[1].healthy
    with pytest.raises(EngineUnavailableError):  # known model, nothing healthy: no attempt at all
        await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    assert in_flight(pool) == [0, 0, 0]


async def test_unknown_model(http: HttpClient, servers: list[FakeVLLM]) -> None:
    _, pool = await make_client(http, servers)
    with pytest.raises(ModelNotServedError):
        pool.route("nope", "generate")
    assert servers[0].request_count + servers[1].request_count == 0


async def test_an_engine_closing_after_the_request_is_a_502_sent_once(
    http: HttpClient, servers: list[FakeVLLM]
) -> None:
    """The engine read the POST and closed the connection (it may have crashed on it): never resent, to it or
    to another replica, and no replica is marked down for it; the pool only checks that one again soon."""
    client, pool = await make_client(http, servers)
    for fake in servers[:2]:
        fake.faults.drop_requests = 2
    loop = asyncio.get_running_loop()
    for attempt in range(2):
        sending = (
            client.post(pool.route("fake-chat", "generate"), CHAT, chat_body()) if attempt == 0
            else client.open_stream(pool.route("fake-chat", "generate"), CHAT, chat_body(stream=True))
        )
        with pytest.raises(EngineStreamBrokenError) as exc_info:
            await sending
        assert exc_info.value.code == "engine_disconnected"
        assert servers[0].request_count + servers[1].request_count == attempt + 1  # one POST, to one replica
        assert health(pool) == [True, True, True]
        assert min(r.next_check for r in pool.replicas[:2]) <= loop.time() + 0.25  # an early health check
        assert in_flight(pool) == [0, 0, 0]
    for fake in servers[:2]:
        fake.faults.drop_requests = 0
    assert (await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())).status == 200


async def test_a_200_stream_that_is_not_an_event_stream_is_a_bad_response(
    http: HttpClient, servers: list[FakeVLLM]
) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers[:2]:
        fake.faults.status = 200
        fake.faults.content_type = "text/html"
        fake.faults.body = b"<html>internal proxy page at 10.0.0.7</html>" * 1000
    with pytest.raises(EngineBadResponseError) as exc_info:
        await client.open_stream(pool.route("fake-chat", "generate"), CHAT, chat_body(stream=True))
    assert exc_info.value.code == "engine_bad_response"
    assert "html" not in exc_info.value.message and "10.0.0.7" not in exc_info.value.message
    assert in_flight(pool) == [0, 0, 0]
    assert health(pool) == [True, True, True]
    for fake in servers[:2]:
        fake.faults.content_type = "text/event-stream"
    stream = await open_ok_stream(client, pool, chat_body(stream=True))  # the media type is all that is checked
    await stream.aclose()


async def test_an_answer_past_the_size_cap_is_a_bad_response(servers: list[FakeVLLM]) -> None:
    http = HttpClient(connect_timeout=TIMEOUTS.connect, max_response_bytes=64 * 1024)
    try:
        client, pool = await make_client(http, servers)
        for fake in servers[:2]:
            fake.faults.status = 200
            fake.faults.body = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
        with pytest.raises(EngineBadResponseError) as exc_info:
            await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
        assert exc_info.value.code == "engine_bad_response"
        assert "larger than the gateway accepts" in exc_info.value.message
        assert servers[0].request_count + servers[1].request_count == 1
        assert in_flight(pool) == [0, 0, 0]
        for fake in servers[:2]:
            fake.faults.status = 500  # an error answer is read whole too
        with pytest.raises(EngineBadResponseError):
            await client.open_stream(pool.route("fake-chat", "generate"), CHAT, chat_body(stream=True))
        assert in_flight(pool) == [0, 0, 0]
        assert health(pool) == [True, True, True]
    finally:
        await http.close()


async def test_first_byte_timeout(http: HttpClient, servers: list[FakeVLLM]) -> None:
    timeouts = EngineTimeouts(connect=1.0, first_byte=0.2, total=5.0)
    client, pool = await make_client(http, servers, timeouts)
    for fake in servers:
        fake.faults.header_delay = 2.0
    started = time.perf_counter()
    with pytest.raises(EngineTimeoutError) as exc_info:
        await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    assert time.perf_counter() - started < 1.0
    assert exc_info.value.code == "engine_timeout"
    assert servers[0].request_count + servers[1].request_count == 1  # never retried
    target = servers[0] if servers[0].request_count else servers[1]
    async with asyncio.timeout(2):
        await target.wait_cancelled()  # the engine saw the request abandoned
    assert in_flight(pool) == [0, 0, 0]
    assert all(r.healthy for r in pool.replicas)


async def test_total_timeout_mid_stream(http: HttpClient, servers: list[FakeVLLM]) -> None:
    timeouts = EngineTimeouts(connect=1.0, first_byte=1.0, total=0.4)
    client, pool = await make_client(http, servers, timeouts)
    for fake in servers:
        fake.faults.chunk_delay = 0.1
    stream = await open_ok_stream(client, pool, chat_body(20, stream=True))
    received: list[bytes] = []
    with pytest.raises(EngineTimeoutError):
        await drain(stream, received)
    assert received
    assert in_flight(pool) == [0, 0, 0]


async def test_death_mid_stream(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers:
        fake.faults.die_after_chunks = 3
    stream = await open_ok_stream(client, pool, chat_body(10, stream=True))
    received: list[bytes] = []
    with pytest.raises(EngineStreamBrokenError) as exc_info:
        await drain(stream, received, close=False)
    assert b"".join(received).count(b"data: ") == 3
    assert exc_info.value.code == "engine_disconnected"
    assert isinstance(exc_info.value, EngineBadResponseError)
    assert in_flight(pool) == [0, 0, 0]  # released by the error, before any aclose
    await stream.aclose()
    assert in_flight(pool) == [0, 0, 0]


async def test_garbage(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers:
        fake.faults.garbage = True
    reply = await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    assert reply.status == 200
    with pytest.raises(EngineBadResponseError):
        reply.json()
    for fake in servers:
        fake.faults.raw_garbage = True
    with pytest.raises(EngineBadResponseError) as exc_info:
        await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    assert exc_info.value.code == "engine_bad_response"
    assert servers[0].request_count + servers[1].request_count == 2  # the bad answer was not retried
    assert in_flight(pool) == [0, 0, 0]


async def test_aclose_half_read_aborts_upstream(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers:
        fake.faults.chunk_delay = 0.05
    stream = await open_ok_stream(client, pool, chat_body(50, stream=True))
    async with stream:
        first = await anext(stream)
        assert first.startswith(b"data: ")
    assert in_flight(pool) == [0, 0, 0]
    target = servers[0] if stream.replica is pool.replicas[0] else servers[1]
    async with asyncio.timeout(2):
        await target.wait_cancelled()
    assert target.streams_finished == 0
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_cancelled_caller_aborts_upstream(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers:
        fake.faults.header_delay = 5.0
    task = asyncio.create_task(client.post(pool.route("fake-chat", "generate"), CHAT, chat_body()))
    await asyncio.sleep(0.1)
    assert sorted(in_flight(pool)) == [0, 0, 1]
    target = servers[in_flight(pool).index(1)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert in_flight(pool) == [0, 0, 0]
    async with asyncio.timeout(2):
        await target.wait_cancelled()


async def test_cancelled_while_iterating(http: HttpClient, servers: list[FakeVLLM]) -> None:
    client, pool = await make_client(http, servers)
    for fake in servers:
        fake.faults.chunk_delay = 0.5

    async def consume() -> None:
        stream = await open_ok_stream(client, pool, chat_body(10, stream=True))
        await drain(stream, [], close=False)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    target = servers[in_flight(pool).index(1)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert in_flight(pool) == [0, 0, 0]  # released even though nobody called aclose
    async with asyncio.timeout(2):
        await target.wait_cancelled()


async def test_connect_timeout_moves_on_without_marking_the_replica_down(
    http: HttpClient, servers: list[FakeVLLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overloaded replica that is slow to accept is skipped for this request, not for everyone."""
    client, pool = await make_client(http, servers)
    slow, live = pool.replicas[0], pool.replicas[1]
    live.in_flight = 1  # so the pool tries the slow replica first
    fail_requests_to(monkeypatch, http, slow, ConnectTimeoutError("connect timed out"))
    reply = await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    live.in_flight = 0
    assert reply.status == 200
    assert reply.replica is live
    assert slow.healthy, "a connect timeout alone must not take the replica out of rotation"
    monkeypatch.setattr(live, "healthy", False)
    with pytest.raises(EngineUnavailableError) as exc_info:  # the only one left times out: 503, still healthy
        await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    assert "connect timed out" in exc_info.value.message
    assert slow.healthy
    assert in_flight(pool) == [0, 0, 0]


async def test_a_local_connect_failure_does_not_take_the_replica_down(
    http: HttpClient, servers: list[FakeVLLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors is the gateway's own trouble: the request fails over, the replica stays in."""
    client, pool = await make_client(http, servers)
    first, second = pool.replicas[0], pool.replicas[1]
    second.in_flight = 1  # so the pool tries the first replica first
    fail_requests_to(monkeypatch, http, first, ConnectError("Too many open files", local=True))
    reply = await client.post(pool.route("fake-chat", "generate"), CHAT, chat_body())
    second.in_flight = 0
    assert reply.replica is second
    assert first.healthy
    assert in_flight(pool) == [0, 0, 0]
