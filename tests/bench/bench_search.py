"""Search latency: p50 and p95 of ``retrieval.search`` over synthetic chunks, per mode, filtered or not.

Loads one store of N chunks (COPY, random unit vectors, text drawn from a Zipf vocabulary so that some
words are common and most are rare, files of 500 chunks with ``{"group": file % 4}``) into an embedded
Postgres, builds the HNSW index, then times searches of 10 results:

- query embedding excluded: the query vector is given (random unit vectors), only the database work counts;
- included: the query is embedded by the fake vLLM (``tests/fakes/vllm.py``) over HTTP first.

The pool keeps two connections open, as a gateway with ``TENANTGATE_DB_POOL_MIN=2`` (or any concurrent traffic)
does: hybrid search runs its text arm on a second connection only when one is idle.

Run::

    .venv/bin/python -m tests.bench.bench_search [--sizes 10000 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
from psycopg_pool import AsyncConnectionPool

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrations import upgrade
from gateway.db.pool import open_pool
from retrieval.embedding import EmbeddingModel, EmbeddingPurpose, Embeddings
from retrieval.filters import parse_filter
from retrieval.search import SearchMode, check_stores, search_chunks
from tests.fakes.vllm import FakeVLLM
from tests.integration.search_fixtures import add_file, add_store, add_tenant, random_unit_texts

_COPY = (
    "COPY chunks (tenant_id, vector_store_id, file_id, chunk_index, text, tokens, char_start, char_end, attributes,"
    " embedding) FROM STDIN"
)
INDEX = "CREATE INDEX chunks_embedding_idx ON chunks USING hnsw (embedding vector_cosine_ops)"
VOCABULARY = [f"w{i}" for i in range(5000)]
FILTER = parse_filter({"type": "in", "key": "group", "value": [1, 2]})


class HttpEmbedder:
    """The query embedder over the fake engine's POST /v1/embeddings."""

    def __init__(self, url: str) -> None:
        self._http = httpx.AsyncClient(base_url=url)

    async def model(self) -> EmbeddingModel:
        return EmbeddingModel(name="fake-embed", dimensions=384, max_input_tokens=256)

    async def embed(
        self, texts: Sequence[str], *, tenant_id: uuid.UUID, key_id: uuid.UUID | None, purpose: EmbeddingPurpose
    ) -> Embeddings:
        answer = await self._http.post("/v1/embeddings", json={"model": "fake-embed", "input": list(texts)})
        data = msgspec.json.decode(answer.content)["data"]
        vectors = ["[" + ",".join(f"{x:.6f}" for x in item["embedding"]) + "]" for item in data]
        return Embeddings(vectors=vectors, prompt_tokens=len(texts))

    async def close(self) -> None:
        await self._http.aclose()


def _text(rng: random.Random, weights: list[float]) -> str:
    return " ".join(rng.choices(VOCABULARY, weights, k=60))


async def load(pool: AsyncConnectionPool, size: int) -> tuple[uuid.UUID, str]:
    rng = random.Random(size)
    weights = [1.0 / (i + 1) for i in range(len(VOCABULARY))]
    vectors = random_unit_texts(size, size)
    async with pool.connection() as conn:
        await conn.execute("TRUNCATE chunks, vector_store_files, vector_stores, file_parts, files CASCADE")
        await conn.execute("DROP INDEX IF EXISTS chunks_embedding_idx")
        tenant = await add_tenant(conn)
        store = await add_store(conn, tenant)
        for start in range(0, size, 500):
            group = (start // 500) % 4
            file_id = await add_file(conn, tenant, store, f"f{start}.txt", [], {"group": group})
            attrs = msgspec.json.encode({"group": group}).decode()
            async with conn.cursor() as cur, cur.copy(_COPY) as copy:
                for i in range(start, min(size, start + 500)):
                    text = _text(rng, weights)
                    await copy.write_row((tenant, store, file_id, i - start, text, 60, 0, len(text), attrs, vectors[i]))
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute(INDEX)
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        await conn.execute("VACUUM ANALYZE chunks")  # as autovacuum would: GIN's pending list merged, statistics
    return tenant, store


def _percentiles(samples: list[float]) -> str:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    p95 = samples[min(len(samples) - 1, int(0.95 * len(samples)))]
    return f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms"


async def measure(
    pool: AsyncConnectionPool, tenant: uuid.UUID, store: str, queries: int, embedder: HttpEmbedder | None,
) -> None:
    rng = random.Random(1)
    vectors = random_unit_texts(7, queries)
    for mode in ("vector", "text", "hybrid"):
        for filtered in (False, True):
            samples = []
            for q in range(queries):
                text = " ".join(rng.choice(VOCABULARY[:2000]) for _ in range(4))
                started = time.perf_counter()
                await check_stores(pool, tenant, [store])
                if mode == "text":
                    given: list[str] = []
                elif embedder is not None:
                    given = (await embedder.embed([text], tenant_id=tenant, key_id=None, purpose="search")).vectors
                else:
                    given = [vectors[q]]
                mode_: SearchMode = mode
                await search_chunks(pool, tenant, [store], queries=[text], vectors=given, mode=mode_,
                                    filters=FILTER if filtered else None, max_num_results=10)
                samples.append((time.perf_counter() - started) * 1000.0)
            label = f"{mode:6s} {'filtered  ' if filtered else 'unfiltered'}"
            print(f"    {label}  {_percentiles(samples[5:])}", flush=True)


async def run(sizes: list[int], queries: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-search-"))
    server = EmbeddedPostgres(root / "data")
    url = server.start()
    fake = FakeVLLM(models=("fake-embed",), purpose="embed")
    await fake.start()
    embedder = HttpEmbedder(fake.url)
    try:
        await upgrade(url)
        pool = await open_pool(url, min_size=2, max_size=2)  # hybrid runs its arms on two connections at once
        try:
            for size in sizes:
                started = time.perf_counter()
                tenant, store = await load(pool, size)
                print(f"{size} chunks (loaded and indexed in {time.perf_counter() - started:.0f} s)", flush=True)
                print("  query embedding excluded", flush=True)
                await measure(pool, tenant, store, queries, None)
                print("  query embedding included (fake vLLM over HTTP, in this process)", flush=True)
                await measure(pool, tenant, store, queries, embedder)
        finally:
            await pool.close()
    finally:
        await embedder.close()
        await fake.stop()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    args: Any = parser.parse_args(argv)
    asyncio.run(run(args.sizes, args.queries))


if __name__ == "__main__":
    main()
