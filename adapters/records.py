"""The ``adapters`` table: a tenant's adapters, their answer shape, and the file lifecycle tied to the rows.

Every tenant statement runs in a tenant-scoped transaction (``retrieval.tenancy``: row-level security behind
the ``WHERE tenant_id = ...`` each one carries) and sends ``NOTIFY tenantgate_adapters`` (the adapter id) in the
same transaction, so every gateway replica's directory follows.

Files and rows stay consistent through one advisory lock per checksum, held by the transaction that creates
or deletes a row with that checksum: ``create`` stores the files and inserts the row under it; ``finish_delete``
deletes the row, counts the rows of any tenant that still name the checksum and, if none, removes the folder,
under it too. So a folder is never removed while another upload of the same bytes is between storing and
committing its row, and a row never commits without its files. A crash between removing the folder and
committing leaves a row in ``deleting`` (never served) without files: that is allowed; a ``ready`` or ``failed``
row always has its files.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from adapters.errors import AdapterNameTaken, AdapterNotFound, InvalidAdapter
from adapters.storage import AdapterStore, StoredFiles
from retrieval.paging import PageQuery, keyset
from retrieval.tenancy import tenant_transaction

__all__ = [
    "CHANNEL",
    "AdapterDeleted",
    "AdapterList",
    "AdapterObject",
    "AdapterRow",
    "LastError",
    "NewAdapter",
    "begin_delete",
    "check_name",
    "clip",
    "create",
    "finish_delete",
    "finish_stale_deletes",
    "get",
    "list_adapters",
    "mark_failed",
    "name_taken",
    "new_engine_name",
    "ready_rows",
    "release_files",
]

log = logging.getLogger(__name__)

CHANNEL = "tenantgate_adapters"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ID = re.compile(r"adapter-[0-9a-f]{24}")
# Names the engines may list themselves (an adapter's engine name, the identity adapter): a tenant adapter of
# such a name would be shadowed by the engine's own model of that name.
_RESERVED = re.compile(r"tga-[0-9a-f]{32}|tg-identity-.*")
# The first key of every per-checksum advisory lock (the second is the checksum's hash): "tg adapters".
_LOCK_SPACE = 0x7467_0011
_NAME_INDEX = "adapters_tenant_name_idx"


# -- answer shapes --------------------------------------------------------------------------------------------


class LastError(msgspec.Struct, frozen=True):
    code: str
    message: str


class AdapterObject(msgspec.Struct, kw_only=True, frozen=True):
    """An adapter as the API answers it."""

    id: str
    object: Literal["adapter"] = "adapter"
    name: str
    base_model: str
    status: Literal["ready", "failed"]
    rank: int
    target_modules: list[str]
    bytes: int
    checksum: str
    created_at: int
    last_error: LastError | None = None


class AdapterList(msgspec.Struct, frozen=True):
    data: list[AdapterObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class AdapterDeleted(msgspec.Struct, frozen=True):
    id: str
    object: Literal["adapter.deleted"] = "adapter.deleted"
    deleted: bool = True


@dataclass(frozen=True, slots=True)
class AdapterRow:
    """A row, with what the answer leaves out (tenant, engine name)."""

    id: str
    tenant_id: uuid.UUID
    name: str
    base_model: str
    engine_name: str
    checksum: str
    bytes: int
    rank: int
    target_modules: tuple[str, ...]
    status: str
    last_error: dict[str, Any] | None
    created_at: int

    def public(self) -> AdapterObject:
        error = self.last_error
        return AdapterObject(
            id=self.id, name=self.name, base_model=self.base_model,
            status="failed" if self.status == "failed" else "ready", rank=self.rank,
            target_modules=list(self.target_modules), bytes=self.bytes, checksum=self.checksum,
            created_at=self.created_at,
            last_error=LastError(str(error.get("code", "")), str(error.get("message", ""))) if error else None,
        )


@dataclass(frozen=True, slots=True)
class NewAdapter:
    """What an upload stores: the name, the base model and what validation found."""

    name: str
    base_model: str
    checksum: str
    bytes: int
    rank: int
    target_modules: tuple[str, ...]


_COLS = (
    "id, tenant_id, name, base_model, engine_name, checksum, bytes, rank, target_modules, status, last_error,"
    " extract(epoch FROM created_at)::bigint"
)


def _row(r: tuple[Any, ...]) -> AdapterRow:
    return AdapterRow(
        id=r[0], tenant_id=r[1], name=r[2], base_model=r[3], engine_name=r[4], checksum=r[5], bytes=r[6],
        rank=r[7], target_modules=tuple(r[8]), status=r[9], last_error=r[10], created_at=int(r[11]),
    )


# -- names ------------------------------------------------------------------------------------------------------


def clip(text: str, limit: int = 80) -> str:
    """A user string fit to echo: printable characters only, at most ``limit`` of them."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def check_name(name: str) -> str:
    """``name`` if it follows the rule (1-64 letters, digits, ``-``, ``_``, ``.``; not ``.`` or ``..``, which no
    URL path can carry; not an engine-side name), else :class:`InvalidAdapter` (param ``name``)."""
    if _NAME.fullmatch(name) is None:
        raise InvalidAdapter(
            f"Invalid adapter name '{clip(name)}': use 1 to 64 letters, digits, '-', '_' or '.'.", param="name"
        )
    if name in (".", ".."):
        raise InvalidAdapter(f"Invalid adapter name '{name}': a name of dots only cannot be used.", param="name")
    if _RESERVED.fullmatch(name):
        raise InvalidAdapter(f"Invalid adapter name '{name}': names like it are reserved for engines.", param="name")
    return name


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except InvalidAdapter:
        return False
    return True


def new_adapter_id() -> str:
    return "adapter-" + secrets.token_hex(12)


def new_engine_name() -> str:
    """What vLLM is told: random, so it reveals neither tenant nor name, and never the same twice."""
    return "tga-" + secrets.token_hex(16)


def _not_found(name: str) -> AdapterNotFound:
    return AdapterNotFound(f"No adapter named '{clip(name)}'.", param="name")


# -- shared steps -----------------------------------------------------------------------------------------------


async def _notify(conn: AsyncConnection[Any], adapter_id: str) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, adapter_id))


async def _lock_checksum(conn: AsyncConnection[Any], checksum: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, checksum))


async def _users(conn: AsyncConnection[Any], checksum: str) -> int:
    """Rows of any tenant naming ``checksum`` (the transaction holds its lock)."""
    cur = await conn.execute("SELECT adapter_checksum_users(%s)", (checksum,))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def _remove_if_unused(conn: AsyncConnection[Any], store: AdapterStore, checksum: str) -> bool:
    await _lock_checksum(conn, checksum)
    if await _users(conn, checksum):
        return False
    await asyncio.to_thread(store.remove, checksum)
    return True


# -- the operations ---------------------------------------------------------------------------------------------


async def create(
    pool: AsyncConnectionPool[Any], store: AdapterStore, tenant_id: uuid.UUID, new: NewAdapter, files: StoredFiles
) -> AdapterRow:
    """Insert the row (status ``ready``) and store the files under the checksum's lock, in one transaction.

    :class:`AdapterNameTaken` when the tenant has a live adapter of that name (then nothing was stored). If
    anything fails after the files were stored, they are removed again unless another row uses them."""
    check_name(new.name)
    stored = False
    try:
        async with tenant_transaction(pool, tenant_id) as conn:
            await _lock_checksum(conn, new.checksum)
            try:
                cur = await conn.execute(
                    "INSERT INTO adapters (id, tenant_id, name, base_model, engine_name, checksum, bytes, rank,"
                    " target_modules, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'ready')"
                    f" RETURNING {_COLS}",
                    (new_adapter_id(), tenant_id, new.name, new.base_model, new_engine_name(), new.checksum,
                     new.bytes, new.rank, list(new.target_modules)),
                )
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == _NAME_INDEX:
                    raise AdapterNameTaken(
                        f"This tenant already has an adapter named '{new.name}'.", param="name"
                    ) from None
                raise
            row = await cur.fetchone()
            assert row is not None
            created = _row(row)
            await asyncio.to_thread(store.put, files, new.checksum)
            stored = True
            await _notify(conn, created.id)
    except BaseException:
        if stored:
            await _release_quietly(pool, store, tenant_id, new.checksum)
        raise
    return created


async def release_files(
    pool: AsyncConnectionPool[Any], store: AdapterStore, tenant_id: uuid.UUID, checksum: str
) -> bool:
    """Remove the stored folder of ``checksum`` if no row of any tenant names it; whether it was removed."""
    async with tenant_transaction(pool, tenant_id) as conn:
        return await _remove_if_unused(conn, store, checksum)


async def _release_quietly(
    pool: AsyncConnectionPool[Any], store: AdapterStore, tenant_id: uuid.UUID, checksum: str
) -> None:
    try:
        await release_files(pool, store, tenant_id, checksum)
    except Exception:  # the database went away too: an unused folder stays behind, harmless
        log.warning("could not remove the files of a failed upload (%s)", checksum, exc_info=True)


async def name_taken(pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, name: str) -> bool:
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            "SELECT 1 FROM adapters WHERE tenant_id = %s AND name = %s AND status <> 'deleting'", (tenant_id, name)
        )
        return await cur.fetchone() is not None


async def get(pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, name: str) -> AdapterRow:
    """The tenant's adapter called ``name`` (``ready`` or ``failed``); :class:`AdapterNotFound` otherwise."""
    if not _valid_name(name):
        raise _not_found(name)
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            f"SELECT {_COLS} FROM adapters WHERE tenant_id = %s AND name = %s AND status <> 'deleting'",
            (tenant_id, name),
        )
        row = await cur.fetchone()
    if row is None:
        raise _not_found(name)
    return _row(row)


async def list_adapters(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, page: PageQuery
) -> tuple[list[AdapterRow], bool]:
    """A page of the tenant's adapters by creation time (cursors are adapter ids); and whether more follow."""
    page = page.check()
    ks = keyset(
        page, "(created_at, id)", "SELECT created_at, id FROM adapters WHERE tenant_id = %s AND id = %s", [tenant_id]
    )
    where = ["tenant_id = %s", "status <> 'deleting'", *ks.where]
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            f"SELECT {_COLS} FROM adapters WHERE {' AND '.join(where)} ORDER BY {ks.order_by} LIMIT %s",
            [tenant_id, *ks.params, page.limit + 1],
        )
        rows = await cur.fetchall()
    found = [_row(r) for r in rows[: page.limit]]
    if ks.reverse:
        found.reverse()
    return found, len(rows) > page.limit


async def begin_delete(pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, name: str) -> AdapterRow:
    """Mark the tenant's adapter ``name`` as ``deleting``: no longer listed or served, and the name is free
    at once. :class:`AdapterNotFound` when there is none."""
    if not _valid_name(name):
        raise _not_found(name)
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            "UPDATE adapters SET status = 'deleting', updated_at = now()"
            f" WHERE tenant_id = %s AND name = %s AND status <> 'deleting' RETURNING {_COLS}",
            (tenant_id, name),
        )
        row = await cur.fetchone()
        if row is None:
            raise _not_found(name)
        found = _row(row)
        await _notify(conn, found.id)
    return found


async def finish_delete(
    pool: AsyncConnectionPool[Any], store: AdapterStore, tenant_id: uuid.UUID, adapter: AdapterRow
) -> bool:
    """Delete the row; remove its files if no other row (any tenant, any status) names the checksum. Whether
    the files were removed."""
    async with tenant_transaction(pool, tenant_id) as conn:
        await _lock_checksum(conn, adapter.checksum)
        await conn.execute("DELETE FROM adapters WHERE id = %s AND tenant_id = %s", (adapter.id, tenant_id))
        removed = await _remove_if_unused(conn, store, adapter.checksum)
        await _notify(conn, adapter.id)
    return removed


async def finish_stale_deletes(pool: AsyncConnectionPool[Any], store: AdapterStore, older_than_s: float = 600.0) -> int:
    """Finish the deletes a gateway began and never ended (it crashed, or the database went away meanwhile):
    rows in ``deleting`` for longer than ``older_than_s``. Run at start-up; returns how many were finished."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_COLS} FROM adapters WHERE status = 'deleting'"
            " AND updated_at < now() - make_interval(secs => %s)",
            (older_than_s,),
        )
        stale = [_row(r) for r in await cur.fetchall()]
    for row in stale:
        await finish_delete(pool, store, row.tenant_id, row)
    if stale:
        log.info("finished %d adapter deletes left unfinished", len(stale))
    return len(stale)


async def mark_failed(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, adapter_id: str, code: str, message: str
) -> bool:
    """Mark a ``ready`` adapter ``failed`` with why (an engine refused its files); whether it was."""
    if _ID.fullmatch(adapter_id) is None:
        return False
    error = msgspec.json.encode({"code": code, "message": message[:1000]}).decode()
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            "UPDATE adapters SET status = 'failed', last_error = %s::jsonb, updated_at = now()"
            " WHERE tenant_id = %s AND id = %s AND status = 'ready' RETURNING id",
            (error, tenant_id, adapter_id),
        )
        changed = await cur.fetchone() is not None
        if changed:
            await _notify(conn, adapter_id)
    return changed


@dataclass(frozen=True, slots=True)
class ReadyRow:
    id: str
    tenant_id: uuid.UUID
    name: str
    base_model: str
    engine_name: str
    checksum: str
    rank: int


async def ready_rows(pool: AsyncConnectionPool[Any], ids: Sequence[str] | None = None) -> list[ReadyRow]:
    """Every tenant's ``ready`` adapters, or those among ``ids`` (for the directory; one query, read as the
    table's owner)."""
    sql = "SELECT id, tenant_id, name, base_model, engine_name, checksum, rank FROM adapters WHERE status = 'ready'"
    async with pool.connection() as conn:
        if ids is None:
            cur = await conn.execute(sql)
        else:
            cur = await conn.execute(sql + " AND id = ANY(%s)", (list(ids),))
        rows = await cur.fetchall()
    return [ReadyRow(*r) for r in rows]
