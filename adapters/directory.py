"""Every tenant's ready adapters, in memory: what the inference path reads to resolve a name, with no I/O.

The source of truth is the ``adapters`` table. :meth:`AdapterDirectory.refresh` reloads it whole (one query;
thousands of rows cost milliseconds); :meth:`AdapterDirectory.follow` keeps it current: it LISTENs on
``tenantgate_adapters`` on a connection of its own (each change to the table notifies there with the adapter's
id, from any gateway replica), reloads the adapters named shortly after (debounced, so a burst costs one
query), everything every ``interval`` seconds anyway and after each reconnection, and reconnects with back-off
while the database is away (logging once). A whole reload of 10,000 adapters takes tens of milliseconds of
this process's CPU, so notifications reload only what they name.

A replica's own changes are applied at once (:meth:`apply`, :meth:`drop`), without waiting for the
notification; a refresh whose query ran while such a change was made replays it on top of what it read,
so a reload never undoes a change it could not yet see.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from adapters.records import CHANNEL, ReadyRow, ready_rows

__all__ = ["AdapterDirectory", "AdapterEntry"]

log = logging.getLogger(__name__)

_MAX_IDS = 1000  # a burst naming more adapters than this reloads everything instead


async def _readable(fd: int, seconds: float) -> bool:
    """Whether ``fd`` became readable within ``seconds`` (one reader, no polling)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, _settle, ready)
    try:
        async with asyncio.timeout(seconds):
            await ready
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _connect_args(pool: AsyncConnectionPool[Any]) -> tuple[str, dict[str, Any]]:
    """How ``pool`` connects, for a connection of its own (LISTEN needs one that stays, outside the pool)."""
    if not isinstance(pool.conninfo, str) or not isinstance(pool.kwargs, dict | None):
        raise TypeError("the adapter directory follows a pool built from a connection string")
    return pool.conninfo, {**(pool.kwargs or {}), "autocommit": True}


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    """A ready adapter: ``path`` is its folder in the store (what the engine loads), ``engine_name`` what the
    engine calls it."""

    id: str
    tenant_id: uuid.UUID
    name: str
    base_model: str
    engine_name: str
    path: str
    rank: int


class AdapterDirectory:
    """``folder_of``: the store folder of a checksum (``AdapterStore.folder``)."""

    def __init__(self, folder_of: Callable[[str], Path]) -> None:
        self._folder_of = folder_of
        self._by_id: dict[str, AdapterEntry] = {}
        self._by_name: dict[tuple[uuid.UUID, str], AdapterEntry] = {}
        self._by_tenant: dict[uuid.UUID, dict[str, AdapterEntry]] = {}
        self._by_engine: dict[str, AdapterEntry] = {}
        self._seq = 0
        self._changes: list[tuple[int, str, AdapterEntry | None]] = []  # this replica's, since the last refresh
        self._refreshing = asyncio.Lock()
        self._paths: dict[str, str] = {}  # checksum -> folder: a reload of thousands of rows builds no Path

    # -- reads (the inference path) ---------------------------------------------------------------------------

    def lookup(self, tenant_id: uuid.UUID, name: str) -> AdapterEntry | None:
        return self._by_name.get((tenant_id, name))

    def for_tenant(self, tenant_id: uuid.UUID) -> list[AdapterEntry]:
        found = self._by_tenant.get(tenant_id)
        return list(found.values()) if found else []

    def by_engine_name(self, engine_name: str) -> AdapterEntry | None:
        return self._by_engine.get(engine_name)

    def get(self, adapter_id: str) -> AdapterEntry | None:
        return self._by_id.get(adapter_id)

    def __len__(self) -> int:
        return len(self._by_id)

    # -- this replica's own changes ---------------------------------------------------------------------------

    def entry(self, adapter_id: str, tenant_id: uuid.UUID, name: str, base_model: str, engine_name: str,
              checksum: str, rank: int) -> AdapterEntry:
        """The entry of a row (its path from the checksum)."""
        path = self._paths.get(checksum)
        if path is None:
            path = self._paths[checksum] = str(self._folder_of(checksum))
        return AdapterEntry(adapter_id, tenant_id, name, base_model, engine_name, path, rank)

    def apply(self, entry: AdapterEntry) -> None:
        """A ready adapter this replica just committed."""
        self._seq += 1
        self._changes.append((self._seq, entry.id, entry))
        self._put(entry)

    def drop(self, adapter_id: str) -> None:
        """An adapter this replica just took out of service (deleting, failed)."""
        self._seq += 1
        self._changes.append((self._seq, adapter_id, None))
        self._remove(adapter_id)

    def _put(self, entry: AdapterEntry) -> None:
        self._remove(entry.id)
        self._by_id[entry.id] = entry
        self._by_name[(entry.tenant_id, entry.name)] = entry
        self._by_tenant.setdefault(entry.tenant_id, {})[entry.name] = entry
        self._by_engine[entry.engine_name] = entry

    def _remove(self, adapter_id: str) -> None:
        old = self._by_id.pop(adapter_id, None)
        if old is None:
            return
        if self._by_name.get((old.tenant_id, old.name)) is old:
            del self._by_name[(old.tenant_id, old.name)]
        names = self._by_tenant.get(old.tenant_id)
        if names is not None and names.get(old.name) is old:
            del names[old.name]
            if not names:
                del self._by_tenant[old.tenant_id]
        if self._by_engine.get(old.engine_name) is old:
            del self._by_engine[old.engine_name]

    # -- reloading ----------------------------------------------------------------------------------------------

    async def refresh(self, pool: AsyncConnectionPool[Any]) -> None:
        """Reload every ready adapter from the database (one query)."""
        async with self._refreshing:
            started = self._seq
            rows = await ready_rows(pool)
            self._replace(rows, started)

    async def refresh_ids(self, pool: AsyncConnectionPool[Any], ids: Collection[str]) -> None:
        """Reload only the adapters ``ids`` (what notifications named): ready ones in, the others out."""
        async with self._refreshing:
            started = self._seq
            rows = await ready_rows(pool, list(ids))
            found = {row.id for row in rows}
            for adapter_id in ids:
                if adapter_id not in found:
                    self._remove(adapter_id)
            for row in rows:
                entry = self.entry(
                    row.id, row.tenant_id, row.name, row.base_model, row.engine_name, row.checksum, row.rank
                )
                if self._by_id.get(row.id) != entry:
                    self._put(entry)
            self._replay(started)

    def _replace(self, rows: Iterable[ReadyRow], started: int) -> None:
        old = self._by_id
        self._by_id, self._by_name, self._by_tenant, self._by_engine = {}, {}, {}, {}
        for row in rows:
            entry = self.entry(row.id, row.tenant_id, row.name, row.base_model, row.engine_name, row.checksum, row.rank)
            kept = old.get(row.id)
            self._put(kept if kept == entry else entry)  # the same object when unchanged: routes cached on it hold
        if len(self._paths) > 2 * len(self._by_id) + 1024:  # checksums no entry names any more
            used = {entry.path for entry in self._by_id.values()}
            self._paths = {c: p for c, p in self._paths.items() if p in used}
        self._replay(started)

    def _replay(self, started: int) -> None:
        for seq, adapter_id, change in self._changes:
            if seq > started:  # made while the query ran: it may not have seen it
                if change is None:
                    self._remove(adapter_id)
                else:
                    self._put(change)
        self._changes.clear()  # all committed before any later refresh's query starts

    async def follow(
        self, pool: AsyncConnectionPool[Any], *, debounce: float = 0.05, interval: float = 30.0,
        max_backoff: float = 30.0,
    ) -> None:
        """Keep the directory current until cancelled (run it as a task); survives the database going away."""
        backoff = 0.5
        down = False
        while True:
            try:
                conninfo, kwargs = _connect_args(pool)
                async with await psycopg.AsyncConnection.connect(conninfo, **kwargs) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await self.refresh(pool)  # after LISTEN: no change falls between the two
                    if down:
                        log.info("adapter directory: following the database again")
                        down = False
                    backoff = 0.5
                    await self._listen(conn, pool, debounce, interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not down:
                    log.warning("adapter directory: lost the database (%s); retrying", type(exc).__name__)
                    down = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)

    async def _listen(
        self, conn: psycopg.AsyncConnection[Any], pool: AsyncConnectionPool[Any], debounce: float, interval: float
    ) -> None:
        while True:
            # Wait for the socket ourselves: psycopg's own wait (``conn.notifies``) wakes every 100 ms to check
            # for interrupts, 10 loop wakes a second in every gateway process for a table that rarely changes.
            # (A notification that came with the LISTEN's answer sits in psycopg's backlog without making the
            # socket readable: its change was committed before the refresh that follows LISTEN, which saw it.)
            if not await _readable(conn.fileno(), interval):
                await self.refresh(pool)  # the periodic full reload
                continue
            ids: set[str] = set()
            async for note in conn.notifies(timeout=debounce):  # gather a burst into one query
                ids.add(note.payload)
            if not ids:  # something else was readable (a notice, a parameter change); a lost connection raised
                continue
            if len(ids) > _MAX_IDS:
                await self.refresh(pool)
            else:
                await self.refresh_ids(pool, ids)
