"""Usage: a tenant admin's ``GET /v1/usage``; the platform admin's view is in ``routes/admin.py``."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import msgspec
from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery
from psycopg_pool import AsyncConnectionPool

from gateway.auth.principal import Principal
from gateway.errors import InvalidRequestError
from gateway.openapi_docs import ANY, TENANT, route_docs
from gateway.routes.common import AnyRequest, provide_tenant_admin, services_of
from observability.usage_queries import PlatformUsageRow, UsageRow, platform_usage, tenant_usage

DEFAULT_DAYS = 30
MAX_DAYS = 366


class UsageList(msgspec.Struct, frozen=True):
    data: list[UsageRow]
    start: str
    end: str
    object: str = "list"


class PlatformUsageList(msgspec.Struct, frozen=True):
    data: list[PlatformUsageRow]
    start: str
    end: str
    object: str = "list"


def date_range(start: date | None, end: date | None) -> tuple[date, date]:
    """Default: the last 30 days up to today (UTC); at most 366 days."""
    end = end or datetime.now(UTC).date()
    if start is None:
        try:
            start = end - timedelta(days=DEFAULT_DAYS - 1)
        except OverflowError:  # the default range would begin before 0001-01-01
            raise InvalidRequestError(
                f"'end' is too early: the default range is the {DEFAULT_DAYS} days up to 'end'; give 'start' too.",
                param="end", code="invalid_date_range",
            ) from None
    if end < start:
        raise InvalidRequestError("'end' is before 'start'.", param="end", code="invalid_date_range")
    if (end - start).days >= MAX_DAYS:
        raise InvalidRequestError(f"The range may span at most {MAX_DAYS} days.", param="start",
                                  code="invalid_date_range")
    return start, end


async def platform_usage_between(
    db: AsyncConnectionPool, start: date | None, end: date | None, tenant_id: uuid.UUID | None
) -> PlatformUsageList:
    first, last = date_range(start, end)
    rows = await platform_usage(db, first, last, tenant_id)
    return PlatformUsageList(rows, first.isoformat(), last.isoformat())


@get("/v1/usage", dependencies={"admin": Provide(provide_tenant_admin)}, tags=["usage"], **route_docs(ANY, TENANT),
     summary="This tenant's usage by UTC day and model")
async def get_usage(request: AnyRequest, admin: NamedDependency[Principal], start: FromQuery[date | None] = None,
                    end: FromQuery[date | None] = None) -> UsageList:
    first, last = date_range(start, end)
    rows = await tenant_usage(services_of(request).db, admin.tenant_id, first, last)
    return UsageList(rows, first.isoformat(), last.isoformat())


ROUTES = [get_usage]
