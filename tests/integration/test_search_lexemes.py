"""The text arm's word statistics (migration 0007's ``store_lexemes``) and what it does with them: counts kept by
the triggers on chunks through inserts and deletes, invisible to another tenant, a rare word outranking common
ones, and hybrid search that runs its arms on two connections giving what one connection gives."""

from __future__ import annotations

import uuid

from psycopg_pool import AsyncConnectionPool

from retrieval.search import SearchOptions, search_chunks
from retrieval.tenancy import tenant_transaction
from tests.integration.search_fixtures import WordsEmbedder, add_file, add_store, add_tenant


async def _counts(pool: AsyncConnectionPool, tenant: uuid.UUID, store: str) -> dict[str, int]:
    async with tenant_transaction(pool, tenant) as conn:
        cur = await conn.execute(
            "SELECT lexeme, chunks FROM store_lexemes WHERE vector_store_id = %s AND chunks > 0", (store,)
        )
        return {row[0]: row[1] for row in await cur.fetchall()}


async def test_counts_follow_inserts_and_deletes_per_store(db_pool: AsyncConnectionPool) -> None:
    async with db_pool.connection() as conn:
        tenant = await add_tenant(conn)
        store, other = await add_store(conn, tenant), await add_store(conn, tenant)
        first = await add_file(conn, tenant, store, "a.txt", ["Kettles boil water", "kettle descaling"])
        await add_file(conn, tenant, store, "b.txt", ["water filters"])
        await add_file(conn, tenant, other, "c.txt", ["kettle"])
    counts = await _counts(db_pool, tenant, store)
    assert counts[""] == 3  # the store's chunks
    assert counts["kettl"] == 2 and counts["water"] == 2 and counts["boil"] == 1 and counts["filter"] == 1
    assert (await _counts(db_pool, tenant, other)) == {"": 1, "kettl": 1}
    async with db_pool.connection() as conn:  # detaching a file deletes its chunks (cascade)
        await conn.execute("DELETE FROM vector_store_files WHERE file_id = %s", (first,))
    assert (await _counts(db_pool, tenant, store)) == {"": 1, "water": 1, "filter": 1}
    async with db_pool.connection() as conn:  # a deleted store takes its counts along
        await conn.execute("DELETE FROM vector_stores WHERE id = %s", (store,))
        cur = await conn.execute("SELECT count(*) FROM store_lexemes WHERE vector_store_id = %s", (store,))
        assert (await cur.fetchone()) == (0,)


async def test_another_tenant_sees_no_counts(db_pool: AsyncConnectionPool) -> None:
    async with db_pool.connection() as conn:
        a, b = await add_tenant(conn), await add_tenant(conn)
        store = await add_store(conn, a)
        await add_file(conn, a, store, "a.txt", ["confidential merger codename bluebird"])
    assert (await _counts(db_pool, a, store))["bluebird"] == 1
    assert await _counts(db_pool, b, store) == {}
    async with tenant_transaction(db_pool, b) as conn:
        cur = await conn.execute("SELECT count(*) FROM store_lexemes")
        assert (await cur.fetchone()) == (0,)
        cur = await conn.execute("UPDATE store_lexemes SET chunks = 0 WHERE vector_store_id = %s", (store,))
        assert cur.rowcount == 0
    assert (await _counts(db_pool, a, store))["bluebird"] == 1


async def test_a_rare_word_outranks_common_ones(db_pool: AsyncConnectionPool) -> None:
    """Cover density alone ranks the chunk holding two common words first; weighed by rarity, the one chunk
    holding the rare word wins."""
    common = [f"Configure the server settings file number {i}." for i in range(30)]
    async with db_pool.connection() as conn:
        tenant = await add_tenant(conn)
        store = await add_store(conn, tenant)
        await add_file(conn, tenant, store, "common.txt", common)
        rare = await add_file(conn, tenant, store, "rare.txt", ["The server reads ZEBRACONF at start."])
    hits = await search_chunks(db_pool, tenant, [store], queries=["configure server zebraconf"], vectors=[],
                               mode="text", max_num_results=3)
    assert hits[0].file_id == rare
    assert 0.0 < hits[-1].score <= hits[0].score < 1.0


async def test_hybrid_on_two_connections_gives_what_one_gives(db_pool: AsyncConnectionPool) -> None:
    embedder = WordsEmbedder()
    texts = [f"Note {i}: the backup runs nightly and keeps {i} copies of each volume." for i in range(20)]
    async with db_pool.connection() as conn:
        tenant = await add_tenant(conn)
        store = await add_store(conn, tenant)
        await add_file(conn, tenant, store, "notes.txt", [*texts, "Snapshots use copy-on-write (COW7) volumes."])
    async with db_pool.connection(), db_pool.connection():  # two connections open: the second arm finds one idle
        pass
    assert db_pool.get_stats()["pool_available"] >= 2
    for query in ("how many copies does the backup keep", "COW7 snapshots"):
        vectors = (await embedder.embed([query], tenant_id=tenant, key_id=None, purpose="search")).vectors
        results = [
            await search_chunks(db_pool, tenant, [store], queries=[query], vectors=vectors, mode="hybrid",
                                options=SearchOptions(parallel_arms=parallel), max_num_results=5)
            for parallel in (True, False)
        ]
        assert results[0] == results[1]
        assert results[0]


async def test_a_dotted_name_is_found_by_its_last_part_and_by_the_whole(db_pool: AsyncConnectionPool) -> None:
    """Postgres's parser reads ``errno.EAGAIN`` as one host-name token; migration 0008 indexes its last part
    too, so the bare identifier finds the chunk that names it with its module (the text itself is unchanged)."""
    text = "Raised when a non-blocking call would block: errno.EAGAIN, see also os.set_blocking()."
    async with db_pool.connection() as conn:
        tenant = await add_tenant(conn)
        store = await add_store(conn, tenant)
        wanted = await add_file(conn, tenant, store, "errno.txt", [text])
        await add_file(conn, tenant, store, "other.txt", ["Blocking sockets wait for data."])
    for query in ("EAGAIN", "errno.EAGAIN"):
        hits = await search_chunks(db_pool, tenant, [store], queries=[query], vectors=[], mode="text",
                                   max_num_results=2)
        assert [hit.file_id for hit in hits] == [wanted], query
        assert hits[0].text == text
    counts = await _counts(db_pool, tenant, store)
    assert counts["eagain"] == 1 and counts["errno.eagain"] == 1
