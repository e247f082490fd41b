"""Files attached to a vector store (``vector_store_files``): attach, list, retrieve, update attributes, detach,
and the parsed text (the file's chunks).

Attaching inserts the row ``in_progress`` (the file's sha256, the attaching key, the effective chunking
strategy) in one tenant transaction; the ingestion queue is asked after the commit, and a failed hand-off
only logs (the rows are the truth: the queue's sweep finds them). Attaching a file that is already attached
does not ingest it again: an ``in_progress`` or ``completed`` row is returned as it is (change its attributes
with an update), while a ``failed`` or ``cancelled`` one is attached anew (a retry with the new attributes and
strategy). Every query filters by tenant inside a tenant transaction (row-level security as second wall).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from retrieval import objects as o
from retrieval.errors import FileNotFound, InvalidRequest, VectorStoreFileNotFound, VectorStoreNotFound
from retrieval.files import is_file_id
from retrieval.jobs import IngestionQueue
from retrieval.paging import PageQuery, keyset
from retrieval.tenancy import tenant_transaction

log = logging.getLogger(__name__)

_STORE_ID = re.compile(r"vs_[A-Za-z0-9_-]{1,64}")
POLL_AFTER_MS = 500  # what an in_progress answer asks the SDK's pollers to wait


class VectorStoreExpired(InvalidRequest):
    code = "vector_store_expired"


class DuplicateFile(InvalidRequest):
    code = "duplicate_file_id"


def is_store_id(store_id: str) -> bool:
    return _STORE_ID.fullmatch(store_id) is not None


def store_not_found(store_id: str) -> VectorStoreNotFound:
    return VectorStoreNotFound(f"No vector store found with id '{store_id[:80]}'.", param="vector_store_id")


def _file_not_attached(store_id: str, file_id: str) -> VectorStoreFileNotFound:
    return VectorStoreFileNotFound(
        f"No file found with id '{file_id[:80]}' in vector store '{store_id[:80]}'.", param="file_id"
    )


def _no_such_file(file_id: str, param: str) -> FileNotFound:
    return FileNotFound(f"No such File object: {file_id[:80]}", param=param)


class Attach(msgspec.Struct, frozen=True):
    """One file to attach, checked: its attributes and effective strategy."""

    file_id: str
    attributes: o.Attributes
    chunking_strategy: o.StaticChunkingStrategy


# --- Reading rows -----------------------------------------------------------------------------------------------

_COLS = (
    "vsf.file_id, extract(epoch FROM vsf.created_at)::bigint, vsf.vector_store_id, vsf.status, vsf.last_error,"
    " vsf.chunking_strategy, vsf.attributes, vsf.usage_bytes"
)
_LAST_ERROR_CODES = ("server_error", "unsupported_file", "invalid_file")


def _last_error(value: Any) -> o.LastError | None:
    if not isinstance(value, dict):
        return None
    code = value.get("code")
    return o.LastError(
        code if code in _LAST_ERROR_CODES else "server_error", str(value.get("message") or "Ingestion failed.")
    )


def file_object(row: Sequence[Any]) -> o.VectorStoreFileObject:
    return o.VectorStoreFileObject(
        id=row[0], created_at=row[1], vector_store_id=row[2], status=row[3], last_error=_last_error(row[4]),
        chunking_strategy=o.chunking_from_row(row[5]), attributes=row[6], usage_bytes=row[7],
    )


# --- Stores, as the attaching code needs them -------------------------------------------------------------------


async def lock_store(conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_id: str) -> bool:
    """Lock the tenant's store row against a concurrent delete; ``True`` if it has expired."""
    if not is_store_id(store_id):
        raise store_not_found(store_id)
    cur = await conn.execute(
        "SELECT expires_at IS NOT NULL AND expires_at <= now() FROM vector_stores"
        " WHERE id = %s AND tenant_id = %s FOR NO KEY UPDATE",
        (store_id, tenant_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise store_not_found(store_id)
    return bool(row[0])


async def store_exists(conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_id: str) -> None:
    if not is_store_id(store_id):
        raise store_not_found(store_id)
    cur = await conn.execute("SELECT 1 FROM vector_stores WHERE id = %s AND tenant_id = %s", (store_id, tenant_id))
    if await cur.fetchone() is None:
        raise store_not_found(store_id)


async def touch_stores(conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_ids: Sequence[str]) -> None:
    """The stores were used now: ``last_active_at`` moves, and ``expires_at`` with it (an expired store stays
    expired)."""
    await conn.execute(
        "UPDATE vector_stores SET last_active_at = now(),"
        " expires_at = now() + make_interval(days => expires_after_days)"
        " WHERE tenant_id = %s AND id = ANY(%s) AND (expires_at IS NULL OR expires_at > now())",
        (tenant_id, list(store_ids)),
    )


# --- Attaching --------------------------------------------------------------------------------------------------


def check_entries(entries: Sequence[Attach], param: str) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.file_id in seen:
            raise DuplicateFile(f"The file '{entry.file_id[:80]}' is listed more than once.", param=param)
        seen.add(entry.file_id)


async def attach_rows(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, key_id: uuid.UUID | None, store_id: str,
    entries: Sequence[Attach], *, batch_id: str | None = None, param: str = "file_ids",
) -> list[str]:
    """Attach ``entries`` to the (locked, unexpired) store inside the caller's transaction; the ids that need
    ingesting (new rows and retried failed/cancelled ones). Every file must be the tenant's: the first that is
    not is a :class:`FileNotFound` naming it, and nothing is attached."""
    check_entries(entries, param)
    ids = [e.file_id for e in entries]
    for file_id in ids:
        if not is_file_id(file_id):
            raise _no_such_file(file_id, param)
    cur = await conn.execute("SELECT id, sha256 FROM files WHERE tenant_id = %s AND id = ANY(%s)", (tenant_id, ids))
    sha = {r[0]: r[1] for r in await cur.fetchall()}
    for file_id in ids:
        if file_id not in sha:
            raise _no_such_file(file_id, param)
    cur = await conn.execute(
        "SELECT file_id, status FROM vector_store_files WHERE tenant_id = %s AND vector_store_id = %s"
        " AND file_id = ANY(%s) ORDER BY file_id FOR UPDATE",
        (tenant_id, store_id, ids),
    )
    existing = {r[0]: r[1] for r in await cur.fetchall()}
    fresh = [e for e in entries if e.file_id not in existing]
    retry = [e for e in entries if existing.get(e.file_id) in ("failed", "cancelled")]
    submit: list[str] = []
    if fresh:
        cur = await conn.execute(
            "INSERT INTO vector_store_files (vector_store_id, file_id, tenant_id, batch_id, attributes,"
            " chunking_strategy, sha256, key_id, created_at)"
            " SELECT %s, a.file_id, %s, %s, a.attributes, a.chunking, f.sha256, %s,"
            " now() + a.n * interval '1 microsecond'"
            " FROM unnest(%s::text[], %s::jsonb[], %s::jsonb[]) WITH ORDINALITY AS a(file_id, attributes, chunking, n)"
            " JOIN files f ON f.id = a.file_id AND f.tenant_id = %s"
            " ORDER BY a.n ON CONFLICT (vector_store_id, file_id) DO NOTHING RETURNING file_id",
            (
                store_id, tenant_id, batch_id, key_id, [e.file_id for e in fresh],
                [msgspec.json.encode(e.attributes).decode() for e in fresh],
                [o.chunking_to_json(e.chunking_strategy) for e in fresh], tenant_id,
            ),
        )
        submit += [r[0] for r in await cur.fetchall()]
    for entry in retry:
        await conn.execute(
            "UPDATE vector_store_files SET status = 'in_progress', last_error = NULL, attributes = %s::jsonb,"
            " chunking_strategy = %s::jsonb, sha256 = %s, key_id = %s, batch_id = coalesce(%s, batch_id),"
            " usage_bytes = 0, attempts = 0, updated_at = now()"
            " WHERE tenant_id = %s AND vector_store_id = %s AND file_id = %s",
            (
                msgspec.json.encode(entry.attributes).decode(), o.chunking_to_json(entry.chunking_strategy),
                sha[entry.file_id], key_id, batch_id, tenant_id, store_id, entry.file_id,
            ),
        )
        submit.append(entry.file_id)
    if batch_id is not None:
        kept = [fid for fid, status in existing.items() if status not in ("failed", "cancelled")]
        if kept:
            await conn.execute(
                "UPDATE vector_store_files SET batch_id = %s"
                " WHERE tenant_id = %s AND vector_store_id = %s AND file_id = ANY(%s)",
                (batch_id, tenant_id, store_id, kept),
            )
    await touch_stores(conn, tenant_id, [store_id])
    return submit


async def submit(
    queue: IngestionQueue, tenant_id: uuid.UUID, store_id: str, file_ids: Sequence[str]
) -> None:
    """Hand committed ``in_progress`` rows to the queue; a failure only logs (the queue's sweep finds them)."""
    if not file_ids:
        return
    try:
        await queue.submit(tenant_id, store_id, list(file_ids))
    except Exception:
        log.warning("ingestion hand-off failed for %d file(s) of %s; the sweep will pick them up",
                    len(file_ids), store_id, exc_info=True)


def attach_entry(
    file_id: str, attributes: o.Attributes | None, strategy: o.ChunkingStrategyParam | None, param: str
) -> Attach:
    return Attach(
        file_id,
        o.check_attributes(attributes, f"{param}.attributes" if param != "file_id" else "attributes"),
        o.effective_chunking(strategy, f"{param}.chunking_strategy" if param != "file_id" else "chunking_strategy"),
    )


async def attach_file(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, key_id: uuid.UUID | None, store_id: str,
    req: o.CreateVectorStoreFileRequest, queue: IngestionQueue,
) -> o.VectorStoreFileObject:
    entry = attach_entry(req.file_id, req.attributes, req.chunking_strategy, "file_id")
    async with tenant_transaction(pool, tenant_id) as conn:
        if await lock_store(conn, tenant_id, store_id):
            raise VectorStoreExpired("The vector store has expired; create a new one.", param="vector_store_id")
        ids = await attach_rows(conn, tenant_id, key_id, store_id, [entry], param="file_id")
        found = await _get(conn, tenant_id, store_id, entry.file_id)
    await submit(queue, tenant_id, store_id, ids)
    return found


# --- Reading, updating, detaching -------------------------------------------------------------------------------


async def _get(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_id: str, file_id: str, *, lock: bool = False
) -> o.VectorStoreFileObject:
    if not is_file_id(file_id):
        raise _file_not_attached(store_id, file_id)
    cur = await conn.execute(
        f"SELECT {_COLS} FROM vector_store_files vsf"
        " WHERE vsf.tenant_id = %s AND vsf.vector_store_id = %s AND vsf.file_id = %s" + (" FOR UPDATE" if lock else ""),
        (tenant_id, store_id, file_id),
    )
    row = await cur.fetchone()
    if row is None:
        raise _file_not_attached(store_id, file_id)
    return file_object(row)


async def get_store_file(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, file_id: str
) -> o.VectorStoreFileObject:
    async with tenant_transaction(pool, tenant_id) as conn:
        await store_exists(conn, tenant_id, store_id)
        return await _get(conn, tenant_id, store_id, file_id)


async def list_store_files(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, page: PageQuery, *,
    status: str | None = None, batch_id: str | None = None,
) -> tuple[list[o.VectorStoreFileObject], bool]:
    """A page of the store's files (of one batch, if given), by attach time; and whether more follow."""
    page = page.check()
    if status is not None and status not in o.STATUSES:
        raise o.InvalidValue(f"filter must be one of: {', '.join(o.STATUSES)}.", param="filter")
    ks = keyset(
        page, "(vsf.created_at, vsf.file_id)",
        "SELECT created_at, file_id FROM vector_store_files"
        " WHERE tenant_id = %s AND vector_store_id = %s AND file_id = %s",
        [tenant_id, store_id],
    )
    where = ["vsf.tenant_id = %s", "vsf.vector_store_id = %s", *ks.where]
    params: list[object] = [tenant_id, store_id, *ks.params]
    if status is not None:
        where.append("vsf.status = %s")
        params.append(status)
    if batch_id is not None:
        where.append("vsf.batch_id = %s")
        params.append(batch_id)
    params.append(page.limit + 1)
    async with tenant_transaction(pool, tenant_id) as conn:
        await store_exists(conn, tenant_id, store_id)
        cur = await conn.execute(
            f"SELECT {_COLS} FROM vector_store_files vsf WHERE {' AND '.join(where)}"
            f" ORDER BY {ks.order_by} LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    found = [file_object(r) for r in rows[: page.limit]]
    if ks.reverse:
        found.reverse()
    return found, len(rows) > page.limit


async def update_attributes(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, file_id: str, attributes: o.Attributes | None
) -> o.VectorStoreFileObject:
    """New attributes for the file and, in the same transaction, for every chunk of it (filters read chunks)."""
    checked = o.check_attributes(attributes)
    encoded = msgspec.json.encode(checked).decode()
    async with tenant_transaction(pool, tenant_id) as conn:
        await store_exists(conn, tenant_id, store_id)
        await _get(conn, tenant_id, store_id, file_id, lock=True)
        await conn.execute(
            "UPDATE vector_store_files SET attributes = %s::jsonb"
            " WHERE tenant_id = %s AND vector_store_id = %s AND file_id = %s",
            (encoded, tenant_id, store_id, file_id),
        )
        await conn.execute(
            "UPDATE chunks SET attributes = %s::jsonb WHERE tenant_id = %s AND vector_store_id = %s AND file_id = %s",
            (encoded, tenant_id, store_id, file_id),
        )
        return await _get(conn, tenant_id, store_id, file_id)


async def detach_file(pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, file_id: str) -> None:
    """Detach the file; its chunks go with the row (foreign key cascade). The file itself stays."""
    async with tenant_transaction(pool, tenant_id) as conn:
        await store_exists(conn, tenant_id, store_id)
        if not is_file_id(file_id):
            raise _file_not_attached(store_id, file_id)
        cur = await conn.execute(
            "DELETE FROM vector_store_files WHERE tenant_id = %s AND vector_store_id = %s AND file_id = %s",
            (tenant_id, store_id, file_id),
        )
        if cur.rowcount == 0:
            raise _file_not_attached(store_id, file_id)


async def file_content(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, store_id: str, file_id: str
) -> o.FileContentPage:
    """The file's text as its chunks hold it, in order; the overlap a chunk shares with the one before is left
    out where the chunk's offsets allow it (its text is exactly its span of the extracted text). Empty until
    the file is ingested."""
    async with tenant_transaction(pool, tenant_id) as conn:
        await store_exists(conn, tenant_id, store_id)
        await _get(conn, tenant_id, store_id, file_id)
        cur = await conn.execute(
            "SELECT text, char_start, char_end FROM chunks"
            " WHERE tenant_id = %s AND vector_store_id = %s AND file_id = %s ORDER BY chunk_index",
            (tenant_id, store_id, file_id),
        )
        rows = await cur.fetchall()
    parts: list[o.ContentPart] = []
    covered = 0
    for text, start, end in rows:
        if len(text) == end - start and start < covered:
            text = text[min(covered, end) - start:]
        covered = max(covered, end)
        if text:
            parts.append(o.ContentPart(text))
    return o.FileContentPage(parts)
