"""The durable ingestion queue: procrastinate (jobs in Postgres, LISTEN/NOTIFY, heartbeats, retries, cron).

Why procrastinate: a maintained library (3.x) on psycopg 3 with what this needs built in: a job per file
deferred with a *queueing lock* (a second submit of the same (store, file) while one waits is a no-op), a
*lock* (two jobs of one file never run at once), retries with back-off, worker heartbeats to find jobs whose
worker died, and periodic tasks deferred once across every worker. Its tables live in the gateway's
database; ``gateway/db/migrations.py`` applies its schema under the migrations' advisory lock.

The ``vector_store_files`` rows are the truth; a job is only a reminder. The sweep (a periodic task every
minute, and once when a worker starts) makes sure no row stays ``in_progress`` for ever:

- a job in ``doing`` whose worker stopped sending heartbeats (killed mid-job) is retried;
- a row ``in_progress`` for longer than ``stale_after_s`` with no job waiting or running for it (the job was
  lost, or failed for good) is submitted again, or ends ``failed`` (``server_error``) once its
  ``attempts`` reach ``max_attempts``;
- expired vector stores are removed (``retrieval.vector_stores.expire_due``), finished jobs older than a day
  deleted.

Sweeps read across tenants on a plain (owner) connection and change each tenant's rows in that tenant's own
scoped transaction (``retrieval.ingest``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate.job_context import JobContext
from psycopg_pool import AsyncConnectionPool

from retrieval.embedding import Embedder
from retrieval.ingest import IngestOptions, TokenizerSource, give_up_if_spent, ingest_file
from retrieval.jobs import IngestionQueue
from retrieval.preparing import DocumentPreparer
from retrieval.vector_stores import expire_due

__all__ = ["INGEST_TASK", "SWEEP_TASK", "IngestionApp", "ProcrastinateQueue", "SweepReport", "job_lock"]

log = logging.getLogger(__name__)

INGEST_TASK = "tenantgate.ingest_file"
SWEEP_TASK = "tenantgate.sweep"
QUEUE = "ingestion"
_SWEEP_ROWS = 500  # rows looked at per sweep (the next sweep takes the rest)


def job_lock(vector_store_id: str, file_id: str) -> str:
    """The lock and queueing lock of a file's job: one waiting and one running at most."""
    return f"ingest:{vector_store_id}:{file_id}"


@dataclass(frozen=True, slots=True)
class SweepReport:
    stalled_retried: int = 0
    requeued: int = 0
    failed: int = 0
    expired_stores: int = 0


class IngestionApp:
    """The procrastinate app with the ingestion and sweep tasks, bound to what the jobs need.

    ``db_url``: the queue's own small connection pool (the jobs themselves use ``pool``, the gateway's).
    ``retry_wait_s``: the first retry of a failed job waits this long, then twice as long each time.
    """

    def __init__(
        self, db_url: str, pool: AsyncConnectionPool[Any], embedder: Embedder, tokenizer: TokenizerSource, *,
        options: IngestOptions | None = None, retry_wait_s: float = 5.0, stale_after_s: float = 120.0,
        stalled_heartbeat_s: float = 30.0, queue_pool_size: int = 4, queue_name: str = QUEUE,
        preparer: DocumentPreparer | None = None,
    ) -> None:
        # Parsing and chunking: in a process of their own by default (see retrieval.preparing).
        self.preparer = preparer if preparer is not None else DocumentPreparer()
        self.queue_name = queue_name  # the procrastinate queue its jobs go to and its workers take from
        self.pool = pool
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.options = options = options or IngestOptions()
        self.stale_after_s = stale_after_s
        self.stalled_heartbeat_s = stalled_heartbeat_s
        connector = procrastinate.PsycopgConnector(conninfo=db_url, min_size=1, max_size=max(2, queue_pool_size))
        self.app = procrastinate.App(connector=connector)
        retry = procrastinate.RetryStrategy(
            max_attempts=max(0, options.max_attempts - 1), wait=int(retry_wait_s), exponential_wait=2
        )
        self.ingest_task = self.app.task(name=INGEST_TASK, queue=queue_name, retry=retry, pass_context=True)(
            self._run_ingest
        )
        sweep_task = self.app.task(name=SWEEP_TASK, queue=queue_name)(self._run_sweep)
        self.app.periodic(cron="* * * * *", periodic_id="sweep")(sweep_task)

    async def open(self) -> None:
        await self.app.open_async()

    async def close(self) -> None:
        await self.app.close_async()
        self.preparer.close()

    @property
    def queue(self) -> ProcrastinateQueue:
        return ProcrastinateQueue(self)

    # -- tasks -------------------------------------------------------------------------------------

    async def _run_ingest(self, context: JobContext, *, tenant_id: str, vector_store_id: str, file_id: str) -> None:
        tenant = uuid.UUID(tenant_id)
        try:
            outcome = await ingest_file(
                self.pool, self.embedder, self.tokenizer, tenant, vector_store_id, file_id, options=self.options,
                preparer=self.preparer,
            )
        except Exception as exc:
            if await give_up_if_spent(self.pool, tenant, vector_store_id, file_id, self.options.max_attempts, exc):
                log.warning(
                    "ingestion of %s in %s failed for good: %s", file_id, vector_store_id, type(exc).__name__
                )
                return
            raise  # procrastinate retries it later
        log.info(
            "ingestion of %s in %s: %s", file_id, vector_store_id, outcome.status,
            extra={"chunks": outcome.chunks, "copied": outcome.copied},
        )

    async def _run_sweep(self, timestamp: int) -> None:
        await self.sweep()

    # -- sweep -------------------------------------------------------------------------------------

    async def sweep(self, *, stale_after_s: float | None = None) -> SweepReport:
        """See the module docstring; safe to run anywhere, any number of times."""
        manager = self.app.job_manager
        stalled = list(
            await manager.get_stalled_jobs(task_name=INGEST_TASK, seconds_since_heartbeat=self.stalled_heartbeat_s)
        )
        for job in stalled:
            await manager.retry_job(job)
        requeued = failed = 0
        for tenant, vs_id, file_id, attempts in await self._orphans(stale_after_s):
            if attempts >= self.options.max_attempts:
                spent = RuntimeError("its job was lost")
                failed += await give_up_if_spent(self.pool, tenant, vs_id, file_id, self.options.max_attempts, spent)
            else:
                await self.queue.submit(tenant, vs_id, [file_id])
                requeued += 1
        expired = await expire_due(self.pool)
        await manager.delete_old_jobs(nb_hours=24, queue=self.queue_name, include_failed=True)
        report = SweepReport(len(stalled), requeued, failed, expired)
        if stalled or requeued or failed or expired:
            log.info("ingestion sweep", extra={"report": report})
        return report

    async def _orphans(self, stale_after_s: float | None) -> list[tuple[uuid.UUID, str, str, int]]:
        """Rows in_progress for a while with no job waiting for or running them (owner connection)."""
        stale = self.stale_after_s if stale_after_s is None else stale_after_s
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT f.tenant_id, f.vector_store_id, f.file_id, f.attempts FROM vector_store_files f"
                " WHERE f.status = 'in_progress' AND f.updated_at < now() - make_interval(secs => %s)"
                " AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.status IN ('todo', 'doing')"
                "   AND j.lock = 'ingest:' || f.vector_store_id || ':' || f.file_id)"
                " ORDER BY f.updated_at LIMIT %s",
                (stale, _SWEEP_ROWS),
            )
            return list(await cur.fetchall())


class ProcrastinateQueue(IngestionQueue):
    """:class:`~retrieval.jobs.IngestionQueue` over :class:`IngestionApp` (its app must be open)."""

    def __init__(self, ingestion: IngestionApp) -> None:
        self._ingestion = ingestion

    async def submit(self, tenant_id: uuid.UUID, vector_store_id: str, file_ids: Sequence[str]) -> None:
        task = self._ingestion.ingest_task
        for file_id in file_ids:
            lock = job_lock(vector_store_id, file_id)
            try:
                await task.configure(lock=lock, queueing_lock=lock).defer_async(
                    tenant_id=str(tenant_id), vector_store_id=vector_store_id, file_id=file_id
                )
            except pexc.AlreadyEnqueued:
                continue  # one is waiting already: it will read the row as it is then
