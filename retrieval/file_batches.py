"""File batches (``vector_store_file_batches``): attach up to 2,000 files at once, follow them, cancel them.

A batch's status is derived from its files (those whose ``batch_id`` is the batch) and its ``cancelled_at``:
``in_progress`` while any file is; then ``cancelled`` if it was cancelled; ``failed`` if every file failed;
else ``completed`` (as OpenAI's pollers expect: a batch with some failed files completes, and the caller
reads ``file_counts.failed``). Cancelling turns the batch's ``in_progress`` files ``cancelled``; ingestion
writes a file's chunks only while its row is still ``in_progress``, so a cancelled file is never completed.
A file already attached to the store joins the batch as it is (``in_progress`` or ``completed``), or is
attached anew if it had failed or was cancelled (see ``store_files``).
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from retrieval import objects as o
from retrieval.errors import FileBatchNotFound
from retrieval.jobs import IngestionQueue
from retrieval.paging import PageQuery
from retrieval.store_files import (
    Attach,
    VectorStoreExpired,
    attach_entry,
    attach_rows,
    list_store_files,
    lock_store,
    store_exists,
    submit,
)
from retrieval.tenancy import tenant_transaction

MAX_BATCH_FILES = 2_000
_ID = re.compile(r"vsfb_[A-Za-z0-9_-]{1,64}")


def new_batch_id() -> str:
    return "vsfb_" + secrets.token_urlsafe(18)


def _not_found(batch_id: str) -> FileBatchNotFound:
    return FileBatchNotFound(f"No file batch found with id '{batch_id[:80]}'.", param="batch_id")


_SELECT = """
SELECT b.id, extract(epoch FROM b.created_at)::bigint, b.vector_store_id, b.cancelled_at IS NOT NULL,
       c.in_progress, c.completed, c.failed, c.cancelled, c.total
FROM vector_store_file_batches b
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE f.status = 'in_progress') AS in_progress,
           count(*) FILTER (WHERE f.status = 'completed') AS completed,
           count(*) FILTER (WHERE f.status = 'failed') AS failed,
           count(*) FILTER (WHERE f.status = 'cancelled') AS cancelled,
           count(*) AS total
    FROM vector_store_files f WHERE f.batch_id = b.id AND f.tenant_id = b.tenant_id
) c
WHERE b.id = %s AND b.vector_store_id = %s AND b.tenant_id = %s
"""


def _batch(row: Sequence[Any]) -> o.FileBatchObject:
    counts = o.FileCounts(in_progress=row[4], completed=row[5], failed=row[6], cancelled=row[7], total=row[8])
    if counts.in_progress:
        status: o.Status = "in_progress"
    elif row[3]:
        status = "cancelled"
    elif counts.total and counts.failed == counts.total:
        status = "failed"
    else:
        status = "completed"
    return o.FileBatchObject(
        id=row[0], created_at=row[1], vector_store_id=row[2], status=status, file_counts=counts
    )


async def _get(conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_id: str, batch_id: str) -> o.FileBatchObject:
    await store_exists(conn, tenant_id, store_id)
    if _ID.fullmatch(batch_id) is None:
        raise _not_found(batch_id)
    cur = await conn.execute(_SELECT, (batch_id, store_id, tenant_id))
    row = await cur.fetchone()
    if row is None:
        raise _not_found(batch_id)
    return _batch(row)


def batch_entries(req: o.CreateFileBatchRequest) -> list[Attach]:
    """The files to attach, checked: ``file_ids`` share the top-level attributes and strategy; each of
    ``files`` has its own (the top-level ones are then ignored, as OpenAI documents)."""
    if (req.file_ids is None) == (req.files is None):
        raise o.InvalidValue("Send either 'file_ids' or 'files' (not both).", param="file_ids")
    count = len(req.file_ids) if req.file_ids is not None else len(req.files or [])
    param = "file_ids" if req.file_ids is not None else "files"
    if not 1 <= count <= MAX_BATCH_FILES:
        raise o.InvalidValue(f"A batch holds 1 to {MAX_BATCH_FILES} files.", param=param)
    if req.file_ids is not None:
        shared = attach_entry("", req.attributes, req.chunking_strategy, "file_id")
        return [Attach(fid, shared.attributes, shared.chunking_strategy) for fid in req.file_ids]
    return [
        attach_entry(f.file_id, f.attributes, f.chunking_strategy, f"files[{i}]") for i, f in enumerate(req.files or [])
    ]


async def create_batch(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, key_id: uuid.UUID | None, store_id: str,
    req: o.CreateFileBatchRequest, queue: IngestionQueue,
) -> o.FileBatchObject:
    entries = batch_entries(req)
    batch_id = new_batch_id()
    async with tenant_transaction(pool, tenant_id) as conn:
        if await lock_store(conn, tenant_id, store_id):
            raise VectorStoreExpired("The vector store has expired; create a new one.", param="vector_store_id")
        await conn.execute(
            "INSERT INTO vector_store_file_batches (id, tenant_id, vector_store_id) VALUES (%s, %s, %s)",
            (batch_id, tenant_id, store_id),
        )
        ids = await attach_rows(
            conn, tenant_id, key_id, store_id, entries, batch_id=batch_id,
            param="file_ids" if req.file_ids is not None else "files",
        )
        found = await _get(conn, tenant_id, store_id, batch_id)
    await submit(queue, tenant_id, store_id, ids)
    return found


async def get_batch(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, batch_id: str
) -> o.FileBatchObject:
    async with tenant_transaction(pool, tenant_id) as conn:
        return await _get(conn, tenant_id, store_id, batch_id)


async def cancel_batch(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, batch_id: str
) -> o.FileBatchObject:
    """Cancel the batch's files still in progress. A batch with none left in progress is answered as it is
    (cancelling a finished batch changes nothing)."""
    async with tenant_transaction(pool, tenant_id) as conn:
        await _get(conn, tenant_id, store_id, batch_id)
        cur = await conn.execute(
            "UPDATE vector_store_files SET status = 'cancelled', updated_at = now()"
            " WHERE tenant_id = %s AND vector_store_id = %s AND batch_id = %s AND status = 'in_progress'",
            (tenant_id, store_id, batch_id),
        )
        if cur.rowcount:
            await conn.execute(
                "UPDATE vector_store_file_batches SET cancelled_at = coalesce(cancelled_at, now())"
                " WHERE id = %s AND tenant_id = %s",
                (batch_id, tenant_id),
            )
        return await _get(conn, tenant_id, store_id, batch_id)


async def list_batch_files(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, batch_id: str, page: PageQuery, *,
    status: str | None = None,
) -> tuple[list[o.VectorStoreFileObject], bool]:
    async with tenant_transaction(pool, tenant_id) as conn:
        await _get(conn, tenant_id, store_id, batch_id)
    return await list_store_files(pool, tenant_id, store_id, page, status=status, batch_id=batch_id)
