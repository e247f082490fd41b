"""Everything tenant adapters need at run time, built once per gateway process (``open_adapter_runtime``).

- the store (``adapters.storage``) and the directory of ready adapters, followed from Postgres;
- placement (``adapters.placement``) over vLLM's runtime LoRA API (``gateway.engines.lora``);
- the engine pool's listing hook (``gateway.engines.adapter_guard``): LoRA support per replica, the identity
  adapter that isolates base traffic, placement's view reconciled with each replica's ``/v1/models``;
- the leases of adapter routes (``gateway.engines.adapter_leases``), which mark an adapter ``failed`` when an
  engine refuses its files;
- ``retire``: what a delete awaits (requests in flight finish, then the adapter is unloaded everywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from adapters import records
from adapters.directory import AdapterDirectory, AdapterEntry
from adapters.errors import AdapterLoadFailed
from adapters.placement import Placement
from adapters.storage import AdapterStore
from gateway.engines.adapter_guard import AdapterGuard
from gateway.engines.adapter_leases import AdapterLeases
from gateway.engines.http1 import HttpClient
from gateway.engines.lora import HttpLoraApi
from gateway.engines.replica import Replica
from gateway.engines.routes import AdapterRef
from gateway.settings import Settings

__all__ = ["AdapterRuntime", "open_adapter_runtime"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AdapterRuntime:
    settings: Settings
    db: AsyncConnectionPool[Any]
    store: AdapterStore
    directory: AdapterDirectory
    placement: Placement[Replica]
    guard: AdapterGuard
    leases: AdapterLeases = field(init=False)
    generate_replicas: tuple[Replica, ...] = ()  # set once the engine pool exists
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.leases = AdapterLeases(self.placement, on_bad_files=self._bad_files)

    async def retire(self, entry: AdapterEntry) -> None:
        """A deleted adapter: no new request gets it; those in flight finish; then it is unloaded everywhere."""
        await self.placement.retire(entry.engine_name, [r for r in self.generate_replicas if r.lora is not False])

    def _bad_files(self, adapter: AdapterRef, message: str) -> None:
        """An engine refused the adapter's files: it is ``failed`` (with the engine's reason) for every replica of
        the gateway, and out of the directory at once here."""
        entry = self.directory.get(adapter.id)
        if entry is None:
            return
        self.directory.drop(entry.id)
        task = asyncio.get_running_loop().create_task(self._mark_failed(entry, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mark_failed(self, entry: AdapterEntry, message: str) -> None:
        try:
            await records.mark_failed(self.db, entry.tenant_id, entry.id, AdapterLoadFailed.code, message)
        except Exception:
            log.warning("could not mark adapter %s failed", entry.id, exc_info=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task


@asynccontextmanager
async def open_adapter_runtime(
    settings: Settings, db: AsyncConnectionPool[Any], http: HttpClient
) -> AsyncIterator[AdapterRuntime]:
    """The runtime before the engine pool starts (the pool needs ``runtime.guard``); the directory is loaded and
    followed, unfinished deletes finished."""
    async with AsyncExitStack() as stack:
        store = AdapterStore(settings.adapter_path)
        directory = AdapterDirectory(store.folder)
        try:
            await records.finish_stale_deletes(db, store)
        except Exception:  # never a reason not to start: the next start tries again
            log.warning("could not finish the adapter deletes left unfinished", exc_info=True)
        await directory.refresh(db)
        follow = asyncio.get_running_loop().create_task(directory.follow(db), name="adapter-directory")
        stack.push_async_callback(_stop_task, follow)
        lora = HttpLoraApi(http, timeout=settings.engine_first_byte_timeout)
        placement: Placement[Replica] = Placement(lora, slots=settings.adapter_slots)
        guard = AdapterGuard(lora, settings.adapter_path / "identity", settings.adapter_base_model_dirs, placement)
        runtime = AdapterRuntime(settings, db, store, directory, placement, guard)
        stack.push_async_callback(runtime.close)
        yield runtime


async def _stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
