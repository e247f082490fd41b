"""retrieval.search against real Postgres: modes, fusion, identifiers, filters, threshold, isolation, scale."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from retrieval import search as rsearch
from retrieval.errors import InvalidRequest, VectorStoreNotFound
from retrieval.filters import parse_filter
from retrieval.search import SearchOptions, search, search_chunks
from tests.integration.search_fixtures import (
    DIM,
    WordsEmbedder,
    add_file,
    add_store,
    add_tenant,
    as_pgvector,
    copy_random_chunks,
    new_store_id,
    random_unit,
)

PROSE = [
    "Uploading a large archive can take several minutes while the service checks it.",
    "The upload page shows progress and lets you cancel an upload at any time.",
    "Passwords must be at least twelve characters long and are stored as salted hashes.",
    "Invoices are emailed on the first day of each month to the billing contact.",
    "The mobile app caches recent documents so that they open without a network.",
    "Support answers tickets within one business day, faster for urgent outages.",
]
INDEX_DDL = "CREATE INDEX IF NOT EXISTS chunks_embedding_idx ON chunks USING hnsw (embedding vector_cosine_ops)"
IDENTIFIER_TEXT = "Code ERR-4012 is returned when a quota is exceeded for the day."


async def _seed_prose(pool: AsyncConnectionPool) -> tuple[uuid.UUID, str, dict[str, str]]:
    """A tenant with one store: six prose files and one whose chunk names an error code. The identifier
    chunk's vector is unrelated to its words, as a real model would place a code it never saw."""
    async with pool.connection() as conn:
        tenant = await add_tenant(conn)
        store = await add_store(conn, tenant)
        ids = {}
        for i, text in enumerate(PROSE):
            ids[f"prose{i}"] = await add_file(conn, tenant, store, f"prose{i}.txt", [text])
        ids["code"] = await add_file(
            conn, tenant, store, "errors.md", [IDENTIFIER_TEXT], vectors=[as_pgvector(random_unit(random.Random(7)))]
        )
    return tenant, store, ids


async def test_hybrid_brings_back_an_identifier_only_full_text_finds(db_pool: AsyncConnectionPool) -> None:
    tenant, store, ids = await _seed_prose(db_pool)
    embedder = WordsEmbedder()
    query = "why do uploads fail with ERR-4012"

    async def files_for(mode: rsearch.SearchMode, **kw: Any) -> list[str]:
        result = await search(db_pool, embedder, tenant, [store], query, key_id=None, max_num_results=3,
                              mode=mode, **kw)
        return [hit.file_id for hit in result.hits]

    vector_only = await files_for("vector")
    assert ids["code"] not in vector_only  # the premise: meaning alone misses the code
    assert (await files_for("text"))[0] == ids["code"]
    assert ids["code"] in await files_for("hybrid")
    assert ids["code"] in await files_for("hybrid", options=SearchOptions(fusion="rrf"))
    # text mode embeds nothing; the other modes embed the query once each, metered to the tenant
    assert [call[0] for call in embedder.calls] == [[query]] * 3
    assert all(call[1] == tenant and call[3] == "search" for call in embedder.calls)


async def test_results_carry_file_name_attributes_text_and_scores_in_order(db_pool: AsyncConnectionPool) -> None:
    tenant, store, ids = await _seed_prose(db_pool)
    for mode in rsearch.SEARCH_MODES:
        result = await search(db_pool, WordsEmbedder(), tenant, [store], "how long does an upload take",
                              key_id=None, mode=mode)
        assert result.hits, mode
        scores = [hit.score for hit in result.hits]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores)
        top = result.hits[0]
        assert top.file_id in (ids["prose0"], ids["prose1"])
        assert top.filename in ("prose0.txt", "prose1.txt") and top.vector_store_id == store
        assert top.text in PROSE and top.chunk_index == 0 and top.attributes == {}


async def test_score_threshold_and_max_num_results(db_pool: AsyncConnectionPool) -> None:
    tenant, store, _ = await _seed_prose(db_pool)
    embedder = WordsEmbedder()
    everything = await search(db_pool, embedder, tenant, [store], "upload archive", key_id=None, mode="vector")
    assert len(everything.hits) == 7
    one = await search(db_pool, embedder, tenant, [store], "upload archive", key_id=None, mode="vector",
                       max_num_results=1)
    assert [h.file_id for h in one.hits] == [everything.hits[0].file_id]
    cut = everything.hits[2].score
    above = await search(db_pool, embedder, tenant, [store], "upload archive", key_id=None, mode="vector",
                         score_threshold=cut)
    assert [h.file_id for h in above.hits] == [h.file_id for h in everything.hits if h.score >= cut]
    nothing = await search(db_pool, embedder, tenant, [store], "upload archive", key_id=None, score_threshold=1.0,
                           mode="vector")
    assert nothing.hits == []


async def test_rewrite_and_query_lists(db_pool: AsyncConnectionPool) -> None:
    tenant, store, ids = await _seed_prose(db_pool)
    result = await search(db_pool, WordsEmbedder(), tenant, [store], "What is the ERR-4012 code?", key_id=None,
                          rewrite=True, mode="text")
    assert result.search_query == ["ERR-4012 code"]
    assert result.hits[0].file_id == ids["code"]
    both = await search(db_pool, WordsEmbedder(), tenant, [store], ["invoices billing", "passwords"], key_id=None,
                        mode="hybrid", max_num_results=2)
    assert {h.file_id for h in both.hits} == {ids["prose2"], ids["prose3"]}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"type": "eq", "key": "team", "value": "red"}, {"a", "c"}),
        ({"type": "ne", "key": "team", "value": "red"}, {"b"}),  # d has no team: not matched
        ({"type": "eq", "key": "year", "value": 2024.0}, {"a"}),  # 2024 == 2024.0
        ({"type": "gt", "key": "year", "value": 2023}, {"a", "b"}),
        ({"type": "gte", "key": "year", "value": 2023}, {"a", "b", "c"}),
        ({"type": "lt", "key": "year", "value": 2024}, {"c", "d"}),
        ({"type": "lte", "key": "day", "value": "2024-06-01"}, {"a"}),  # strings order as strings
        ({"type": "in", "key": "team", "value": ["blue", "green"]}, {"b"}),
        ({"type": "in", "key": "year", "value": [2022, 2025]}, {"b", "d"}),
        ({"type": "nin", "key": "team", "value": ["blue"]}, {"a", "c"}),
        ({"type": "eq", "key": "draft", "value": True}, {"c"}),
        ({"type": "ne", "key": "draft", "value": True}, {"a"}),
        ({"type": "gt", "key": "team", "value": 3}, set()),  # a number never orders against a string
        ({"type": "eq", "key": "missing", "value": "x"}, set()),
        ({"type": "or", "filters": [{"type": "eq", "key": "team", "value": "blue"},
                                     {"type": "and", "filters": [{"type": "eq", "key": "team", "value": "red"},
                                                                 {"type": "lt", "key": "year", "value": 2024}]}]},
         {"b", "c"}),
        ({"type": "and", "filters": [{"type": "nin", "key": "year", "value": [2022]},
                                      {"type": "or", "filters": [{"type": "eq", "key": "draft", "value": False},
                                                                 {"type": "in", "key": "team", "value": ["blue"]}]}]},
         {"a", "b"}),
    ],
)
async def test_filters(db_pool: AsyncConnectionPool, flt: dict[str, Any], expected: set[str]) -> None:
    files = {
        "a": {"team": "red", "year": 2024, "day": "2024-05-30", "draft": False},
        "b": {"team": "blue", "year": 2025, "day": "2025-01-01"},
        "c": {"team": "red", "year": 2023, "draft": True},
        "d": {"year": 2022, "name": "it's \\ odd"},
    }
    async with db_pool.connection() as conn:
        tenant = await add_tenant(conn)
        store = await add_store(conn, tenant)
        ids = {name: await add_file(conn, tenant, store, f"{name}.txt", [f"report {name} shared words"], attrs)
               for name, attrs in files.items()}
    names = {v: k for k, v in ids.items()}
    for mode in rsearch.SEARCH_MODES:
        result = await search(db_pool, WordsEmbedder(), tenant, [store], "report shared words", key_id=None,
                              filters=parse_filter(flt), mode=mode)
        assert {names[h.file_id] for h in result.hits} == expected, mode


async def test_another_tenants_store_is_not_found_and_never_searched(db_pool: AsyncConnectionPool) -> None:
    tenant, store, _ = await _seed_prose(db_pool)
    _, other_store, _ = await _seed_prose(db_pool)
    embedder = WordsEmbedder()
    for stores in ([other_store], [store, other_store], ["vs_nope"], ["not-an-id"], ["vs_" + "x" * 200]):
        with pytest.raises(VectorStoreNotFound):
            await search(db_pool, embedder, tenant, stores, "upload", key_id=None)
    assert embedder.calls == []  # refused before any embedding is spent
    # Even asked below the store check, the tenant's scope returns nothing of the other tenant's store.
    hits = await search_chunks(db_pool, tenant, [other_store], queries=["upload"], vectors=[], mode="text")
    assert hits == []


async def test_bad_arguments(db_pool: AsyncConnectionPool) -> None:
    tenant, store, _ = await _seed_prose(db_pool)
    for kwargs, param in (
        ({"max_num_results": 0}, "max_num_results"), ({"max_num_results": 51}, "max_num_results"),
        ({"score_threshold": 1.5}, "ranking_options.score_threshold"),
    ):
        with pytest.raises(InvalidRequest) as info:
            await search(db_pool, WordsEmbedder(), tenant, [store], "x", key_id=None, **kwargs)
        assert info.value.param == param
    for query, param in (("  ", "query"), ([], "query"), (["ok", ""], "query[1]"), ("x" * 5000, "query")):
        with pytest.raises(InvalidRequest) as info:
            await search(db_pool, WordsEmbedder(), tenant, [store], query, key_id=None)
        assert info.value.param == param
    with pytest.raises(InvalidRequest):
        await search(db_pool, WordsEmbedder(), tenant, [], "x", key_id=None)


async def test_search_marks_the_store_active_at_most_once_a_minute(db_pool: AsyncConnectionPool) -> None:
    async with db_pool.connection() as conn:
        tenant = await add_tenant(conn)
        store = await add_store(conn, tenant, expires_after_days=7)
        await conn.execute(
            "UPDATE vector_stores SET last_active_at = now() - interval '2 days',"
            " expires_at = now() + interval '5 days'"
        )
    await search(db_pool, WordsEmbedder(), tenant, [store], "x", key_id=None)
    async with db_pool.connection() as conn:
        row = await (await conn.execute(
            "SELECT now() - last_active_at < interval '1 minute', expires_at - last_active_at FROM vector_stores"
        )).fetchone()
        assert row is not None and row[0] is True and row[1].days == 7
        await conn.execute("UPDATE vector_stores SET last_active_at = now() - interval '10 seconds'")
        before = await (await conn.execute("SELECT last_active_at FROM vector_stores")).fetchone()
    await search(db_pool, WordsEmbedder(), tenant, [store], "x", key_id=None)
    async with db_pool.connection() as conn:
        after = await (await conn.execute("SELECT last_active_at FROM vector_stores")).fetchone()
        assert after == before  # touched 10 s ago: left alone
        await conn.execute("UPDATE vector_stores SET expires_at = now() - interval '1 second'")
    with pytest.raises(rsearch.VectorStoreExpired):
        await search(db_pool, WordsEmbedder(), tenant, [store], "x", key_id=None)


@asynccontextmanager
async def _index_built_after_load(conn: AsyncConnection[Any]) -> AsyncIterator[None]:
    """Load with the HNSW index dropped, then build it (in memory: about 3x faster on this 2-core host than
    keeping it up to date row by row); the index is back whatever happens."""
    await conn.execute("DROP INDEX IF EXISTS chunks_embedding_idx")
    try:
        yield
    finally:
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute(INDEX_DDL)


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_a_small_store_inside_50k_chunks_of_others_gets_its_k_best(db_pool: AsyncConnectionPool) -> None:
    rng = random.Random(42)
    async with db_pool.connection() as conn, _index_built_after_load(conn):
        tenant = await add_tenant(conn)
        others = [await add_tenant(conn) for _ in range(3)]
        # 50k chunks: three other tenants and a big store of the same tenant.
        for i, other in enumerate(others):
            await copy_random_chunks(conn, other, await add_store(conn, other), 12_500, seed=i)
        await copy_random_chunks(conn, tenant, await add_store(conn, tenant), 12_500, seed=9,
                                 attributes={"kind": "memo"})
        small = await add_store(conn, tenant)
        vectors = [random_unit(rng) for _ in range(20)]
        file_ids = []
        for i, vec in enumerate(vectors):
            file_ids.append(await add_file(conn, tenant, small, f"s{i}.txt", [f"small chunk {i}"],
                                           {"kind": "memo" if i % 2 else "note"}, vectors=[as_pgvector(vec)]))
    async with db_pool.connection() as conn:
        await conn.execute("ANALYZE chunks")
        count = await (await conn.execute("SELECT count(*) FROM chunks")).fetchone()
        assert count is not None and count[0] == 50_020
    query = random_unit(rng)
    ranked = sorted(range(20), key=lambda i: -_cosine(query, vectors[i]))
    hits = await search_chunks(db_pool, tenant, [small], queries=["x"], vectors=[as_pgvector(query)], mode="vector",
                               max_num_results=10)
    assert [h.file_id for h in hits] == [file_ids[i] for i in ranked[:10]]
    memo = parse_filter({"type": "eq", "key": "kind", "value": "memo"})
    hits = await search_chunks(db_pool, tenant, [small], queries=["x"], vectors=[as_pgvector(query)], mode="vector",
                               max_num_results=5, filters=memo)
    assert [h.file_id for h in hits] == [file_ids[i] for i in ranked if i % 2][:5]
    assert len(query) == DIM and new_store_id() != small
