"""The server protocol's bounds (gateway/http_protocol.py): head size, head time, idle time, connection count.

uvicorn runs in this event loop with the protocol ``tenantgate serve`` uses, in front of a tiny ASGI app;
raw sockets play the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from gateway.http_protocol import BoundedConfig, BoundedHttpToolsProtocol, ConnectionLimits
from tests.integration.conftest import free_port

GET = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


@contextlib.asynccontextmanager
async def server(**limits: Any) -> AsyncIterator[int]:
    port = free_port()
    keep_alive = limits.pop("keep_alive", 5)
    app = limits.pop("app", hello)
    config = BoundedConfig(
        app, limits=ConnectionLimits(**limits), host="127.0.0.1", port=port, http=BoundedHttpToolsProtocol,
        lifespan="off", log_config=None, access_log=False, timeout_keep_alive=keep_alive,
    )
    srv = uvicorn.Server(config)
    srv.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.get_running_loop().create_task(srv.serve())
    while not srv.started:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 10)


async def closed_by_server(reader: asyncio.StreamReader, within: float = 10.0) -> bool:
    """True when the server closes the connection (EOF) within ``within`` seconds (a bound, not a measure)."""
    try:
        rest = await asyncio.wait_for(reader.read(), within)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return rest == b""


async def get(port: int) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/")).status_code


async def test_a_1_mib_head_is_answered_431_and_others_are_served() -> None:
    async with server(max_header_bytes=64 * 1024) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (1024 * 1024) + b"\r\n\r\n"

        async def send_all() -> None:
            with contextlib.suppress(ConnectionError):
                for start in range(0, len(head), 64 * 1024):
                    writer.write(head[start : start + 64 * 1024])
                    await writer.drain()

        sender = asyncio.create_task(send_all())
        answer = await asyncio.wait_for(reader.read(), 10)
        await sender
        writer.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
        body = msgspec.json.decode(rest.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == "request_header_fields_too_large"
        assert b"connection: close" in rest
        assert await get(port) == 200


async def test_a_head_just_under_the_limit_is_served() -> None:
    async with server(max_header_bytes=8 * 1024) as port:
        async with httpx.AsyncClient() as http:
            ok = await http.get(f"http://127.0.0.1:{port}/", headers={"x-pad": "a" * 7000})
            big = await http.get(f"http://127.0.0.1:{port}/", headers={"x-pad": "a" * 9000})
        assert ok.status_code == 200
        assert big.status_code == 431


async def test_a_body_after_a_small_head_is_not_counted_as_head() -> None:
    async with server(max_header_bytes=1024) as port:
        async with httpx.AsyncClient() as http:
            resp = await http.post(f"http://127.0.0.1:{port}/", content=b"x" * (1024 * 1024))
        assert resp.status_code == 200


async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers after 1 s, as an engine's long prefill does."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(1.0)
    await hello(scope, receive, send)


async def test_a_request_that_takes_longer_than_the_head_timeout_to_answer_is_answered() -> None:
    # The whole request in one read (head and body), then an answer that takes longer than the head timeout:
    # the head timer must not start again once the request is read (it closed such connections unanswered).
    async with server(app=slow, header_read_timeout=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        answer = await asyncio.wait_for(reader.read(1024), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")


async def test_connections_that_send_nothing_or_never_end_their_head_are_closed() -> None:
    async with server(header_read_timeout=0.3) as port:
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
        partial_r, partial_w = await asyncio.open_connection("127.0.0.1", port)
        partial_w.write(b"GET / HTTP/1.1\r\nhost: x\r\n")
        assert await closed_by_server(silent_r)
        assert await closed_by_server(partial_r)
        for w in (silent_w, partial_w):
            w.close()
        assert await get(port) == 200


async def test_a_head_sent_a_byte_at_a_time_is_cut_off() -> None:
    async with server(header_read_timeout=0.3) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        eof = asyncio.create_task(closed_by_server(reader))
        writer.write(b"GET / HTTP/1.1\r\nx-drip: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(100):  # 10 s of dripping at most
                if eof.done():
                    break
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.1)
        assert await eof
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with server(keep_alive=0.3, header_read_timeout=60) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        answer = await reader.readuntil(b"hello")
        assert answer.startswith(b"HTTP/1.1 200")
        assert await closed_by_server(reader)
        writer.close()


async def test_connections_beyond_the_cap_are_closed_at_once_and_later_ones_served() -> None:
    async with server(max_connections=4, header_read_timeout=60) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        assert await get(port) == 200  # a fourth, under the cap
        fourth = await asyncio.open_connection("127.0.0.1", port)
        extra_r, extra_w = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(extra_r)  # without an answer: nothing was read
        assert not await closed_by_server(idle[0][0], within=0.2)  # the ones held are untouched
        for _, w in [*idle, fourth]:
            w.close()
            await w.wait_closed()
        for _ in range(100):  # the server sees the closes shortly
            with contextlib.suppress(httpx.TransportError):
                if await get(port) == 200:
                    break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the cap did not free up after the idle connections closed")
        extra_w.close()
