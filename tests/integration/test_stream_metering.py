"""Every call is metered with what was delivered and how it ended: streams cut short by the client, the
engine or a shutdown, requests refused after authentication; engine failures are logged, not shown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from observability.context import get_request_id
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

MESSAGES = [{"role": "user", "content": "hello there"}]
PROMPT_TOKENS = 2  # the fake counts words


async def rows(gw: Gateway, tenant_id: str) -> list[dict[str, Any]]:
    await gw.services.meter.flush()
    async with gw.services.db.connection() as conn:
        cur = await conn.execute(
            "SELECT model, stream, status_code, error_code, prompt_tokens, completion_tokens, end_reason"
            " FROM usage_events WHERE tenant_id = %s ORDER BY id",
            (tenant_id,),
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


def events_of(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e]


def stream_body(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True, "max_tokens": max_tokens, **extra}


async def test_a_client_that_hangs_up_before_the_usage_chunk_is_billed_what_it_received(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    gateway.chat.faults.chunk_delay = 0.05
    received = 0
    async with gateway.http(tenant.user_key) as http, http.stream(
        "POST", "/v1/chat/completions", json=stream_body(5)
    ) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                chunk = msgspec.json.decode(line[6:])
                assert "usage" not in chunk  # running usage is the gateway's, not this client's
                received += 1
                if chunk["choices"][0]["finish_reason"]:
                    break  # the whole answer read; gone before the usage chunk and [DONE]
    assert received == 6  # the role chunk and five words
    await asyncio.wait_for(gateway.chat.wait_cancelled(), 5)
    await asyncio.sleep(0.1)
    assert await rows(gateway, tenant.tenant_id) == [{
        "model": CHAT_MODEL, "stream": True, "status_code": 499, "error_code": "client_disconnected",
        "prompt_tokens": PROMPT_TOKENS, "completion_tokens": 5, "end_reason": "client_disconnected",
    }]


async def test_a_stream_the_engine_breaks_is_billed_the_tokens_delivered(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.die_after_chunks = 4  # the role chunk and three words
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json=stream_body(10))
    events = events_of(resp.text)
    assert events[-1] == "[DONE]" and msgspec.json.decode(events[-2])["error"]["code"] == "engine_disconnected"
    assert len(events) == 6
    [row] = await rows(gateway, tenant.tenant_id)
    assert (row["status_code"], row["end_reason"]) == (502, "engine_error")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (PROMPT_TOKENS, 3)


async def test_a_completed_stream_is_billed_and_marked_completed(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": "one two three",
                                                         "stream": True, "max_tokens": 4})
    assert events_of(resp.text)[-1] == "[DONE]"
    assert await rows(gateway, tenant.tenant_id) == [{
        "model": CHAT_MODEL, "stream": True, "status_code": 200, "error_code": None, "prompt_tokens": 3,
        "completion_tokens": 4, "end_reason": "completed",
    }]


@pytest.mark.parametrize(
    ("options", "usage_on"),
    [
        (None, "none"),
        ({}, "none"),
        ({"include_usage": True}, "final"),
        ({"include_usage": True, "continuous_usage_stats": True}, "every"),
    ],
)
async def test_each_client_sees_the_usage_it_asked_for(
    gateway: Gateway, tenant: TenantKeys, options: dict[str, bool] | None, usage_on: str
) -> None:
    extra = {} if options is None else {"stream_options": options}
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json=stream_body(3, **extra))
    sent = msgspec.json.decode(gateway.chat.last_body or b"{}")
    assert sent["stream_options"] == {**(options or {}), "include_usage": True, "continuous_usage_stats": True}
    chunks = [msgspec.json.decode(e) for e in events_of(resp.text)[:-1]]
    with_usage = ["usage" in c for c in chunks]
    expected = {"none": [False] * 4, "final": [False] * 4 + [True], "every": [True] * 5}[usage_on]
    assert with_usage == expected
    if usage_on != "none":
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_an_out_of_range_number_beside_stream_options_reaches_the_engine_untouched(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    """The include_usage splice once re-decoded the whole body and answered 500 for `1e999`."""
    raw = b'{"model":"fake-chat","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{},' \
          b'"temperature":1e999}'
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    # the fake engine cannot read 1e999 either and says so (400); what matters is that the gateway forwarded it
    assert resp.status_code == 400, resp.text
    assert b'"temperature":1e999' in (gateway.chat.last_body or b"")


async def test_requests_refused_after_authentication_are_metered(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http(tenant.user_key) as http:
        bad_body = await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": []})
        no_json = await http.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
        unknown_model = await http.post("/v1/chat/completions", json={"model": "gpt-nope-" + "x" * 40,
                                                                       "messages": MESSAGES})
        too_large = await http.post("/v1/embeddings", content=b"x" * (80 * 1024),
                                    headers={"content-type": "application/json"})
        not_json = await http.post("/v1/completions", content=b"hi", headers={"content-type": "text/plain"})
    statuses = [r.status_code for r in (bad_body, no_json, unknown_model, too_large, not_json)]
    assert statuses == [400, 400, 404, 413, 415]
    got = await rows(gateway, tenant.tenant_id)
    assert [(r["status_code"], r["model"], r["end_reason"]) for r in got] == [
        (400, "unknown", "rejected"), (400, "unknown", "rejected"), (404, "unknown", "rejected"),
        (413, "unknown", "rejected"), (415, "unknown", "rejected"),
    ]
    assert [r["error_code"] for r in got][2:] == ["model_not_found", "payload_too_large", "unsupported_media_type"]
    assert all(r["prompt_tokens"] == r["completion_tokens"] == 0 for r in got)


async def test_an_unauthenticated_request_leaves_no_usage_row(gateway: Gateway) -> None:
    async def count() -> object:
        await gateway.services.meter.flush()
        async with gateway.services.db.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM usage_events")
            return await cur.fetchone()

    before = await count()
    async with gateway.http("sk-tg-AAAAAAAAAAAA-" + "B" * 40) as http:
        assert (await http.post("/v1/chat/completions", json={"model": "x", "messages": []})).status_code == 401
    assert await count() == before


class _Capture(logging.Handler):
    """Records each message with the request id current when it was logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), get_request_id()))


@pytest.fixture
def captured() -> Iterator[_Capture]:
    handler = _Capture()
    logger = logging.getLogger("gateway.services")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_an_engine_5xx_body_is_logged_redacted_and_the_tenant_sees_a_neutral_message(
    gateway: Gateway, tenant: TenantKeys, captured: _Capture
) -> None:
    gateway.chat.faults.status = 500
    gateway.chat.faults.body = (
        b'{"object": "error", "message": "CUDA out of memory on http://admin:hunter2@10.0.0.5/x",'
        b' "type": "InternalServerError", "param": null, "code": 500}'
    )
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES})
    request_id = resp.headers["x-request-id"]
    assert resp.status_code == 502
    assert resp.json() == {"error": {
        "message": f"The engine failed to process the request (request id {request_id}).", "type": "server_error",
        "param": None, "code": "engine_error"}}
    logged = [(m, rid) for m, rid in captured.seen if "CUDA out of memory" in m]
    assert len(logged) == 1 and logged[0][1] == request_id
    assert "hunter2" not in logged[0][0] and "500" in logged[0][0]
    [row] = await rows(gateway, tenant.tenant_id)
    assert (row["status_code"], row["error_code"], row["end_reason"]) == (502, "engine_error", "engine_error")


async def test_an_engine_error_inside_a_stream_is_neutral_for_the_tenant_and_logged(
    gateway: Gateway, tenant: TenantKeys, captured: _Capture
) -> None:
    gateway.chat.faults.error_after_chunks = 2
    gateway.chat.faults.error_message = "worker 3 died: segfault in /opt/vllm"
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json=stream_body(10))
    error = msgspec.json.decode(events_of(resp.text)[-2])["error"]
    assert error["code"] == "engine_error" and "segfault" not in error["message"]
    assert resp.headers["x-request-id"] in error["message"]
    assert any("segfault" in m and rid == resp.headers["x-request-id"] for m, rid in captured.seen)


async def test_an_engine_event_without_end_is_capped_with_an_error_event(gateway: Gateway, tenant: TenantKeys) -> None:
    cap = gateway.services.settings.engine_max_event_bytes
    gateway.chat.faults.stream_body = b"data: " + b"x" * (cap + 1024)  # no blank line, ever
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json=stream_body(3))
    events = events_of(resp.text)
    assert events[-1] == "[DONE]" and len(events) == 2
    assert msgspec.json.decode(events[0])["error"]["code"] == "engine_bad_response"
    [row] = await rows(gateway, tenant.tenant_id)
    assert (row["status_code"], row["end_reason"]) == (502, "engine_error")


async def test_streams_still_running_when_the_drain_time_is_nearly_up_end_with_an_error_event(
    database_url: str, gateway: Gateway
) -> None:
    """In process: `begin()` is what the SIGTERM hook calls (see test_shutdown_streams for the signal)."""
    settings = gateway_settings(database_url, gateway.chat.url, gateway.embed.url, port=free_port(),
                                shutdown_timeout=1.0, engine_total_timeout=30.0)
    app, server, task = await start_gateway(settings)
    try:
        gw = Gateway(f"http://127.0.0.1:{settings.port}", app, gateway.chat, gateway.embed)
        keys = await make_tenant(gw)
        gw.chat.faults.chunk_delay = 0.1
        lines: list[str] = []
        async with gw.http(keys.user_key) as http, http.stream(
            "POST", "/v1/chat/completions", json=stream_body(100)
        ) as resp:
            async for line in resp.aiter_lines():
                if line:
                    lines.append(line.removeprefix("data: "))
                if len(lines) == 3:
                    gw.services.shutdown.begin()  # streams are ended 0.5 s from now
        assert lines[-1] == "[DONE]"
        assert msgspec.json.decode(lines[-2])["error"]["code"] == "server_shutting_down"
        delivered = len(lines) - 3  # less the role chunk, the error event and [DONE]
        assert 3 <= delivered < 20
        assert await rows(gw, keys.tenant_id) == [{
            "model": CHAT_MODEL, "stream": True, "status_code": 503, "error_code": "server_shutting_down",
            "prompt_tokens": PROMPT_TOKENS, "completion_tokens": delivered, "end_reason": "server_shutdown",
        }]
        await asyncio.wait_for(gw.chat.wait_cancelled(), 5)  # the engine was told to stop generating
    finally:
        await stop_gateway(server, task)


async def test_a_stream_that_starts_after_the_cut_ends_after_its_first_chunk(
    database_url: str, gateway: Gateway
) -> None:
    settings = gateway_settings(database_url, gateway.chat.url, gateway.embed.url, port=free_port(),
                                shutdown_timeout=0.02)
    app, server, task = await start_gateway(settings)
    try:
        gw = Gateway(f"http://127.0.0.1:{settings.port}", app, gateway.chat, gateway.embed)
        keys = await make_tenant(gw)
        gw.chat.faults.chunk_delay = 0.05
        gw.services.shutdown.begin()
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=gw.url, timeout=10,
                                     headers={"authorization": f"Bearer {keys.user_key}"}) as http:
            resp = await http.post("/v1/chat/completions", json=stream_body(50))
        events = events_of(resp.text)
        assert events[-1] == "[DONE]" and msgspec.json.decode(events[-2])["error"]["code"] == "server_shutting_down"
        assert len(events) <= 4
    finally:
        await stop_gateway(server, task)
