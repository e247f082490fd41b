"""SIGTERM to a real ``tenantgate serve``: a stream still running when the drain time is nearly up ends with
an error event and ``data: [DONE]``, and its usage row says the server stopped it, with the tokens delivered."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import msgspec
import psycopg
import pytest

from tests.fakes.vllm import FakeVLLM
from tests.integration.conftest import ADMIN_KEY, free_port
from tests.integration.test_serve_process import stop, tenant_key, wait_ready

pytestmark = pytest.mark.slow


async def test_sigterm_ends_a_running_stream_with_an_error_event_and_meters_it(clean_database_url: str) -> None:
    fake = FakeVLLM(models=("fake-chat",))
    await fake.start()
    port = free_port()
    env = {
        **os.environ,
        "TENANTGATE_DATABASE_URL": clean_database_url,
        "TENANTGATE_ENGINE_URLS": fake.url,
        "TENANTGATE_ADMIN_KEY": ADMIN_KEY,
        "TENANTGATE_PORT": str(port),
        "TENANTGATE_SERVER": "uvicorn",
        "TENANTGATE_WORKERS": "1",
        "TENANTGATE_SHUTDOWN_TIMEOUT": "3",  # streams are ended 2 s after the signal
        "TENANTGATE_ENGINE_TOTAL_TIMEOUT": "60",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            tenant_id, key = await tenant_key(http, "sigterm-stream")
            fake.faults.chunk_delay = 0.1
            body = {"model": "fake-chat", "messages": [{"role": "user", "content": "a b c"}], "stream": True,
                    "max_tokens": 200}
            lines: list[str] = []
            async with http.stream("POST", "/v1/chat/completions", json=body,
                                   headers={"authorization": f"Bearer {key}"}) as resp:
                async for line in resp.aiter_lines():
                    if line:
                        lines.append(line.removeprefix("data: "))
                    if len(lines) == 3:
                        proc.send_signal(signal.SIGTERM)
        assert lines[-1] == "[DONE]"
        error = msgspec.json.decode(lines[-2])["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
        delivered = len(lines) - 3  # less the role chunk, the error event and [DONE]
        assert 3 <= delivered < 200
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        await stop(proc)
        await fake.stop()
    async with await psycopg.AsyncConnection.connect(clean_database_url) as conn:
        cur = await conn.execute(
            "SELECT status_code, error_code, end_reason, prompt_tokens, completion_tokens FROM usage_events"
            " WHERE tenant_id = %s", (tenant_id,),
        )
        assert await cur.fetchall() == [(503, "server_shutting_down", "server_shutdown", 3, delivered)]
