"""``tenantgate worker`` as a process, the queue's schema under concurrent upgrades, and the embedder's bad paths."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from gateway.db.migrations import upgrade
from retrieval.errors import EmbeddingFailed, EmbeddingUnavailable
from tests.integration.conftest import Gateway, TenantKeys, free_port, gateway_settings, start_gateway, stop_gateway
from tests.integration.test_ingestion import (
    MARKDOWN,
    Env,
    add_file,
    add_store,
    attach,
    env,  # noqa: F401  # the fixture
    minilm_tokenizer,
)


async def test_tenantgate_worker_processes_a_job_and_stops_on_sigterm(env: Env) -> None:  # noqa: F811
    from gateway.ingestion import build_ingestion

    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    submitter = build_ingestion(db_url=env.url, pool=env.pool, embedder=env.embedder)  # a gateway without worker
    await submitter.open()
    try:
        await submitter.queue.submit(env.tenant, vs_id, [file_id])
    finally:
        await submitter.close()
    process_env = {
        **os.environ,
        "TENANTGATE_DATABASE_URL": env.url,
        "TENANTGATE_EMBEDDING_URLS": env.fake.url,
        "TENANTGATE_EMBEDDING_TOKENIZER": minilm_tokenizer(),
        "TENANTGATE_USAGE_FLUSH_INTERVAL": "0.1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "worker", env=process_env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            while (await env.row(vs_id, file_id))["status"] == "in_progress":
                assert proc.returncode is None, "the worker exited"
                await asyncio.sleep(0.1)
        assert (await env.row(vs_id, file_id))["status"] == "completed"
        assert await env.chunks(vs_id, file_id)
    finally:
        proc.terminate()
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    async with env.pool.connection() as conn:  # the process metered its embeddings before it stopped
        cur = await conn.execute(
            "SELECT count(*) FROM usage_events WHERE request_id = %s", (f"ingest-{vs_id}-{file_id}",)
        )
        row = await cur.fetchone()
    assert row is not None and row[0] >= 1


def _other_database(url: str, name: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)


def test_many_replicas_upgrading_a_fresh_database_at_once_install_the_queue_once(database_url: str) -> None:
    name = f"tg_upgrade_{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = _other_database(database_url, name)
    try:
        async def replicas() -> list[list[int]]:
            return list(await asyncio.gather(*(upgrade(url) for _ in range(4))))

        applied = asyncio.run(replicas())
        assert sorted(len(a) for a in applied)[:3] == [0, 0, 0] and max(len(a) for a in applied) > 0
        assert asyncio.run(upgrade(url)) == []
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT library FROM queue_schema").fetchall()
            assert rows == [("procrastinate",)]
            assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone() == (0,)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def _usage(ingest_env: Env) -> list[tuple[Any, ...]]:
    async with asyncio.timeout(10):
        while True:
            async with ingest_env.pool.connection() as conn:
                cur = await conn.execute("SELECT status_code, error_code, prompt_tokens, key_id FROM usage_events")
                rows = list(await cur.fetchall())
            if rows:
                return rows
            await asyncio.sleep(0.05)


async def test_an_input_the_engine_refuses_is_embedding_failed_and_metered(env: Env) -> None:  # noqa: F811
    with pytest.raises(EmbeddingFailed, match="maximum context length"):
        await env.embedder.embed(["word " * 300], tenant_id=env.tenant, key_id=None, purpose="search")
    assert await _usage(env) == [(502, "embedding_failed", 0, uuid.UUID(int=0))]


async def test_an_engine_down_is_embedding_unavailable_and_metered(env: Env) -> None:  # noqa: F811
    await env.fake.stop()
    await env.embedder._engines.refresh()  # the pool notices
    with pytest.raises(EmbeddingUnavailable):
        await env.embedder.embed(["hello"], tenant_id=env.tenant, key_id=env.key, purpose="search")
    assert await _usage(env) == [(503, "embedding_unavailable", 0, env.key)]


async def test_a_query_embedding_is_metered_with_its_tokens(env: Env) -> None:  # noqa: F811
    result = await env.embedder.embed(["a cat", "a dog"], tenant_id=env.tenant, key_id=env.key, purpose="search")
    assert len(result.vectors) == 2 and result.prompt_tokens == 4
    assert result.vectors[0].startswith("[") and result.vectors[0].count(",") == 383
    assert await _usage(env) == [(200, None, 4, env.key)]
    model = await env.embedder.model()
    assert (model.name, model.dimensions, model.max_input_tokens) == ("fake-embed", 384, 256)


@pytest.fixture
async def gateway_with_worker(gateway: Gateway) -> AsyncIterator[Gateway]:
    """A gateway as deployed by default: an ingestion worker in its process (the session's gateway has none)."""
    settings = gateway_settings(
        gateway.services.settings.database_url or "", gateway.chat.url, gateway.embed.url, port=free_port(),
        ingestion_in_gateway=True,
    )
    app, server, task = await start_gateway(settings)
    try:
        yield Gateway(f"http://127.0.0.1:{settings.port}", app, gateway.chat, gateway.embed)
    finally:
        await stop_gateway(server, task)


async def test_upload_and_poll_through_the_gateway_ends_completed_or_failed(
    gateway_with_worker: Gateway, tenant: TenantKeys
) -> None:
    gateway = gateway_with_worker
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(name="docs")
    done = await client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("setup.md", MARKDOWN), poll_interval_ms=100
    )
    assert (done.status, done.last_error) == ("completed", None) and done.usage_bytes > 0
    assert done.chunking_strategy is not None and done.chunking_strategy.type == "static"
    bad = await client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("notes.txt", b"\x89PNG\r\n\x1a\n" + bytes(64)), poll_interval_ms=100
    )
    assert bad.status == "failed" and bad.last_error is not None and bad.last_error.code == "unsupported_file"
    async with gateway.services.db.connection() as conn:
        cur = await conn.execute("SELECT file_id, count(*) FROM chunks GROUP BY file_id")
        rows = await cur.fetchall()
    assert [r[0] for r in rows] == [done.id] and rows[0][1] > 0  # nothing of the failed file is searchable

