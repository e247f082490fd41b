"""``tenantgate serve`` as its own process: graceful stop drains in-flight requests and flushes usage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from tests.fakes.vllm import FakeVLLM
from tests.integration.conftest import ADMIN_KEY, free_port

pytestmark = pytest.mark.slow


async def wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if proc.returncode is not None:
                raise AssertionError(f"tenantgate serve exited with {proc.returncode}")
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("gateway did not become ready")


async def start_serve(database_url: str, engine_url: str, server: str) -> tuple[str, asyncio.subprocess.Process]:
    port = free_port()
    env = {
        **os.environ,
        "TENANTGATE_DATABASE_URL": database_url,
        "TENANTGATE_ENGINE_URLS": engine_url,
        "TENANTGATE_ADMIN_KEY": ADMIN_KEY,
        "TENANTGATE_PORT": str(port),
        "TENANTGATE_SERVER": server,
        "TENANTGATE_WORKERS": "1",
        "TENANTGATE_USAGE_FLUSH_INTERVAL": "30",  # nothing is flushed before the stop
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    await wait_ready(url, proc)
    return url, proc


async def tenant_key(http: httpx.AsyncClient, name: str) -> tuple[str, str]:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    tenant = (await http.post("/admin/tenants", json={"name": name}, headers=admin)).json()
    key = (await http.post(f"/admin/tenants/{tenant['id']}/keys", json={"role": "user"}, headers=admin)).json()
    return tenant["id"], key["key"]


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM first: a SIGKILLed Granian main process would leave its worker processes behind."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def served(database_url: str, server: str) -> AsyncIterator[tuple[FakeVLLM, str, asyncio.subprocess.Process]]:
    """A fake engine and a ``tenantgate serve`` process in front of it, both stopped afterwards."""
    fake = FakeVLLM(models=("fake-chat",))
    await fake.start()
    proc = None
    try:
        url, proc = await start_serve(database_url, fake.url, server)
        yield fake, url, proc
    finally:
        if proc is not None:
            await stop(proc)
        await fake.stop()


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
async def test_sigterm_drains_in_flight_request_and_flushes_usage(clean_database_url: str, server: str) -> None:
    async with served(clean_database_url, server) as (fake, url, proc):
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            tenant_id, key = await tenant_key(http, f"drain-{server}")
            fake.faults.header_delay = 1.5
            in_flight = asyncio.create_task(http.post(
                "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                json={"model": "fake-chat", "messages": [{"role": "user", "content": "slow"}]},
            ))
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            resp = await in_flight
        assert resp.status_code == 200, resp.text
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    async with await psycopg.AsyncConnection.connect(clean_database_url) as conn:
        cur = await conn.execute("SELECT status_code FROM usage_events WHERE tenant_id = %s", (tenant_id,))
        assert await cur.fetchall() == [(200,)]


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
async def test_client_disconnect_cancels_upstream_under_each_server(clean_database_url: str, server: str) -> None:
    async with (
        served(clean_database_url, server) as (fake, url, _proc),
        httpx.AsyncClient(base_url=url, timeout=20) as http,
    ):
        _, key = await tenant_key(http, f"gone-{server}")
        fake.faults.chunk_delay = 0.2
        body = {"model": "fake-chat", "messages": [{"role": "user", "content": "x"}], "stream": True,
                "max_tokens": 50}
        async with http.stream("POST", "/v1/chat/completions", json=body,
                               headers={"authorization": f"Bearer {key}"}) as resp:
            async for _line in resp.aiter_lines():
                break
        await asyncio.wait_for(fake.wait_cancelled(), 5)
        fake.reset()
        fake.faults.header_delay = 1.0
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json={**body, "stream": False}, timeout=0.3,
                            headers={"authorization": f"Bearer {key}"})
        await asyncio.wait_for(fake.wait_cancelled(), 5)
