"""``tenantgate serve`` as its own process: graceful stop drains in-flight requests and flushes usage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
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


CONFIG_ADMIN_KEY = "sk-tgadmin-" + "c" * 52  # only in the config file


async def read_to_close(reader: asyncio.StreamReader, within: float = 10.0) -> bytes | None:
    """What the gateway still sends before it closes the connection, or None if it is still open after
    ``within`` seconds (a bound on the wait, not a measure)."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_config_file_reaches_the_worker_and_every_line_follows_the_log_format(
    clean_database_url: str, tmp_path: Path, log_format: str
) -> None:
    """``tenantgate --config FILE serve``: the worker honours the file (admin key, body limit, connection
    bounds), and every line the process writes follows TENANTGATE_LOG_FORMAT without a key in it."""
    config = tmp_path / "tenantgate.toml"
    config.write_text(
        f'admin_key = "{CONFIG_ADMIN_KEY}"\nmax_body_bytes = 2048\nheader_read_timeout = 0.5\n'
        f'keep_alive_timeout = 0.5\nmax_connections = 6\nmax_header_bytes = 16384\nlog_format = "{log_format}"\n'
    )
    fake = FakeVLLM(models=("fake-chat",))
    await fake.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTGATE_")}
    env.update({"TENANTGATE_DATABASE_URL": clean_database_url, "TENANTGATE_ENGINE_URLS": fake.url,
                "TENANTGATE_PORT": str(port)})
    out, err = (tmp_path / "stdout").open("wb"), (tmp_path / "stderr").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(config), "serve", env=env, stdout=out, stderr=err,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            admin = {"authorization": f"Bearer {CONFIG_ADMIN_KEY}"}
            tenant = await http.post("/admin/tenants", json={"name": "from-file"}, headers=admin)
            assert tenant.status_code == 201, tenant.text
            created = await http.post(f"/admin/tenants/{tenant.json()['id']}/keys", json={"role": "user"},
                                      headers=admin)
            key = created.json()["key"]
            auth = {"authorization": f"Bearer {key}"}
            big = {"model": "fake-chat", "messages": [{"role": "user", "content": "x" * 4096}]}
            assert (await http.post("/v1/chat/completions", json=big, headers=auth)).status_code == 413
            fake.faults.status = 500  # logged with the request's id; the key in it redacted
            fake.faults.body = f'{{"detail": "Authorization: Bearer {key}"}}'.encode()
            bad = await http.post("/v1/chat/completions", headers=auth,
                                  json={"model": "fake-chat", "messages": [{"role": "user", "content": "x"}]})
            assert bad.status_code == 502
            fake.reset()
            huge = await http.get("/healthz", headers={"x-big": "a" * (1024 * 1024)})
            assert huge.status_code == 431
            assert (await http.get("/healthz")).status_code == 200

        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)  # never sends a byte
        assert await read_to_close(silent_r) == b""
        kept_r, kept_w = await asyncio.open_connection("127.0.0.1", port)
        kept_w.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await kept_r.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        assert await read_to_close(kept_r) is not None  # idle after its answer
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
        extra_r, extra_w = await asyncio.open_connection("127.0.0.1", port)
        assert await read_to_close(extra_r, within=0.4) == b""  # at once, before the held ones time out
        for writer in (silent_w, kept_w, extra_w, *(w for _, w in held)):
            writer.close()
    finally:
        await stop(proc)
        await fake.stop()
        out.close()
        err.close()

    lines = [line for name in ("stdout", "stderr") for line in (tmp_path / name).read_text().splitlines()]
    text = "\n".join(lines)
    assert CONFIG_ADMIN_KEY not in text and key not in text
    assert "uvicorn" in text  # uvicorn's own lines are there, in our format
    request_id = bad.headers["x-request-id"]
    if log_format == "json":
        records = [msgspec.json.decode(line) for line in lines]  # every line is one JSON object
        assert all({"ts", "level", "logger", "message"} <= record.keys() for record in records)
        assert any(r["logger"].startswith("uvicorn") for r in records)
        assert any(r.get("request_id") == request_id for r in records)
    else:
        stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+ ")
        assert all(stamp.match(line) for line in lines if not line.startswith((" ", "Traceback"))), lines
        assert any(f"[{request_id}]" in line for line in lines)
