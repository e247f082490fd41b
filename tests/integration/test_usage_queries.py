"""Usage reports: grouping by UTC day and model, date ranges, tenants, hostile model names."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from observability.usage import UsageEvent, UsageMeter
from observability.usage_queries import (
    PlatformUsageRow,
    UsageQueryError,
    UsageRow,
    platform_usage,
    tenant_usage,
)

ACME = UUID("00000000-0000-4000-8000-00000000000a")
GLOBEX = UUID("00000000-0000-4000-8000-00000000000b")
GONE = UUID("00000000-0000-4000-8000-00000000000c")  # events whose tenant row does not exist
KEY = UUID("00000000-0000-4000-8000-0000000000ff")


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def event(
    tenant: UUID,
    created_at: datetime,
    model: str = "m1",
    *,
    status: int = 200,
    prompt: int = 0,
    completion: int = 0,
    latency: float = 100.0,
) -> UsageEvent:
    return UsageEvent(
        created_at=created_at,
        request_id="req_q",
        tenant_id=tenant,
        key_id=KEY,
        endpoint="chat.completions",
        model=model,
        stream=False,
        status_code=status,
        error_code=None if status < 400 else "some_error",
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=latency,
    )


async def store(pool: AsyncConnectionPool[Any], *events: UsageEvent) -> None:
    meter = UsageMeter(pool)
    for e in events:
        meter.record(e)
    await meter.flush()


@pytest.fixture
async def tenants(db_pool: AsyncConnectionPool[Any]) -> None:
    async with db_pool.connection() as conn:
        await conn.execute(
            "INSERT INTO tenants (id, name) VALUES (%s, 'acme'), (%s, 'globex')", (ACME, GLOBEX)
        )


@pytest.fixture
async def traffic(db_pool: AsyncConnectionPool[Any], tenants: None) -> None:
    await store(
        db_pool,
        # acme, 2024-03-01 (UTC)
        event(ACME, at("2024-03-01T23:59:59.999999+00:00"), "m1", prompt=10, completion=20, latency=100),
        event(ACME, at("2024-03-02T01:30:00+02:00"), "m2", prompt=1, completion=2, latency=50),  # 23:30 UTC
        # acme, 2024-03-02 (UTC)
        event(ACME, at("2024-03-02T00:00:00+00:00"), "m1", status=500, prompt=5, latency=300),
        event(ACME, at("2024-03-01T20:00:00-05:00"), "m1", prompt=7, completion=8, latency=200),  # 01:00 UTC
        # acme, outside [03-01, 03-02]
        event(ACME, at("2024-02-29T23:59:59.999999+00:00"), "m1", prompt=1000),
        event(ACME, at("2024-03-03T00:00:00+00:00"), "m1", prompt=1000),
        # globex and a tenant without a row
        event(GLOBEX, at("2024-03-01T12:00:00+00:00"), "m1", status=429, prompt=3, completion=4, latency=10),
        event(GONE, at("2024-03-02T12:00:00+00:00"), "m9", prompt=1, completion=1, latency=1),
    )


ACME_ROWS = [
    UsageRow("2024-03-01", "m1", 1, 0, 10, 20, 30, 100.0),
    UsageRow("2024-03-01", "m2", 1, 0, 1, 2, 3, 50.0),
    UsageRow("2024-03-02", "m1", 2, 1, 12, 8, 20, 250.0),
]


@pytest.mark.usefixtures("traffic")
async def test_tenant_usage_groups_by_utc_day_and_model(db_pool: AsyncConnectionPool[Any]) -> None:
    assert await tenant_usage(db_pool, ACME, date(2024, 3, 1), date(2024, 3, 2)) == ACME_ROWS


@pytest.mark.usefixtures("traffic")
async def test_days_are_utc_whatever_the_session_time_zone(clean_database_url: str) -> None:
    # the same database the traffic fixture filled (fixtures are set up once per test)
    async with await psycopg.AsyncConnection.connect(clean_database_url, autocommit=True) as conn:
        await conn.execute("SET TIME ZONE 'Pacific/Kiritimati'")  # UTC+14
        assert await tenant_usage(conn, ACME, date(2024, 3, 1), date(2024, 3, 2)) == ACME_ROWS


@pytest.mark.usefixtures("traffic")
async def test_date_range_is_inclusive_and_filters(db_pool: AsyncConnectionPool[Any]) -> None:
    assert await tenant_usage(db_pool, ACME, date(2024, 3, 2), date(2024, 3, 2)) == ACME_ROWS[2:]
    feb = await tenant_usage(db_pool, ACME, date(2024, 2, 1), date(2024, 2, 29))
    assert feb == [UsageRow("2024-02-29", "m1", 1, 0, 1000, 0, 1000, 100.0)]
    march = await tenant_usage(db_pool, ACME, date(2024, 3, 1), date(2024, 3, 31))
    assert [(r.date, r.model) for r in march] == [
        ("2024-03-01", "m1"),
        ("2024-03-01", "m2"),
        ("2024-03-02", "m1"),
        ("2024-03-03", "m1"),
    ]
    assert await tenant_usage(db_pool, ACME, date(2024, 4, 1), date(2024, 4, 30)) == []
    assert await tenant_usage(db_pool, UUID(int=0), date(2024, 3, 1), date(2024, 3, 2)) == []


@pytest.mark.usefixtures("traffic")
async def test_platform_usage_across_tenants(db_pool: AsyncConnectionPool[Any]) -> None:
    rows = await platform_usage(db_pool, date(2024, 3, 1), date(2024, 3, 2))
    acme = [
        PlatformUsageRow(ACME, "acme", *(getattr(r, f) for f in UsageRow.__struct_fields__))
        for r in ACME_ROWS
    ]
    assert rows == [
        *acme,
        PlatformUsageRow(GLOBEX, "globex", "2024-03-01", "m1", 1, 1, 3, 4, 7, 10.0),
        PlatformUsageRow(GONE, None, "2024-03-02", "m9", 1, 0, 1, 1, 2, 1.0),
    ]
    only_globex = await platform_usage(db_pool, date(2024, 3, 1), date(2024, 3, 2), tenant_id=GLOBEX)
    assert only_globex == [rows[3]]
    assert await platform_usage(db_pool, date(2024, 3, 2), date(2024, 3, 2), tenant_id=GLOBEX) == []


async def test_end_before_start_is_refused(db_pool: AsyncConnectionPool[Any]) -> None:
    with pytest.raises(UsageQueryError) as caught:
        await tenant_usage(db_pool, ACME, date(2024, 3, 2), date(2024, 3, 1))
    assert caught.value.code == "invalid_date_range"
    assert caught.value.param == "end"
    with pytest.raises(UsageQueryError):
        await platform_usage(db_pool, date(2024, 3, 2), date(2024, 3, 1))
    with pytest.raises(UsageQueryError):
        await tenant_usage(db_pool, ACME, date.max, date.max)


async def test_hostile_model_names_come_back_verbatim(
    db_pool: AsyncConnectionPool[Any], tenants: None
) -> None:
    hostile = ["a'; DROP TABLE usage_events; --", 'q"uote\\d', "tab\tnew\nline", "ü🚀", "B", "a"]
    noon = datetime(2024, 3, 1, 12, tzinfo=UTC)
    await store(db_pool, *(event(ACME, noon + timedelta(seconds=i), m) for i, m in enumerate(hostile)))
    rows = await tenant_usage(db_pool, ACME, date(2024, 3, 1), date(2024, 3, 1))
    assert [r.model for r in rows] == sorted(hostile, key=lambda m: m.encode())  # bytewise, locale-free
    platform = await platform_usage(db_pool, date(2024, 3, 1), date(2024, 3, 1), tenant_id=ACME)
    assert [r.model for r in platform] == [r.model for r in rows]


def test_rows_encode_as_json() -> None:
    row = PlatformUsageRow(ACME, "acme", "2024-03-01", "m1", 1, 0, 1, 2, 3, 4.5)
    assert msgspec.json.decode(msgspec.json.encode(row))["tenant_id"] == str(ACME)
