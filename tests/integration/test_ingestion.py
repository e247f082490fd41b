"""Ingestion jobs and the queue against a real Postgres and a fake embedding engine (no HTTP gateway).

Rows are attached the way the vector store code attaches them (``vector_store_files`` in_progress with the
requested strategy), then the job (``retrieval.ingest``) or the queue's worker (``retrieval.queue``) runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gateway.embedder import EngineEmbedder
from gateway.engines.client import EngineClient
from gateway.engines.http1 import HttpClient
from gateway.engines.pool import EnginePool
from gateway.engines.timeouts import EngineTimeouts
from gateway.ingestion import EmbeddingTokenizer, build_ingestion, run_worker
from observability.usage import UsageMeter
from retrieval.files import create_file
from retrieval.ingest import IngestOptions, Outcome, effective_strategy, ingest_file
from retrieval.queue import IngestionApp, job_lock
from tests.fakes.vllm import FakeVLLM
from tests.integration.conftest import minilm_tokenizer_path

EMBED_MODEL = "fake-embed"
DATA = Path(__file__).parent.parent / "data" / "rag"


def minilm_tokenizer() -> str:
    path = minilm_tokenizer_path()
    if path is None:
        pytest.skip("the all-MiniLM-L6-v2 package (tenantgate engines install) is not installed")
    return path


@dataclass
class Env:
    pool: AsyncConnectionPool[Any]
    url: str
    fake: FakeVLLM
    embedder: EngineEmbedder
    meter: UsageMeter
    tokenizer: EmbeddingTokenizer
    tenant: uuid.UUID
    key: uuid.UUID

    async def ingest(self, vs_id: str, file_id: str, **options: Any) -> Outcome:
        return await ingest_file(
            self.pool, self.embedder, self.tokenizer, self.tenant, vs_id, file_id, options=IngestOptions(**options)
        )

    async def row(self, vs_id: str, file_id: str) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT status, last_error, attempts, chunking_strategy, usage_bytes FROM vector_store_files"
                " WHERE vector_store_id = %s AND file_id = %s", (vs_id, file_id),
            )
            found = await cur.fetchone()
        assert found is not None
        return dict(zip(("status", "last_error", "attempts", "chunking_strategy", "usage_bytes"), found, strict=True))

    async def chunks(self, vs_id: str, file_id: str) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT chunk_index, text, tokens, heading, attributes, embedding::text, tenant_id FROM chunks"
                " WHERE vector_store_id = %s AND file_id = %s ORDER BY chunk_index", (vs_id, file_id),
            )
            return list(await cur.fetchall())


async def add_tenant(pool: AsyncConnectionPool[Any]) -> uuid.UUID:
    tenant = uuid.uuid4()
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant, f"t-{tenant.hex[:8]}"))
    return tenant


async def add_store(pool: AsyncConnectionPool[Any], tenant: uuid.UUID) -> str:
    vs_id = "vs_" + uuid.uuid4().hex
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO vector_stores (id, tenant_id, name) VALUES (%s, %s, 'docs')", (vs_id, tenant))
    return vs_id


async def add_file(env: Env, data: bytes, name: str = "doc.md") -> str:
    async def content() -> AsyncIterator[bytes]:
        yield data

    created = await create_file(
        env.pool, env.tenant, filename=name, purpose="assistants", content=content(), max_bytes=10**8
    )
    return created.id


async def attach(
    env: Env, vs_id: str, file_id: str, *, strategy: dict[str, Any] | None = None,
    attributes: dict[str, Any] | None = None,
) -> None:
    async with env.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO vector_store_files (vector_store_id, file_id, tenant_id, chunking_strategy, attributes,"
            " key_id, sha256) SELECT %s, %s, %s, %s, %s, %s, sha256 FROM files WHERE id = %s",
            (vs_id, file_id, env.tenant, Jsonb(strategy or {"type": "auto"}), Jsonb(attributes or {}), env.key,
             file_id),
        )


@pytest.fixture
async def env(db_pool: AsyncConnectionPool[Any], clean_database_url: str) -> AsyncIterator[Env]:
    async with db_pool.connection() as conn:
        await conn.execute("DELETE FROM procrastinate_jobs")
    timeouts = EngineTimeouts(connect=2, first_byte=10, total=20)
    http = HttpClient(connect_timeout=2)
    async with FakeVLLM(models=(EMBED_MODEL,), purpose="embed") as fake:
        engines = EnginePool(http, (), [fake.url], timeouts=timeouts, health_interval=60)
        await engines.start()
        meter = UsageMeter(db_pool, flush_interval=0.05)
        await meter.start()
        embedder = EngineEmbedder(engines, EngineClient(engines, http, timeouts), meter)
        tenant = await add_tenant(db_pool)
        try:
            yield Env(db_pool, clean_database_url, fake, embedder, meter,
                      EmbeddingTokenizer(embedder, minilm_tokenizer()), tenant, uuid.uuid4())
        finally:
            await meter.stop()
            await engines.stop()
            await http.close()


MARKDOWN = (
    "# Setup\n\nThe gateway reads its settings from the environment. " + "Every word counts here. " * 120
    + "\n\n## Storage\n\nChunks live in Postgres with pgvector and a full-text index.\n"
).encode()


# -- the job -------------------------------------------------------------------------------------------


async def test_a_file_ends_completed_with_chunks_capped_at_what_the_engine_takes(env: Env) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id, attributes={"team": "infra", "year": 2026})

    outcome = await env.ingest(vs_id, file_id, batch_size=2)

    assert (outcome.status, outcome.copied) == ("completed", False) and outcome.chunks > 2
    row = await env.row(vs_id, file_id)
    # auto (800/400) capped at the engine's 256 less [CLS] and [SEP]; the overlap scaled with it
    assert row["chunking_strategy"] == {"type": "static", "static": {"max_chunk_size_tokens": 254,
                                                                     "chunk_overlap_tokens": 127}}
    assert (row["status"], row["last_error"], row["attempts"]) == ("completed", None, 1)
    chunks = await env.chunks(vs_id, file_id)
    assert [c[0] for c in chunks] == list(range(outcome.chunks))
    assert all(0 < c[2] <= 254 for c in chunks)
    assert all(c[4] == {"team": "infra", "year": 2026} and c[6] == env.tenant for c in chunks)
    assert chunks[0][3] in ("Setup", None) and chunks[-1][3] is not None and "Storage" in chunks[-1][3]
    assert "pgvector" in chunks[-1][1]
    assert row["usage_bytes"] == sum(len(c[1].encode()) for c in chunks) + 4 * 384 * len(chunks)
    # embedded in batches of 2, and the vectors are the engine's own
    assert env.fake.embedding_requests >= -(-outcome.chunks // 2)
    first = [float(x) for x in chunks[0][5].strip("[]").split(",")]
    assert first == pytest.approx(env.fake.embedding(chunks[0][1]), abs=1e-6)


async def test_a_pdf_keeps_its_pages(env: Env) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, (DATA / "kettle-spec.pdf").read_bytes(), "kettle-spec.pdf")
    await attach(env, vs_id, file_id)
    assert (await env.ingest(vs_id, file_id)).status == "completed"
    async with env.pool.connection() as conn:
        cur = await conn.execute("SELECT DISTINCT page FROM chunks WHERE file_id = %s ORDER BY page", (file_id,))
        assert [r[0] for r in await cur.fetchall()] == [1, 2]


async def test_a_static_strategy_is_honoured_when_it_fits(env: Env) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id, strategy={"type": "static", "static": {"max_chunk_size_tokens": 100,
                                                                             "chunk_overlap_tokens": 20}})
    assert (await env.ingest(vs_id, file_id)).status == "completed"
    row = await env.row(vs_id, file_id)
    assert row["chunking_strategy"]["static"] == {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}
    assert all(c[2] <= 100 for c in await env.chunks(vs_id, file_id))


def test_effective_strategy_caps_and_scales() -> None:
    assert effective_strategy({"type": "auto"}, 512, 2)["static"] == {
        "max_chunk_size_tokens": 510, "chunk_overlap_tokens": 255}
    assert effective_strategy({"type": "static", "static": {"max_chunk_size_tokens": 4096,
                                                            "chunk_overlap_tokens": 0}}, 256, 2)["static"] == {
        "max_chunk_size_tokens": 254, "chunk_overlap_tokens": 0}
    assert effective_strategy({"type": "auto"}, 8192, 2)["static"] == {
        "max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}


@pytest.mark.parametrize(
    ("name", "code"),
    [("empty.txt", "invalid_file"), ("picture.txt", "unsupported_file"), ("encrypted.pdf", "invalid_file"),
     ("truncated.pdf", "invalid_file"), ("scanned.pdf", "invalid_file")],
)
async def test_a_bad_file_ends_failed_with_last_error_and_no_chunks(env: Env, name: str, code: str) -> None:
    data = (DATA / name).read_bytes() or b" \n"  # the Files API refuses 0 bytes; blank text is empty too
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, data, name)
    await attach(env, vs_id, file_id)
    await env.embedder.model()  # its one probe of the vector size
    before = env.fake.embedding_requests
    outcome = await env.ingest(vs_id, file_id)
    row = await env.row(vs_id, file_id)
    assert (outcome.status, row["status"]) == ("failed", "failed")
    assert row["last_error"]["code"] == code and row["last_error"]["message"]
    assert await env.chunks(vs_id, file_id) == []
    assert env.fake.embedding_requests == before


async def test_a_file_cancelled_meanwhile_keeps_no_chunks(env: Env) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    env.fake.faults.header_delay = 0.3  # the job is embedding while the file is cancelled

    async def cancel() -> None:
        while env.fake.in_progress == 0:  # noqa: ASYNC110  # the fake has no event for it
            await asyncio.sleep(0.01)
        async with env.pool.connection() as conn:
            await conn.execute("UPDATE vector_store_files SET status = 'cancelled' WHERE file_id = %s", (file_id,))

    outcome, _ = await asyncio.gather(env.ingest(vs_id, file_id), cancel())
    assert outcome.status == "discarded"
    assert (await env.row(vs_id, file_id))["status"] == "cancelled"
    assert await env.chunks(vs_id, file_id) == []
    # and a job for a row that is not in_progress does nothing
    assert (await env.ingest(vs_id, file_id)).status == "skipped"


async def test_the_same_bytes_are_embedded_once_per_tenant(env: Env) -> None:
    first_store, second_store = await add_store(env.pool, env.tenant), await add_store(env.pool, env.tenant)
    one = await add_file(env, MARKDOWN, "a.md")
    two = await add_file(env, MARKDOWN, "b.md")  # another upload, the same bytes
    await attach(env, first_store, one, attributes={"v": 1})
    await attach(env, second_store, two, attributes={"v": 2})
    assert (await env.ingest(first_store, one)).status == "completed"
    seen = env.fake.embedding_requests
    assert seen > 0

    outcome = await env.ingest(second_store, two)

    assert (outcome.status, outcome.copied) == ("completed", True)
    assert env.fake.embedding_requests == seen  # no engine call the second time
    a, b = await env.chunks(first_store, one), await env.chunks(second_store, two)
    assert [(c[0], c[1], c[5]) for c in a] == [(c[0], c[1], c[5]) for c in b]
    assert {c[4]["v"] for c in b} == {2}
    assert (await env.row(second_store, two))["usage_bytes"] == (await env.row(first_store, one))["usage_bytes"]

    # another tenant with the same bytes embeds them itself
    other = Env(**{**env.__dict__, "tenant": await add_tenant(env.pool)})
    store = await add_store(env.pool, other.tenant)
    theirs = await add_file(other, MARKDOWN)
    await attach(other, store, theirs)
    assert (await other.ingest(store, theirs)).copied is False
    assert env.fake.embedding_requests > seen


async def test_detaching_or_deleting_removes_chunks(env: Env) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    one, two = await add_file(env, MARKDOWN), await add_file(env, b"Another document about boats.")
    for file_id in (one, two):
        await attach(env, vs_id, file_id)
        assert (await env.ingest(vs_id, file_id)).status == "completed"
    async with env.pool.connection() as conn:
        await conn.execute("DELETE FROM vector_store_files WHERE file_id = %s", (one,))  # detach
        await conn.execute("DELETE FROM files WHERE id = %s", (two,))  # delete the file
        cur = await conn.execute("SELECT count(*) FROM chunks")
        assert (await cur.fetchone()) == (0,)


async def test_ingestion_embeddings_are_metered_to_the_tenant_and_key(env: Env) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    outcome = await env.ingest(vs_id, file_id, batch_size=2)
    await _until(lambda: _usage_rows(env), lambda rows: len(rows) >= -(-outcome.chunks // 2))
    rows = await _usage_rows(env)
    assert {(r[0], r[1], r[2], r[3], r[5]) for r in rows} == {
        (env.tenant, env.key, "embeddings", f"ingest-{vs_id}-{file_id}", 200)
    }
    assert all(r[4] > 0 for r in rows)


async def test_an_unreachable_engine_raises_and_spent_attempts_end_failed(env: Env) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    await env.embedder.model()  # learnt before the engine goes
    env.fake.faults.status = 503
    for attempt in (1, 2):
        with pytest.raises(Exception, match="embedding engine"):
            await env.ingest(vs_id, file_id, max_attempts=2)
        assert (await env.row(vs_id, file_id))["attempts"] == attempt
    assert (await env.ingest(vs_id, file_id, max_attempts=2)).status == "failed"
    row = await env.row(vs_id, file_id)
    assert row["status"] == "failed" and row["last_error"]["code"] == "server_error"
    assert await env.chunks(vs_id, file_id) == []


async def test_no_tokenizer_ends_failed_naming_the_setting(env: Env) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    env.tokenizer = EmbeddingTokenizer(env.embedder, None)  # the fake's card root is not a folder here
    assert (await env.ingest(vs_id, file_id)).status == "failed"
    error = (await env.row(vs_id, file_id))["last_error"]
    assert error["code"] == "server_error" and "TENANTGATE_EMBEDDING_TOKENIZER" in error["message"]


# -- the queue -----------------------------------------------------------------------------------------


@pytest.fixture
async def ingestion(env: Env) -> AsyncIterator[IngestionApp]:
    # A queue of its own: the session's gateway runs a worker on the default queue, which must not take these jobs.
    app = build_ingestion(db_url=env.url, pool=env.pool, embedder=env.embedder, tokenizer_path=minilm_tokenizer(),
                          max_attempts=2, retry_wait_s=0, queue_name=f"test-{uuid.uuid4().hex[:12]}")
    await app.open()
    try:
        yield app
    finally:
        await app.close()


@pytest.fixture
async def worker(ingestion: IngestionApp) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run_worker(ingestion, shutdown_timeout=5))
    yield task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _until(read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool]) -> Any:
    async with asyncio.timeout(20):
        while True:
            value = await read()
            if ok(value):
                return value
            await asyncio.sleep(0.05)


async def _usage_rows(env: Env) -> list[tuple[Any, ...]]:
    async with env.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT tenant_id, key_id, endpoint, request_id, prompt_tokens, status_code FROM usage_events"
        )
        return list(await cur.fetchall())


async def _jobs(env: Env, ingestion: IngestionApp) -> list[tuple[Any, ...]]:
    async with env.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT lock, status FROM procrastinate_jobs WHERE task_name LIKE '%%ingest%%' AND queue_name = %s",
            (ingestion.queue_name,),
        )
        return list(await cur.fetchall())


async def test_a_submitted_file_is_ingested_by_the_worker(
    env: Env, ingestion: IngestionApp, worker: asyncio.Task[None]
) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    await ingestion.queue.submit(env.tenant, vs_id, [file_id])
    row = await _until(lambda: env.row(vs_id, file_id), lambda r: r["status"] != "in_progress")
    assert row["status"] == "completed" and await env.chunks(vs_id, file_id)


async def test_a_second_submit_while_one_waits_adds_no_job(env: Env, ingestion: IngestionApp) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    for _ in range(3):
        await ingestion.queue.submit(env.tenant, vs_id, [file_id])
    assert await _jobs(env, ingestion) == [(job_lock(vs_id, file_id), "todo")]


async def test_the_sweep_requeues_a_lost_job_and_fails_a_spent_one(env: Env, ingestion: IngestionApp) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    lost, spent = await add_file(env, MARKDOWN), await add_file(env, b"Spent attempts.")
    await attach(env, vs_id, lost)
    await attach(env, vs_id, spent)
    async with env.pool.connection() as conn:
        await conn.execute("UPDATE vector_store_files SET attempts = 2 WHERE file_id = %s", (spent,))

    report = await ingestion.sweep(stale_after_s=0)  # no job exists for either: the gateway died after commit

    assert (report.requeued, report.failed) == (1, 1)
    assert await _jobs(env, ingestion) == [(job_lock(vs_id, lost), "todo")]
    row = await env.row(vs_id, spent)
    assert row["status"] == "failed" and row["last_error"]["code"] == "server_error"
    # a second sweep finds the waiting job and leaves it alone
    assert (await ingestion.sweep(stale_after_s=0)).requeued == 0


async def test_a_job_whose_worker_died_is_retried_and_completes(env: Env, ingestion: IngestionApp) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    await ingestion.queue.submit(env.tenant, vs_id, [file_id])
    async with env.pool.connection() as conn:  # a worker took it and was killed: doing, and no worker any more
        await conn.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = NULL")
        await conn.execute("UPDATE vector_store_files SET attempts = 1 WHERE file_id = %s", (file_id,))

    report = await ingestion.sweep()

    assert report.stalled_retried == 1
    task = asyncio.create_task(run_worker(ingestion, shutdown_timeout=5))
    try:
        row = await _until(lambda: env.row(vs_id, file_id), lambda r: r["status"] != "in_progress")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (row["status"], row["attempts"]) == ("completed", 2)


async def test_the_worker_retries_an_unreachable_engine_then_fails_the_file(
    env: Env, ingestion: IngestionApp, worker: asyncio.Task[None]
) -> None:
    vs_id = await add_store(env.pool, env.tenant)
    file_id = await add_file(env, MARKDOWN)
    await attach(env, vs_id, file_id)
    await env.embedder.model()
    env.fake.faults.status = 503
    await ingestion.queue.submit(env.tenant, vs_id, [file_id])
    row = await _until(lambda: env.row(vs_id, file_id), lambda r: r["status"] != "in_progress")
    assert (row["status"], row["attempts"], row["last_error"]["code"]) == ("failed", 2, "server_error")
    assert "embedding engine" in row["last_error"]["message"]


def test_queue_schema_upgrade_is_idempotent(database_url: str) -> None:
    from gateway.db.migrations import upgrade

    assert asyncio.run(upgrade(database_url)) == []
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT version FROM queue_schema WHERE library = 'procrastinate'").fetchone()
        assert found is not None and found[0]
        assert conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone() == (True,)
