"""Usage reports, aggregated in SQL from ``usage_events``: per UTC day and model, for one tenant or all.

Days are UTC calendar days, whatever the session's time zone: ``[start, end]`` (inclusive) becomes the
half-open instant range ``[start 00:00 UTC, end + 1 day 00:00 UTC)`` on ``created_at``, which the
``(tenant_id, created_at)`` and ``(created_at)`` indexes serve. ``avg_latency_ms`` is the mean (not a
percentile: a mean is one pass, a percentile sorts every group). Rows come in a stable order, models
ordered bytewise (``COLLATE "C"``), so the output does not depend on the server's locale.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, TypeAlias
from uuid import UUID

import msgspec
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

__all__ = ["PlatformUsageRow", "UsageQueryError", "UsageRow", "platform_usage", "tenant_usage"]

Database: TypeAlias = AsyncConnectionPool[Any] | AsyncConnection[Any]


class UsageQueryError(ValueError):
    """The date range cannot be queried (``end`` before ``start``, or past the calendar's end)."""

    code = "invalid_date_range"

    def __init__(self, message: str, *, param: str = "end") -> None:
        super().__init__(message)
        self.param = param


class UsageRow(msgspec.Struct, frozen=True):
    """One tenant's usage of one model on one UTC day."""

    date: str  # YYYY-MM-DD, UTC
    model: str
    requests: int
    errors: int  # status_code >= 400 (499: the client went away)
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    avg_latency_ms: float


class PlatformUsageRow(msgspec.Struct, frozen=True):
    """A :class:`UsageRow` with its tenant; ``tenant_name`` is None if the tenant row no longer exists."""

    tenant_id: UUID
    tenant_name: str | None
    date: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    avg_latency_ms: float


_AGGREGATES: Final = """
    (created_at AT TIME ZONE 'UTC')::date AS day,
    model,
    count(*) AS requests,
    count(*) FILTER (WHERE status_code >= 400) AS errors,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    avg(latency_ms) AS avg_latency_ms
"""

_TENANT_SQL: Final = f"""
SELECT {_AGGREGATES}
FROM usage_events
WHERE tenant_id = %(tenant_id)s AND created_at >= %(start)s AND created_at < %(end)s
GROUP BY day, model
ORDER BY day, model COLLATE "C"
"""


def _platform_sql(tenant_filter: str) -> str:
    return f"""
WITH agg AS (
    SELECT tenant_id, {_AGGREGATES}
    FROM usage_events
    WHERE created_at >= %(start)s AND created_at < %(end)s {tenant_filter}
    GROUP BY tenant_id, day, model
)
SELECT agg.tenant_id, tenants.name, agg.day, agg.model, agg.requests, agg.errors,
       agg.prompt_tokens, agg.completion_tokens, agg.avg_latency_ms
FROM agg LEFT JOIN tenants ON tenants.id = agg.tenant_id
ORDER BY tenants.name COLLATE "C" NULLS LAST, agg.tenant_id, agg.day, agg.model COLLATE "C"
"""


_PLATFORM_SQL: Final = _platform_sql("")
_PLATFORM_ONE_TENANT_SQL: Final = _platform_sql("AND tenant_id = %(tenant_id)s")


def _instant_range(start: date, end: date) -> tuple[datetime, datetime]:
    if end < start:
        raise UsageQueryError(f"end ({end.isoformat()}) is before start ({start.isoformat()})")
    try:
        after_end = end + timedelta(days=1)
    except OverflowError:
        raise UsageQueryError("end is past the last supported date") from None
    return datetime.combine(start, time(), UTC), datetime.combine(after_end, time(), UTC)


@asynccontextmanager
async def _connection(db: Database) -> AsyncIterator[AsyncConnection[Any]]:
    if isinstance(db, AsyncConnectionPool):
        async with db.connection() as conn:
            yield conn
    else:
        yield db


async def _fetch(db: Database, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    async with _connection(db) as conn, conn.cursor() as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def tenant_usage(db: Database, tenant_id: UUID, start: date, end: date) -> list[UsageRow]:
    """One row per (UTC day, model) with traffic in ``[start, end]``, ordered by day then model.

    Raises :class:`UsageQueryError` when ``end`` is before ``start``.
    """
    range_start, range_end = _instant_range(start, end)
    rows = await _fetch(db, _TENANT_SQL, {"tenant_id": tenant_id, "start": range_start, "end": range_end})
    return [
        UsageRow(
            date=day.isoformat(),
            model=model,
            requests=requests,
            errors=errors,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            avg_latency_ms=float(latency),
        )
        for day, model, requests, errors, prompt, completion, latency in rows
    ]


async def platform_usage(
    db: Database, start: date, end: date, tenant_id: UUID | None = None
) -> list[PlatformUsageRow]:
    """One row per (tenant, UTC day, model) in ``[start, end]``, optionally for one tenant only.

    Ordered by tenant name (then id), day, model. Raises :class:`UsageQueryError` when ``end`` is
    before ``start``.
    """
    range_start, range_end = _instant_range(start, end)
    params: dict[str, Any] = {"start": range_start, "end": range_end}
    sql = _PLATFORM_SQL
    if tenant_id is not None:
        params["tenant_id"] = tenant_id
        sql = _PLATFORM_ONE_TENANT_SQL
    rows = await _fetch(db, sql, params)
    return [
        PlatformUsageRow(
            tenant_id=tenant,
            tenant_name=name,
            date=day.isoformat(),
            model=model,
            requests=requests,
            errors=errors,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            avg_latency_ms=float(latency),
        )
        for tenant, name, day, model, requests, errors, prompt, completion, latency in rows
    ]
