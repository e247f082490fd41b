"""A Postgres outage and restart, on a server of this module's own (the session's is never stopped).

While the database is down: keys known valid keep working from the cache, anything that needs the
database answers 503 with Retry-After within the pool timeout, and one line says so. Once it is back the
gateway works again within seconds, a key revoked meanwhile is refused, and a restart fails no request.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.errors import DatabaseUnavailableError
from gateway.db.migrations import upgrade
from gateway.db.pool import open_pool
from tests.fakes.vllm import FakeVLLM
from tests.integration.conftest import (
    CHAT_MODEL,
    Gateway,
    free_port,
    gateway_settings,
    make_tenant,
    start_gateway,
    stop_gateway,
)

POOL_TIMEOUT = 1.0
CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    root = Path(tempfile.mkdtemp(prefix="tenantgate-outage-pg-"))
    pg = EmbeddedPostgres(root / "data")
    asyncio.run(upgrade(pg.start()))
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _stop(pg: EmbeddedPostgres) -> None:
    await asyncio.to_thread(pg.stop)


async def _start(pg: EmbeddedPostgres) -> None:
    await asyncio.to_thread(pg.start)


@pytest.fixture
async def outage_gateway(
    server: EmbeddedPostgres, fakes: tuple[FakeVLLM, FakeVLLM]
) -> AsyncIterator[Gateway]:
    chat, embed = fakes
    settings = gateway_settings(
        server.url, chat.url, embed.url, port=free_port(), auth_cache_ttl=0.3, db_pool_timeout=POOL_TIMEOUT,
        db_pool_min=2, db_pool_max=4,
    )
    app, uv, task = await start_gateway(settings)
    try:
        yield Gateway(f"http://127.0.0.1:{settings.port}", app, chat, embed)
    finally:
        if not _reachable(server.url):
            await _start(server)  # a failed test must not leave the next one without its database
        await stop_gateway(uv, task)


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _is_503(resp: httpx.Response) -> bool:
    return (
        resp.status_code == 503 and resp.headers.get("retry-after") == "1"
        and resp.json()["error"]["code"] == "database_unavailable"
        and resp.json()["error"]["type"] == "server_error"
    )


async def test_outage_known_keys_work_others_get_503_and_recovery_takes_seconds(
    server: EmbeddedPostgres, outage_gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gw = outage_gateway
    tenant = await make_tenant(gw)
    async with gw.admin() as admin:
        extra = (await admin.post(f"/admin/tenants/{tenant.tenant_id}/keys", json={"role": "user"})).json()
    doomed = extra["key"]
    unknown = "sk-tg-" + "u" * 12 + "-" + "s" * 40
    async with gw.http(tenant.user_key) as user, gw.http(doomed) as other, gw.http(tenant.admin_key) as tadmin:
        assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await other.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await tadmin.get("/v1/usage")).status_code == 200
        # Another replica revokes one key: this one's cache does not know yet.
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (extra["id"],))

        caplog.set_level(logging.INFO, logger="gateway.db.pool")
        await _stop(server)
        await asyncio.sleep(0.4)  # every cache entry is now older than the TTL

        # Known keys keep working (the engine needs no database); usage waits in the meter.
        for _ in range(3):
            assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
            assert (await other.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # What needs the database answers 503 with Retry-After, within the pool timeout (client: 10 s).
        async with gw.http(unknown) as stranger:
            assert _is_503(await stranger.post("/v1/chat/completions", json=CHAT))
            assert _is_503(await stranger.get("/v1/models"))
        async with gw.admin() as admin:
            assert _is_503(await admin.get("/admin/tenants"))
            assert _is_503(await admin.post("/admin/tenants", json={"name": "during-outage"}))
        assert _is_503(await tadmin.get("/v1/usage"))

        await _start(server)
        # Working again within seconds; the key revoked meanwhile is refused once the database answers.
        revoked_status = None
        async with gw.admin() as admin:
            for _ in range(50):
                admin_status = (await admin.get("/admin/tenants")).status_code
                revoked_status = (await other.post("/v1/chat/completions", json=CHAT)).status_code
                if admin_status == 200 and revoked_status == 401:
                    break
                await asyncio.sleep(0.1)
        assert revoked_status == 401
        assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
        async with gw.http(unknown) as stranger:
            assert (await stranger.get("/v1/models")).status_code == 401

    lines = [r for r in caplog.records if r.name == "gateway.db.pool"]
    assert [r.levelname for r in lines] == ["WARNING", "INFO"], [r.getMessage() for r in lines]
    assert "unavailable" in lines[0].getMessage() and "available again" in lines[1].getMessage()


async def test_a_restart_fails_no_request_and_the_pool_recovers(server: EmbeddedPostgres) -> None:
    pool = await open_pool(server.url, min_size=3, max_size=3, acquire_timeout=POOL_TIMEOUT)
    try:
        await _use_every_connection(pool)
        await _stop(server)
        with pytest.raises(DatabaseUnavailableError):
            await _select(pool)
        await _start(server)
        for _ in range(6):
            assert await _select(pool) == 1

        # A restart between two requests: every idle connection died with the old server; each is found
        # dead and replaced, none is handed out.
        await _use_every_connection(pool)
        await _stop(server)
        await _start(server)
        for _ in range(6):
            assert await _select(pool) == 1
    finally:
        await pool.close()


async def _use_every_connection(pool: AsyncConnectionPool) -> None:
    """Three connections in use at once, then idle in the pool."""
    async with asyncio.TaskGroup() as tg:
        for _ in range(3):
            tg.create_task(_select(pool, sleep=0.05))


async def _select(pool: AsyncConnectionPool, sleep: float = 0.0) -> int:
    async with pool.connection() as conn:
        if sleep:
            await conn.execute("SELECT pg_sleep(%s)", (sleep,))
        cur = await conn.execute("SELECT 1")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])
