"""Vector stores (``vector_stores``): create, list, retrieve, modify, delete, and the expiry sweep.

A store's ``status``, ``file_counts`` and ``usage_bytes`` are derived from its attached files when read:
``expired`` once ``expires_at`` has passed, else ``in_progress`` while a file is, else ``completed``.
``expires_at`` is ``last_active_at`` plus ``expires_after.days``; attaching files and searching move
``last_active_at`` (``store_files.touch_stores``). Expiry is final: an expired store keeps its name and
metadata and stays listed as ``expired``, its files are detached (their chunks go) by :func:`expire_due`, and
it takes no new files and no new expiry policy; delete it to drop it.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from retrieval import objects as o
from retrieval.jobs import IngestionQueue
from retrieval.paging import PageQuery, keyset
from retrieval.store_files import (
    Attach,
    VectorStoreExpired,
    attach_rows,
    is_store_id,
    lock_store,
    store_not_found,
    submit,
)
from retrieval.tenancy import tenant_transaction

MAX_CREATE_FILES = 2_000
EXPIRE_BATCH = 100  # stores cleaned per transaction by the sweep


def new_store_id() -> str:
    return "vs_" + secrets.token_urlsafe(18)  # 24 characters, 144 random bits


_SELECT = """
SELECT s.id, extract(epoch FROM s.created_at)::bigint, s.name, s.description, s.metadata, s.expires_after_days,
       extract(epoch FROM s.expires_at)::bigint, extract(epoch FROM s.last_active_at)::bigint,
       s.expires_at IS NOT NULL AND s.expires_at <= now(),
       c.in_progress, c.completed, c.failed, c.cancelled, c.total, c.usage_bytes
FROM vector_stores s
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE f.status = 'in_progress') AS in_progress,
           count(*) FILTER (WHERE f.status = 'completed') AS completed,
           count(*) FILTER (WHERE f.status = 'failed') AS failed,
           count(*) FILTER (WHERE f.status = 'cancelled') AS cancelled,
           count(*) AS total,
           coalesce(sum(f.usage_bytes), 0)::bigint AS usage_bytes
    FROM vector_store_files f WHERE f.vector_store_id = s.id AND f.tenant_id = s.tenant_id
) c
"""


def _store(row: Sequence[Any]) -> o.VectorStoreObject:
    counts = o.FileCounts(
        in_progress=row[9], completed=row[10], failed=row[11], cancelled=row[12], total=row[13]
    )
    status: Literal["expired", "in_progress", "completed"] = (
        "expired" if row[8] else ("in_progress" if counts.in_progress else "completed")
    )
    return o.VectorStoreObject(
        id=row[0], created_at=row[1], name=row[2] or "", description=row[3], usage_bytes=row[14],
        file_counts=counts, status=status,
        expires_after=o.ExpiresAfter("last_active_at", row[5]) if row[5] is not None else None,
        expires_at=row[6], last_active_at=row[7], metadata=row[4],
    )


async def _get(conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_id: str) -> o.VectorStoreObject:
    if not is_store_id(store_id):
        raise store_not_found(store_id)
    cur = await conn.execute(_SELECT + " WHERE s.id = %s AND s.tenant_id = %s", (store_id, tenant_id))
    row = await cur.fetchone()
    if row is None:
        raise store_not_found(store_id)
    return _store(row)


async def create_store(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, key_id: uuid.UUID | None, req: o.CreateVectorStoreRequest,
    queue: IngestionQueue,
) -> o.VectorStoreObject:
    """A new store, with ``file_ids`` attached (all the tenant's, else nothing is created) and handed to the
    ingestion queue once committed."""
    name = o.check_text(req.name, "name", o.MAX_NAME_CHARS)
    description = o.check_text(req.description, "description", o.MAX_DESCRIPTION_CHARS)
    metadata = o.check_metadata(req.metadata)
    days = o.check_expires_after(req.expires_after)
    file_ids = req.file_ids or []
    if len(file_ids) > MAX_CREATE_FILES:
        raise o.InvalidValue(f"file_ids may hold at most {MAX_CREATE_FILES} files.", param="file_ids")
    strategy = o.effective_chunking(req.chunking_strategy)
    entries = [Attach(fid, {}, strategy) for fid in file_ids]
    store_id = new_store_id()
    async with tenant_transaction(pool, tenant_id) as conn:
        await conn.execute(
            "INSERT INTO vector_stores (id, tenant_id, name, description, metadata, expires_after_days, expires_at)"
            " VALUES (%s, %s, %s, %s, %s::jsonb, %s, now() + make_interval(days => %s))",
            (store_id, tenant_id, name, description, msgspec.json.encode(metadata).decode(), days, days),
        )
        ids = await attach_rows(conn, tenant_id, key_id, store_id, entries) if entries else []
        found = await _get(conn, tenant_id, store_id)
    await submit(queue, tenant_id, store_id, ids)
    return found


async def get_store(pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str) -> o.VectorStoreObject:
    async with tenant_transaction(pool, tenant_id) as conn:
        return await _get(conn, tenant_id, store_id)


async def list_stores(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, page: PageQuery
) -> tuple[list[o.VectorStoreObject], bool]:
    """A page of the tenant's stores by creation time; and whether more follow."""
    page = page.check()
    ks = keyset(
        page, "(s.created_at, s.id)", "SELECT created_at, id FROM vector_stores WHERE tenant_id = %s AND id = %s",
        [tenant_id],
    )
    where = ["s.tenant_id = %s", *ks.where]
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            _SELECT + f" WHERE {' AND '.join(where)} ORDER BY {ks.order_by} LIMIT %s",
            [tenant_id, *ks.params, page.limit + 1],
        )
        rows = await cur.fetchall()
    found = [_store(r) for r in rows[: page.limit]]
    if ks.reverse:
        found.reverse()
    return found, len(rows) > page.limit


async def modify_store(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, req: o.UpdateVectorStoreRequest
) -> o.VectorStoreObject:
    """Change what was sent: ``name``, ``metadata``, ``expires_after``; ``null`` clears. The expiry is counted
    from ``last_active_at``; an expired store takes no new policy."""
    sets: list[str] = []
    params: list[object] = []
    if not isinstance(req.name, msgspec.UnsetType):
        sets.append("name = %s")
        params.append(o.check_text(req.name, "name", o.MAX_NAME_CHARS))
    if not isinstance(req.metadata, msgspec.UnsetType):
        sets.append("metadata = %s::jsonb")
        params.append(msgspec.json.encode(o.check_metadata(req.metadata)).decode())
    new_expiry = not isinstance(req.expires_after, msgspec.UnsetType)
    if not isinstance(req.expires_after, msgspec.UnsetType):
        days = o.check_expires_after(req.expires_after)
        sets.append("expires_after_days = %s, expires_at = last_active_at + make_interval(days => %s)")
        params += [days, days]
    async with tenant_transaction(pool, tenant_id) as conn:
        expired = await lock_store(conn, tenant_id, store_id)
        if expired and new_expiry:
            raise VectorStoreExpired("The vector store has expired; its expiry cannot change.", param="expires_after")
        if sets:
            await conn.execute(
                f"UPDATE vector_stores SET {', '.join(sets)} WHERE id = %s AND tenant_id = %s",
                [*params, store_id, tenant_id],
            )
        return await _get(conn, tenant_id, store_id)


async def delete_store(pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str) -> None:
    """Delete the store with its attached files' rows, batches and chunks (cascades); the files stay."""
    if not is_store_id(store_id):
        raise store_not_found(store_id)
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute("DELETE FROM vector_stores WHERE id = %s AND tenant_id = %s", (store_id, tenant_id))
        if cur.rowcount == 0:
            raise store_not_found(store_id)


async def expire_due(pool: AsyncConnectionPool) -> int:
    """Detach every file (and so every chunk) of the stores whose ``expires_at`` has passed; the number of
    stores cleaned. Called periodically by the ingestion queue's sweep, across tenants: the due stores are
    found unscoped, then each tenant's are cleaned in its own tenant transaction (re-checked there)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT s.tenant_id, s.id FROM vector_stores s WHERE s.expires_at <= now()"
            " AND EXISTS (SELECT 1 FROM vector_store_files f WHERE f.vector_store_id = s.id)"
            " ORDER BY s.tenant_id, s.id"
        )
        due = await cur.fetchall()
    by_tenant: dict[uuid.UUID, list[str]] = {}
    for tenant_id, store_id in due:
        by_tenant.setdefault(tenant_id, []).append(store_id)
    cleaned = 0
    for tenant_id, store_ids in by_tenant.items():
        for start in range(0, len(store_ids), EXPIRE_BATCH):
            async with tenant_transaction(pool, tenant_id) as conn:
                cur = await conn.execute(
                    "DELETE FROM vector_store_files WHERE tenant_id = %s AND vector_store_id IN"
                    " (SELECT id FROM vector_stores WHERE tenant_id = %s AND id = ANY(%s) AND expires_at <= now())"
                    " RETURNING vector_store_id",
                    (tenant_id, tenant_id, store_ids[start : start + EXPIRE_BATCH]),
                )
                cleaned += len({r[0] for r in await cur.fetchall()})
    return cleaned
