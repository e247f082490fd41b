"""Wiring of ingestion: the queue every gateway process submits to, and the workers that run its jobs.

:func:`open_ingestion` opens the queue (procrastinate, ``retrieval.queue``) and, when ``run_worker`` (the
``ingestion_in_gateway`` setting, the default), runs a worker in the same event loop as the gateway; ``tenantgate
worker`` runs only workers, for operators who scale ingestion apart. At shutdown the worker stops taking jobs
and gives the ones in flight ``shutdown_timeout`` seconds; a job cut short stays ``in_progress`` and is picked up
again by the sweep of any worker after the restart (its heartbeat stops, so it counts as stalled).

The tokenizer of the embedding model (:class:`EmbeddingTokenizer`) comes from the ``embedding_tokenizer``
setting, else from the folder the engine names as the model's ``root`` when it is readable here (true of the
local stack), else the file ends ``failed`` with a message naming the setting. Once loaded, it is checked
against the engine's own ``POST /tokenize`` where the engine has it: a different count is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway.db.pool import open_pool
from gateway.embedder import EngineEmbedder
from gateway.engines.client import EngineClient
from gateway.engines.http1 import HttpClient
from gateway.engines.pool import EnginePool
from gateway.engines.timeouts import EngineTimeouts
from gateway.settings import Settings
from observability.usage import UsageMeter
from retrieval.embedding import EmbeddingModel
from retrieval.errors import TokenizerUnavailable
from retrieval.ingest import IngestOptions
from retrieval.queue import QUEUE, IngestionApp, ProcrastinateQueue
from retrieval.tokens import Tokenizer

__all__ = ["EmbeddingTokenizer", "build_ingestion", "open_ingestion", "run_worker", "serve_worker"]

log = logging.getLogger(__name__)

_PROBE = "Tenantgate checks that its tokenizer counts like the engine: 42 tokens, naïvely?"


class EmbeddingTokenizer:
    """The :data:`retrieval.ingest.TokenizerSource` of the gateway: loaded once per model, then cached."""

    def __init__(self, embedder: EngineEmbedder, path: str | None = None) -> None:
        self._embedder = embedder
        self._path = path
        self._loaded: dict[str, Tokenizer] = {}
        self._lock = asyncio.Lock()

    async def __call__(self, model: EmbeddingModel) -> Tokenizer:
        found = self._loaded.get(model.name)
        if found is not None:
            return found
        async with self._lock:
            found = self._loaded.get(model.name)
            if found is None:
                found = self._loaded[model.name] = await self._load(model)
                await self._check(found)
        return found

    def _source(self, model: EmbeddingModel) -> str:
        if self._path is not None:
            return self._path
        root = self._embedder.card().root
        if root and Path(root, "tokenizer.json").is_file():
            return root
        raise TokenizerUnavailable(
            f"No tokenizer for the embedding model `{model.name}`: the engine's model folder is not readable here."
            " Set TENANTGATE_EMBEDDING_TOKENIZER to its tokenizer.json or model folder."
        )

    async def _load(self, model: EmbeddingModel) -> Tokenizer:
        source = self._source(model)
        try:
            return await asyncio.to_thread(Tokenizer.from_path, source)
        except Exception as exc:  # tokenizers raises plain Exceptions for unreadable or invalid files
            raise TokenizerUnavailable(
                f"The tokenizer of the embedding model `{model.name}` cannot be loaded from {source}"
                " (TENANTGATE_EMBEDDING_TOKENIZER)."
            ) from exc

    async def _check(self, tokenizer: Tokenizer) -> None:
        engine = await self._embedder.engine_token_count(_PROBE)
        if engine is None:
            return
        local = tokenizer.count(_PROBE) + tokenizer.special_tokens
        if engine != local:
            log.warning(
                "the embedding tokenizer counts %d tokens where the engine counts %d: chunks may not fit the"
                " engine; check TENANTGATE_EMBEDDING_TOKENIZER", local, engine,
            )


def build_ingestion(
    *, db_url: str, pool: AsyncConnectionPool[Any], embedder: EngineEmbedder, tokenizer_path: str | None = None,
    batch_size: int = 32, max_pages: int = 2000, max_attempts: int = 3, concurrency: int = 1,
    retry_wait_s: float = 5.0, stale_after_s: float = 120.0, queue_name: str = QUEUE,
) -> IngestionApp:
    options = IngestOptions(batch_size=batch_size, max_pages=max_pages, max_attempts=max_attempts)
    return IngestionApp(
        db_url, pool, embedder, EmbeddingTokenizer(embedder, tokenizer_path), options=options,
        retry_wait_s=retry_wait_s, stale_after_s=stale_after_s, queue_pool_size=concurrency + 3,
        queue_name=queue_name,
    )


async def run_worker(
    ingestion: IngestionApp, *, concurrency: int = 1, shutdown_timeout: float = 30.0, restart_delay: float = 5.0
) -> None:
    """Sweep once, then run a worker until cancelled (graceful: see the module docstring).

    procrastinate's worker stops when one of its side tasks fails (its LISTEN connection during a database
    outage, say): it is started again after ``restart_delay`` seconds, so ingestion comes back by itself."""
    while True:
        try:
            await ingestion.sweep()
        except Exception:  # a failed sweep must not keep the worker from working; the periodic one retries
            log.exception("ingestion sweep at worker start failed")
        try:
            await ingestion.app.run_worker_async(
                queues=[ingestion.queue_name], concurrency=concurrency, install_signal_handlers=False,
                delete_jobs="successful", shutdown_graceful_timeout=shutdown_timeout, name="ingestion",
            )
            log.warning("ingestion worker stopped by itself; starting it again in %g s", restart_delay)
        except Exception:
            log.exception("ingestion worker failed; starting it again in %g s", restart_delay)
        await asyncio.sleep(restart_delay)


@asynccontextmanager
async def open_ingestion(
    *, db_url: str, pool: AsyncConnectionPool[Any], embedder: EngineEmbedder, run_in_process: bool = True,
    tokenizer_path: str | None = None, batch_size: int = 32, max_pages: int = 2000, max_attempts: int = 3,
    concurrency: int = 1, shutdown_timeout: float = 30.0, retry_wait_s: float = 5.0, stale_after_s: float = 120.0,
) -> AsyncIterator[ProcrastinateQueue]:
    """The ingestion queue, open; with ``run_in_process``, a worker runs beside the gateway meanwhile."""
    ingestion = build_ingestion(
        db_url=db_url, pool=pool, embedder=embedder, tokenizer_path=tokenizer_path, batch_size=batch_size,
        max_pages=max_pages, max_attempts=max_attempts, concurrency=concurrency, retry_wait_s=retry_wait_s,
        stale_after_s=stale_after_s,
    )
    await ingestion.open()
    worker: asyncio.Task[None] | None = None
    try:
        if run_in_process:
            worker = asyncio.create_task(
                run_worker(ingestion, concurrency=concurrency, shutdown_timeout=shutdown_timeout),
                name="ingestion-worker",
            )
        yield ingestion.queue
    finally:
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        await ingestion.close()


async def serve_worker(settings: Settings, db_url: str, stop: asyncio.Event) -> None:
    """``tenantgate worker``: ingestion workers only (no HTTP), with the gateway's settings, until ``stop``."""
    db = await open_pool(db_url, min_size=1, max_size=settings.ingestion_concurrency + 3,
                         acquire_timeout=settings.db_pool_timeout)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(db.close)
        timeouts = EngineTimeouts(
            connect=settings.engine_connect_timeout, first_byte=settings.engine_first_byte_timeout,
            total=settings.engine_total_timeout,
        )
        http = HttpClient(connect_timeout=timeouts.connect, max_response_bytes=settings.engine_max_response_bytes)
        stack.push_async_callback(http.close)
        engines = EnginePool(http, (), settings.embedding_urls, timeouts=timeouts,
                             health_interval=settings.engine_health_interval)
        await engines.start()
        stack.push_async_callback(engines.stop)
        meter = UsageMeter(db, flush_interval=settings.usage_flush_interval, batch_size=settings.usage_batch_size,
                           max_pending=settings.usage_queue_max)
        await meter.start()
        stack.push_async_callback(meter.stop)
        embedder = EngineEmbedder(engines, EngineClient(engines, http, timeouts), meter, model=settings.embedding_model)
        async with open_ingestion(
            db_url=db_url, pool=db, embedder=embedder, run_in_process=True,
            tokenizer_path=settings.embedding_tokenizer, batch_size=settings.embedding_batch_size,
            max_pages=settings.max_file_pages, max_attempts=settings.ingestion_max_attempts,
            concurrency=settings.ingestion_concurrency, shutdown_timeout=settings.shutdown_timeout,
        ):
            log.info("ingestion worker ready", extra={"concurrency": settings.ingestion_concurrency})
            await stop.wait()
    log.info("ingestion worker stopped")
