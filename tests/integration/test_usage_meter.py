"""UsageMeter against the real database: batching, shutdown, outages, back-pressure, hostile values."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from observability.usage import COLUMNS, UsageEvent, UsageMeter

TENANT = UUID("00000000-0000-4000-8000-000000000001")
KEY = UUID("00000000-0000-4000-8000-0000000000aa")
T0 = datetime(2024, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)


def make_event(i: int = 0, **overrides: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "created_at": T0 + timedelta(milliseconds=i),
        "request_id": f"req_{i:06d}",
        "tenant_id": TENANT,
        "key_id": KEY,
        "endpoint": "chat.completions",
        "model": "qwen",
        "stream": False,
        "status_code": 200,
        "latency_ms": 12.5,
    }
    fields.update(overrides)
    return UsageEvent(**fields)


async def stored(pool: AsyncConnectionPool[Any]) -> list[UsageEvent]:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {', '.join(COLUMNS)} FROM usage_events ORDER BY id")
        return [UsageEvent(**dict(zip(COLUMNS, row, strict=True))) for row in await cur.fetchall()]


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_record_and_flush_round_trips_every_field(db_pool: AsyncConnectionPool[Any]) -> None:
    events = [
        make_event(0),
        make_event(
            1,
            created_at=datetime(2024, 3, 2, 1, 30, 0, 123_456, tzinfo=timezone(timedelta(hours=2))),
            endpoint="completions",
            model="llama-3.1-8b:tenant-lora",
            stream=True,
            status_code=499,
            error_code="client_disconnected",
            prompt_tokens=1234,
            completion_tokens=56,
            latency_ms=1500.25,
            ttft_ms=87.125,
            end_reason="client_disconnected",
        ),
        make_event(
            2, endpoint="embeddings", key_id=uuid4(), tenant_id=uuid4(), status_code=503, error_code="x"
        ),
    ]
    meter = UsageMeter(db_pool)
    for event in events:
        meter.record(event)
    assert meter.pending == 3
    assert await meter.flush() == 3
    assert (meter.pending, meter.written, meter.dropped, meter.failed_flushes) == (0, 3, 0, 0)
    assert await stored(db_pool) == events
    assert await meter.flush() == 0


async def test_flush_writes_in_batches(db_pool: AsyncConnectionPool[Any]) -> None:
    meter = UsageMeter(db_pool, batch_size=7)
    events = [make_event(i) for i in range(30)]
    for event in events:
        meter.record(event)
    assert await meter.flush() == 30
    assert await stored(db_pool) == events


async def test_batch_size_triggers_early_flush(db_pool: AsyncConnectionPool[Any]) -> None:
    meter = UsageMeter(db_pool, flush_interval=60.0, batch_size=10)
    await meter.start()
    try:
        for i in range(9):
            meter.record(make_event(i))
        await asyncio.sleep(0.1)
        assert meter.written == 0
        meter.record(make_event(9))
        await eventually(lambda: meter.written == 10, within=2.0)
    finally:
        await meter.stop()
    assert len(await stored(db_pool)) == 10


async def test_flush_interval_writes_a_partial_batch(db_pool: AsyncConnectionPool[Any]) -> None:
    meter = UsageMeter(db_pool, flush_interval=0.05)
    await meter.start()
    try:
        meter.record(make_event(0))
        await eventually(lambda: meter.written == 1, within=2.0)
    finally:
        await meter.stop()


async def test_stop_flushes_everything_pending(db_pool: AsyncConnectionPool[Any]) -> None:
    meter = UsageMeter(db_pool, flush_interval=60.0, batch_size=1000)
    await meter.start()
    events = [make_event(i) for i in range(250)]
    for event in events:
        meter.record(event)
    await meter.stop()
    assert (meter.pending, meter.written) == (0, 250)
    assert await stored(db_pool) == events
    await meter.stop()  # a second stop is harmless


async def test_database_unreachable_then_back(
    clean_database_url: str, db_pool: AsyncConnectionPool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A pool that is not open yet stands for a database that cannot be reached: every attempt fails.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        clean_database_url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    )
    meter = UsageMeter(pool, flush_interval=0.02, retry_initial=0.02, retry_max=0.05)
    await meter.start()
    try:
        events = [make_event(i) for i in range(5)]
        for event in events:
            meter.record(event)
        with caplog.at_level(logging.INFO, logger="observability.usage"):
            await eventually(lambda: meter.failed_flushes >= 3)
            assert (meter.pending, meter.written) == (5, 0)
            await pool.open(wait=True)
            await eventually(lambda: meter.written == 5)
        await meter.stop()
        assert await stored(db_pool) == events
        # One line when the outage began and one when it ended, however many flushes failed in between.
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert len(lines) == 2, lines
        assert lines[0].startswith("usage flushes fail") and lines[1] == "usage flushes work again"
    finally:
        await meter.stop(timeout=0.1)
        await pool.close()


async def test_server_error_requeues_in_order(db_pool: AsyncConnectionPool[Any]) -> None:
    meter = UsageMeter(db_pool, batch_size=2)
    events = [make_event(i) for i in range(5)]
    async with db_pool.connection() as conn:
        await conn.execute("ALTER TABLE usage_events RENAME TO usage_events_offline")
        try:
            for event in events[:3]:
                meter.record(event)
            with pytest.raises(psycopg.errors.UndefinedTable):
                await meter.flush()
            assert (meter.pending, meter.written, meter.failed_flushes) == (3, 0, 1)
        finally:
            await conn.execute("ALTER TABLE usage_events_offline RENAME TO usage_events")
    for event in events[3:]:
        meter.record(event)
    assert await meter.flush() == 5
    assert await stored(db_pool) == events


async def test_killed_connection_is_retried(
    clean_database_url: str, db_pool: AsyncConnectionPool[Any]
) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        clean_database_url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    try:
        meter = UsageMeter(pool, flush_interval=0.02, retry_initial=0.02)
        meter.record(make_event(0))
        assert await meter.flush() == 1
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        # Kill the pooled connection behind the pool's back (a server restart looks the same to it).
        async with db_pool.connection() as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await meter.start()
        meter.record(make_event(1))
        await eventually(lambda: meter.written == 2)
        await meter.stop()
        assert meter.failed_flushes >= 1  # the dead connection was tried, failed, and replaced
    finally:
        await pool.close()
    assert [e.request_id for e in await stored(db_pool)] == ["req_000000", "req_000001"]


async def test_stop_gives_up_at_the_deadline(
    clean_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(clean_database_url, open=False)
    meter = UsageMeter(pool, retry_initial=0.05)
    await meter.start()
    meter.record(make_event(0))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="observability.usage"):
        await meter.stop(timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert meter.pending == 1
    assert any(r.levelno == logging.ERROR and getattr(r, "lost", None) == 1 for r in caplog.records)


async def test_max_pending_drops_new_events_and_counts(
    db_pool: AsyncConnectionPool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    meter = UsageMeter(db_pool, max_pending=5)
    events = [make_event(i) for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="observability.usage"):
        for event in events:
            meter.record(event)
    assert (meter.pending, meter.dropped) == (5, 3)
    assert len([r for r in caplog.records if "dropping" in r.getMessage()]) == 1
    assert await meter.flush() == 5
    assert await stored(db_pool) == events[:5]
    meter.record(events[5])  # room again
    assert (meter.pending, meter.dropped) == (1, 3)


async def test_hostile_values_are_stored_verbatim(db_pool: AsyncConnectionPool[Any]) -> None:
    hostile = 'x\'); DROP TABLE usage_events; --\t"q"\n\\N \\. ü🚀 %s %(x)s'
    events = [
        make_event(0, model=hostile, request_id=hostile, error_code=hostile, endpoint="completions"),
        make_event(1, model="\\", error_code=""),
    ]
    meter = UsageMeter(db_pool)
    for event in events:
        meter.record(event)
    assert await meter.flush() == 2
    assert await stored(db_pool) == events


async def test_rows_the_database_refuses_are_bisected_out(
    db_pool: AsyncConnectionPool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL byte (text cannot hold it) and an int beyond int4 each cost only their own row."""
    events = [make_event(i) for i in range(11)]
    events[2] = make_event(2, model="bad\x00model")
    events[7] = make_event(7, completion_tokens=2**40)
    meter = UsageMeter(db_pool, batch_size=8)
    for event in events:
        meter.record(event)
    with caplog.at_level(logging.ERROR, logger="observability.usage"):
        assert await meter.flush() == 9
    assert await stored(db_pool) == [e for i, e in enumerate(events) if i not in (2, 7)]
    assert (meter.pending, meter.written, meter.rejected, meter.failed_flushes) == (0, 9, 2, 0)
    refused = sorted(r.usage_request_id for r in caplog.records if hasattr(r, "usage_request_id"))
    assert refused == ["req_000002", "req_000007"]


async def test_outage_while_bisecting_requeues_only_the_unwritten_rows(db_pool: AsyncConnectionPool[Any]) -> None:
    """A database error between the halves of a bisected batch keeps every unwritten row, in order."""
    events = [make_event(i) for i in range(8)]
    events[1] = make_event(1, model="nul\x00")
    meter = UsageMeter(db_pool, batch_size=8)
    for event in events:
        meter.record(event)
    real_copy = UsageMeter._copy
    calls = 0

    async def copy_then_fail(conn: psycopg.AsyncConnection[Any], rows: list[UsageEvent]) -> None:
        nonlocal calls
        calls += 1
        # 8 rows (refused), rows 0-3 (refused), 0-1 (refused), 0 (written), 1 (refused), then the outage
        if calls == 6:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        await real_copy(conn, rows)

    meter._copy = copy_then_fail  # type: ignore[method-assign]
    with pytest.raises(psycopg.OperationalError):
        await meter.flush()
    assert (meter.pending, meter.written, meter.rejected) == (6, 1, 1)
    meter._copy = real_copy  # type: ignore[method-assign]
    assert await meter.flush() == 6
    assert await stored(db_pool) == [e for i, e in enumerate(events) if i != 1]
