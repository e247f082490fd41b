"""Engines that are down, slow, return garbage or die mid-stream; clients that go away."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.vllm import FakeVLLM
from tests.integration.conftest import (
    CHAT_MODEL,
    Gateway,
    TenantKeys,
    free_port,
    gateway_settings,
    make_tenant,
    start_gateway,
    stop_gateway,
)
from tests.integration.test_openai_api import usage_rows

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


async def test_engine_down_is_503_and_recovers_when_back(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.user_key)
    await gateway.chat.stop()
    with pytest.raises(openai.InternalServerError) as exc:
        await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert exc.value.status_code == 503
    assert exc.value.code == "engine_unavailable"
    assert exc.value.response.headers["retry-after"] == "1"
    async with gateway.http() as http:
        assert (await http.get("/readyz")).status_code == 503
    await gateway.chat.start()
    await asyncio.sleep(gateway.services.settings.engine_health_interval * 3)
    answer = await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert answer.choices[0].message.content
    async with gateway.http() as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] is True


async def test_slow_engine_is_504(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.header_delay = gateway.services.settings.engine_first_byte_timeout + 1
    with pytest.raises(openai.APIStatusError) as exc:
        await gateway.openai(tenant.user_key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert exc.value.status_code == 504 and exc.value.code == "engine_timeout"
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[3], r[4]) for r in rows] == [(504, "engine_timeout")]


@pytest.mark.parametrize("stream", [False, True])
async def test_engine_garbage_is_502(gateway: Gateway, tenant: TenantKeys, stream: bool) -> None:
    gateway.chat.faults.garbage = True
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES,
                                                               "stream": stream})
    # a stream too: a 200 that is not text/event-stream is refused before the client got a byte
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "engine_bad_response"


async def test_engine_5xx_is_502_in_openai_shape(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.status = 500
    gateway.chat.faults.body = b'{"object": "error", "message": "CUDA out of memory", "type": "InternalServerError",' \
                               b' "param": null, "code": 500}'
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES})
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "server_error"
    assert "CUDA" not in resp.json()["error"]["message"]  # logged, not shown (see test_stream_metering)


async def test_engine_dies_mid_stream_gives_error_event_and_records_failure(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    gateway.chat.faults.die_after_chunks = 3
    stream = await gateway.openai(tenant.user_key).chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=10, stream=True
    )
    received: list[object] = []

    async def read_all() -> None:
        async for chunk in stream:
            received.append(chunk)

    with pytest.raises(openai.APIError) as exc:
        await read_all()
    assert len(received) == 3
    assert "engine" in exc.value.message.lower()
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[3], r[4]) for r in rows] == [(502, "engine_disconnected")]


async def test_vllm_error_inside_a_200_stream_is_normalized(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.error_after_chunks = 2
    gateway.chat.faults.error_code = 400
    gateway.chat.faults.error_message = "prompt too long"
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES,
                                                               "stream": True, "max_tokens": 10})
    events = [e.removeprefix("data: ") for e in resp.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    error = msgspec.json.decode(events[-2])
    assert error == {"error": {"message": "prompt too long", "type": "invalid_request_error", "param": None,
                               "code": None}}
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [r[3] for r in rows] == [400]


async def test_client_going_away_cancels_the_upstream_stream(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.chunk_delay = 0.2
    async with gateway.http(tenant.user_key) as http, http.stream("POST", "/v1/chat/completions", json={
        "model": CHAT_MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 50}) as resp:
        async for _line in resp.aiter_lines():
            break  # read one event, then hang up
    await asyncio.wait_for(gateway.chat.wait_cancelled(), 5)
    assert gateway.chat.cancelled == 1
    await asyncio.sleep(0.2)
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[3], r[4]) for r in rows] == [(499, "client_disconnected")]


async def test_client_going_away_cancels_a_non_streaming_request(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.header_delay = 1.5
    async with gateway.http(tenant.user_key) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES},
                            timeout=0.3)
    await asyncio.wait_for(gateway.chat.wait_cancelled(), 5)
    await asyncio.sleep(0.2)
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[3], r[4]) for r in rows] == [(499, "client_disconnected")]


async def test_connect_failure_is_retried_on_another_replica(database_url: str) -> None:
    live = FakeVLLM(models=(CHAT_MODEL,))
    dead = FakeVLLM(models=(CHAT_MODEL,))
    embed = FakeVLLM(models=("fake-embed",), purpose="embed")
    for fake in (live, dead, embed):
        await fake.start()
    settings = gateway_settings(database_url, live.url, embed.url, port=free_port(),
                                engine_urls=(dead.url, live.url), engine_health_interval=60.0)
    app, server, task = await start_gateway(settings)
    try:
        from tests.integration.conftest import Gateway as Gw

        gw = Gw(f"http://127.0.0.1:{settings.port}", app, live, embed)
        keys = await make_tenant(gw)
        await dead.stop()  # the pool still thinks it is healthy: the health loop is slow here
        client = gw.openai(keys.user_key)
        for _ in range(4):
            answer = await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
            assert answer.choices[0].message.content
        assert live.request_count == 4
    finally:
        await stop_gateway(server, task)
        for fake in (live, embed):
            await fake.stop()


async def test_an_engine_that_closes_on_a_request_gets_it_once_and_stays_in_rotation(database_url: str) -> None:
    """A request that crashes an engine must not be replayed on the others: one POST, a 502, no replica down."""
    chats = [FakeVLLM(models=(CHAT_MODEL,)) for _ in range(3)]
    embed = FakeVLLM(models=("fake-embed",), purpose="embed")
    for fake in (*chats, embed):
        await fake.start()
    settings = gateway_settings(database_url, chats[0].url, embed.url, port=free_port(),
                                engine_urls=tuple(fake.url for fake in chats))
    app, server, task = await start_gateway(settings)
    try:
        gw = Gateway(f"http://127.0.0.1:{settings.port}", app, chats[0], embed)
        keys = await make_tenant(gw)
        for fake in chats:
            fake.faults.drop_requests = 1
        for stream in (False, True):
            async with gw.http(keys.user_key) as http:
                resp = await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES,
                                                                       "stream": stream})
            assert resp.status_code == 502
            assert resp.json()["error"]["code"] == "engine_disconnected"
        assert sorted(fake.request_count for fake in chats) == [0, 1, 1]  # each request reached one engine, once
        assert [r.healthy for r in gw.services.engines.replicas] == [True, True, True, True]
        rows = await usage_rows(gw, keys.tenant_id)
        assert [(r[3], r[4]) for r in rows] == [(502, "engine_disconnected")] * 2
    finally:
        await stop_gateway(server, task)
        for fake in (*chats, embed):
            await fake.stop()


async def test_a_200_stream_that_is_not_sse_is_not_relayed(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.status = 200
    gateway.chat.faults.content_type = "text/plain"
    gateway.chat.faults.body = b"upstream says hello\n\n"
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES,
                                                               "stream": True})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "engine_bad_response"
    assert "hello" not in resp.text
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[3], r[4]) for r in rows] == [(502, "engine_bad_response")]


async def test_client_gone_before_the_disconnect_watcher_starts_still_cancels(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    """The watcher starts WATCH_DISCONNECT_AFTER_S into a request; a client that left sooner is still seen."""
    from gateway.routes.common import WATCH_DISCONNECT_AFTER_S

    gateway.chat.faults.header_delay = 1.5
    async with gateway.http(tenant.user_key) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES},
                            timeout=WATCH_DISCONNECT_AFTER_S / 5)
    await asyncio.wait_for(gateway.chat.wait_cancelled(), 1.0)  # long before the engine's 1.5 s answer
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[3], r[4]) for r in rows] == [(499, "client_disconnected")]


async def test_absurd_token_counts_from_the_engine_are_clamped_not_wrapped(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    """An engine that reports 2**40 tokens (or a negative count) still leaves one honest usage row."""
    gateway.chat.faults.status = 200
    gateway.chat.faults.body = msgspec.json.encode({
        "id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": CHAT_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": -7, "completion_tokens": 2**40 + 5, "total_tokens": 2**40},
    })
    answer = await gateway.openai(tenant.user_key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert answer.choices[0].message.content == "hi"
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[3], r[5], r[6]) for r in rows] == [(200, 0, 2**31 - 1)]
    assert gateway.services.meter.rejected == 0
