"""``GET /healthz`` (the process is up) and ``GET /readyz`` (database and engines reachable)."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import MediaType, Response, get

from gateway.routes.common import AnyRequest, services_of


@get("/healthz", tags=["health"], summary="Liveness: the process is up", media_type=MediaType.JSON)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", tags=["health"], summary="Readiness: database reachable and an engine for every model")
async def readyz(request: AnyRequest) -> Response[dict[str, Any]]:
    services = services_of(request)
    database_ok = True
    try:
        async with asyncio.timeout(2.0), services.db.connection() as conn:
            await conn.execute("SELECT 1")
    except Exception:  # readiness reports, it does not raise
        database_ok = False
    engines_ok, engines = services.engines.readiness()
    ready = database_ok and engines_ok
    # Model names and replica counts only: engine addresses stay internal on this unauthenticated route.
    body = {"status": "ready" if ready else "not ready", "database": database_ok,
            "engines": {"configured": len(services.engines.replicas), "models": engines["models"]}}
    return Response(body, status_code=200 if ready else 503)


ROUTES = [healthz, readyz]
