"""Row-level security, the second wall: inside a tenant transaction, queries that forget the tenant filter
(or name another tenant on purpose) still read and change nothing of another tenant."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from retrieval.tenancy import TENANT_ROLE, tenant_transaction
from tests.integration.search_fixtures import add_file, add_store, add_tenant, as_pgvector, words_vector

TABLES = ("files", "vector_stores", "vector_store_files", "chunks")


async def _two_tenants(pool: AsyncConnectionPool) -> tuple[uuid.UUID, uuid.UUID, str, str]:
    async with pool.connection() as conn:
        a, b = await add_tenant(conn), await add_tenant(conn)
        store_a, store_b = await add_store(conn, a), await add_store(conn, b)
        await add_file(conn, a, store_a, "a.txt", ["alpha secret of a", "more of a"])
        await add_file(conn, b, store_b, "b.txt", ["alpha secret of b", "more of b", "even more of b"])
    return a, b, store_a, store_b


async def test_queries_without_a_tenant_filter_see_only_the_transactions_tenant(db_pool: AsyncConnectionPool) -> None:
    a, b, store_a, store_b = await _two_tenants(db_pool)
    async with db_pool.connection() as conn:  # the owner, unscoped: both tenants' rows exist
        cur = await conn.execute("SELECT count(DISTINCT tenant_id) FROM chunks")
        assert await cur.fetchone() == (2,)
    async with tenant_transaction(db_pool, a) as conn:
        for table in TABLES:
            cur = await conn.execute(f"SELECT DISTINCT tenant_id FROM {table}")  # no WHERE at all
            assert await cur.fetchall() == [(a,)], table
        # Nearest chunks by meaning, no tenant or store filter: the other tenant's near-identical chunk is absent.
        query = as_pgvector(words_vector("alpha secret of b"))
        cur = await conn.execute("SELECT text FROM chunks ORDER BY embedding <=> %s::vector LIMIT 10", (query,))
        assert {row[0] for row in await cur.fetchall()} == {"alpha secret of a", "more of a"}
        # Naming the other tenant's store explicitly still finds nothing.
        cur = await conn.execute("SELECT count(*) FROM chunks WHERE vector_store_id = %s", (store_b,))
        assert await cur.fetchone() == (0,)
        # Changes aimed at the other tenant's rows touch nothing.
        cur = await conn.execute("UPDATE chunks SET text = 'owned' WHERE tenant_id = %s", (b,))
        assert cur.rowcount == 0
        cur = await conn.execute("DELETE FROM vector_stores WHERE id = %s", (store_b,))
        assert cur.rowcount == 0
        cur = await conn.execute("SELECT current_user")
        assert await cur.fetchone() == (TENANT_ROLE,)
    async with db_pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM chunks WHERE tenant_id = %s AND text <> 'owned'", (b,))
        assert await cur.fetchone() == (3,)
        cur = await conn.execute("SELECT count(*) FROM vector_stores WHERE id = %s", (store_b,))
        assert await cur.fetchone() == (1,)
    assert store_a != store_b


async def test_writing_a_row_for_another_tenant_is_refused(db_pool: AsyncConnectionPool) -> None:
    a, b, _, store_b = await _two_tenants(db_pool)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        async with tenant_transaction(db_pool, a) as conn:
            await conn.execute("INSERT INTO vector_stores (id, tenant_id, name) VALUES ('vs_intruder', %s, 'x')", (b,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        async with tenant_transaction(db_pool, a) as conn:  # moving one's own row to the other tenant
            await conn.execute("UPDATE vector_stores SET tenant_id = %s WHERE tenant_id = %s", (b, a))
    async with db_pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM vector_stores WHERE tenant_id = %s", (b,))
        assert await cur.fetchone() == (1,)
    assert store_b


async def test_the_tenant_role_without_a_tenant_sees_nothing(db_pool: AsyncConnectionPool) -> None:
    await _two_tenants(db_pool)
    async with db_pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT set_config('role', %s, true)", (TENANT_ROLE,))
        for table in TABLES:
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            assert await cur.fetchone() == (0,), table


async def test_a_pipelined_tenant_transaction_is_scoped_and_an_error_in_it_rolls_it_back(
    db_pool: AsyncConnectionPool,
) -> None:
    """Search's pipelined transactions (statements sent before earlier answers are read) are scoped the same way,
    and a statement that fails mid-pipeline surfaces, rolls the whole transaction back and leaves the pooled
    connection clean."""
    a, b, _, store_b = await _two_tenants(db_pool)
    async with tenant_transaction(db_pool, a, pipelined=True) as conn:
        users = await conn.execute("SELECT current_user")
        tenants = await conn.execute("SELECT DISTINCT tenant_id FROM chunks")
        assert await tenants.fetchall() == [(a,)]
        assert await users.fetchone() == (TENANT_ROLE,)

    async def update_then_fail() -> None:
        async with tenant_transaction(db_pool, b, pipelined=True) as conn:
            await conn.execute("UPDATE vector_stores SET name = 'changed' WHERE id = %s", (store_b,))
            await conn.execute("SELECT 1 / 0")
            after = await conn.execute("SELECT 1")
            await after.fetchall()

    with pytest.raises(psycopg.errors.DivisionByZero):
        await update_then_fail()
    async with db_pool.connection() as conn:
        cur = await conn.execute("SELECT name <> 'changed', current_user <> %s FROM vector_stores WHERE id = %s",
                                 (TENANT_ROLE, store_b))
        assert await cur.fetchone() == (True, True)
