"""Usage metering: one :class:`UsageEvent` per API request, written to ``usage_events`` off the response path.

The request path calls :meth:`UsageMeter.record`, which only appends to an in-memory deque. A background
task writes the pending events with ``COPY ... FROM STDIN (FORMAT BINARY)`` every ``flush_interval``
seconds, or as soon as ``batch_size`` events are pending, in transactions of at most ``batch_size`` rows.

Delivery is at-least-once while the process lives: a batch that fails goes back to the front of the queue
and is retried with exponential back-off (a database outage costs nothing but memory, up to
``max_pending`` events). :meth:`UsageMeter.stop` drains the queue on graceful shutdown. What a crash loses:
the events of the last flush interval, plus whatever could not be written during an ongoing outage.
A duplicate is possible only if the connection dies after the server committed a batch but before the
commit was acknowledged.

A row the database refuses (a data or integrity error: text it cannot hold, a number out of range) must
not hold the rest hostage: the batch is split in halves, each written in its own transaction, down to the
offending rows, which are dropped, counted in ``rejected`` and logged by request id. Any other error
(connection, missing table, server shutting down) is the database's problem, not the row's: the whole
unwritten remainder is requeued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import msgspec
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

__all__ = ["COLUMNS", "INT4_MAX", "UsageEvent", "UsageMeter"]

log = logging.getLogger(__name__)


class UsageEvent(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One API request, as stored in ``usage_events`` (fields in column order, less ``id``).

    ``created_at`` must be timezone-aware (UTC): when the request arrived. ``gc=False``: the fields are
    plain values, so the (possibly long) queue of events costs the garbage collector nothing.
    """

    created_at: datetime
    request_id: str
    tenant_id: UUID
    key_id: UUID
    endpoint: str  # 'chat.completions' | 'completions' | 'embeddings'
    model: str
    stream: bool
    status_code: int  # 499 when the client went away
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float
    ttft_ms: float | None = None  # time to first token, streams only
    # How the call ended: completed | rejected | client_disconnected | engine_error | timeout | server_shutdown
    end_reason: str | None = None


COLUMNS: Final = UsageEvent.__struct_fields__
_PG_TYPES: Final = (
    "timestamptz",
    "text",
    "uuid",
    "uuid",
    "text",
    "text",
    "bool",
    "int4",
    "text",
    "int4",
    "int4",
    "float8",
    "float8",
    "text",
)
_COPY_SQL: Final = f"COPY usage_events ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_DROP_WARNING_EVERY_S: Final = 10.0
# Errors that belong to a row, not to the database: SQLSTATE classes 22 and 23 from the server, and what
# psycopg's binary dumpers raise for a value they cannot encode (an int beyond int4, say).
_ROW_ERRORS: Final = (psycopg.DataError, psycopg.IntegrityError, OverflowError, ValueError, TypeError)
INT4_MAX: Final = 2**31 - 1
# Positions of the int4 columns in a row. psycopg's C binary dumper wraps an int beyond int4 silently
# (2**40 + 5 is stored as 5), so the range is checked here and a bad row is refused like any other.
_INT4_FIELDS: Final = tuple(
    i for i, (name, pg_type) in enumerate(zip(COLUMNS, _PG_TYPES, strict=True)) if pg_type == "int4"
)


class UsageMeter:
    """Buffers usage events in memory and writes them to Postgres in batches.

    ``record()`` must be called from the event loop's thread (it may wake the writer task).
    When ``max_pending`` events are waiting (say, during a long database outage), new events are
    dropped, not old ones: the oldest are the ones already waiting for the database, and keeping them
    keeps the stored history contiguous. Drops are counted in ``dropped`` and logged at most every 10 s.

    Counters: ``pending`` (recorded, not yet written, including a batch being written), ``written``,
    ``dropped``, ``rejected`` (rows the database refused, dropped after bisecting), ``failed_flushes``
    (flush attempts that raised).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        flush_interval: float = 1.0,
        batch_size: int = 1000,
        max_pending: int = 100_000,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        if flush_interval <= 0 or batch_size < 1 or max_pending < 1 or retry_initial <= 0:
            raise ValueError("flush_interval, batch_size, max_pending and retry_initial must be positive")
        self._pool = pool
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._retry_initial = retry_initial
        self._retry_max = max(retry_max, retry_initial)
        self._queue: deque[UsageEvent] = deque()
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_drop_warning = -_DROP_WARNING_EVERY_S
        self.written = 0
        self.dropped = 0
        self.rejected = 0
        self.failed_flushes = 0

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_flight

    def record(self, event: UsageEvent) -> None:
        """Queue one event: O(1), no I/O. Drops (and counts) it when ``max_pending`` are waiting."""
        queue = self._queue
        if len(queue) + self._in_flight >= self._max_pending:
            self._drop()
            return
        queue.append(event)
        if len(queue) >= self._batch_size:
            self._wake.set()

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_warning >= _DROP_WARNING_EVERY_S:
            self._last_drop_warning = now
            log.warning(
                "usage meter full: dropping new usage events",
                extra={"max_pending": self._max_pending, "dropped_total": self.dropped},
            )

    async def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="tenantgate-usage-meter")

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a deadline, not a cancel scope)
        """End the writer and write everything pending, retrying until done or ``timeout`` seconds pass.

        Events still pending at the deadline are lost (and logged as such).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            self._wake.set()
            await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drain(deadline)
        if self.pending:
            log.error("usage meter stopped with events unwritten", extra={"lost": self.pending})

    async def _drain(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        delay = self._retry_initial
        while self._queue:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout_at(deadline):
                    await self.flush(connect_timeout=remaining)
            except Exception as exc:  # includes TimeoutError at the deadline
                log.warning("usage flush failed during shutdown: %s", _describe(exc))
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                delay = min(delay * 2, self._retry_max)

    async def flush(self, *, connect_timeout: float | None = None) -> int:
        """Write everything pending now, in batches; returns how many events were written.

        On an error the failed batch goes back to the front of the queue and the error is raised
        (``connect_timeout`` bounds the wait for a pool connection; None: the pool's default).
        """
        async with self._lock:
            if not self._queue:
                return 0
            written = 0
            try:
                async with self._pool.connection(timeout=connect_timeout) as conn:
                    while self._queue:
                        written += await self._write_batch(conn)
            except Exception:
                self.failed_flushes += 1
                raise
            return written

    async def _write_batch(self, conn: AsyncConnection[Any]) -> int:
        """Write up to ``batch_size`` events; bisect around rows the database refuses (see the module doc).

        ``parts`` is a stack of unwritten slices, the next one to write on top. On an error that is not
        a row's, every unwritten slice goes back to the front of the queue in order and the error is raised.
        """
        queue = self._queue
        popleft = queue.popleft
        batch = [popleft() for _ in range(min(len(queue), self._batch_size))]
        parts = [batch]
        self._in_flight = len(batch)
        written = 0
        try:
            while parts:
                rows = parts[-1]
                try:
                    await self._copy(conn, rows)
                except _ROW_ERRORS as exc:
                    parts.pop()
                    if len(rows) == 1:
                        self._reject(rows[0], exc)
                    else:
                        middle = len(rows) // 2
                        parts += (rows[middle:], rows[:middle])
                else:
                    parts.pop()
                    written += len(rows)
                    self.written += len(rows)
                self._in_flight = sum(map(len, parts))
        except BaseException:
            queue.extendleft(event for rows in parts for event in reversed(rows))
            raise
        finally:
            self._in_flight = 0
        return written

    @staticmethod
    async def _copy(conn: AsyncConnection[Any], rows: list[UsageEvent]) -> None:
        """COPY ``rows`` in one transaction: all of them are stored, or none."""
        async with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY_SQL) as copy:
            copy.set_types(_PG_TYPES)
            astuple = msgspec.structs.astuple
            for event in rows:
                row = astuple(event)
                for i in _INT4_FIELDS:
                    if not -INT4_MAX - 1 <= row[i] <= INT4_MAX:
                        raise ValueError(f"{COLUMNS[i]}={row[i]} is out of range for an int4 column")
                await copy.write_row(row)

    def _reject(self, event: UsageEvent, exc: BaseException) -> None:
        self.rejected += 1
        log.error(
            "usage event refused by the database, dropped: %s",
            _describe(exc),
            extra={"usage_request_id": event.request_id[:128], "rejected_total": self.rejected},
        )

    async def _run(self) -> None:
        """Flush every interval (or sooner, when a batch is full); back off while flushes fail, logging one
        line when they begin to fail and one when they work again, not one per attempt."""
        delay = 0.0
        failing_since: float | None = None
        while not self._stopping.is_set():
            if delay:
                await _wait(self._stopping, delay)
            else:
                await _wait(self._wake, self._flush_interval)
            if self._stopping.is_set():
                return
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:
                delay = min(max(delay * 2, self._retry_initial), self._retry_max)
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("usage flushes fail, events kept and retried with back-off: %s", _describe(exc),
                                extra={"pending": self.pending})
                else:
                    log.debug("usage flush failed again: %s", _describe(exc), extra={"retry_in_s": delay})
            else:
                delay = 0.0
                if failing_since is not None:
                    log.info("usage flushes work again", extra={
                        "failing_s": round(time.monotonic() - failing_since, 1), "pending": self.pending})
                    failing_since = None


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()
