"""``GET /healthz`` (the process is up) and ``GET /readyz`` (database and engines reachable)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import msgspec
from litestar import MediaType, Response, get
from litestar.openapi.datastructures import ResponseSpec

from gateway.openapi_docs import ANY, route_docs
from gateway.routes.common import AnyRequest, services_of


class ModelReadiness(msgspec.Struct):
    purpose: str
    replicas: int
    healthy_replicas: int


class EngineReadiness(msgspec.Struct):
    configured: int
    models: dict[str, ModelReadiness]


class Readiness(msgspec.Struct):
    """The body of ``/readyz`` (documentation: the handler answers a dict of this shape)."""

    status: Literal["ready", "not ready"]
    database: bool
    engines: EngineReadiness


def _readyz_docs() -> dict[str, Any]:
    docs = route_docs(ANY)
    docs["responses"] = {
        **docs["responses"],
        200: ResponseSpec(data_container=Readiness, description="Ready", generate_examples=False),
        503: ResponseSpec(data_container=Readiness, description="Not ready (the body says what is missing)",
                          generate_examples=False),
    }
    return docs


@get("/healthz", tags=["health"], summary="Liveness: the process is up", media_type=MediaType.JSON, **route_docs(ANY))
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", tags=["health"], summary="Readiness: database reachable and an engine for every model",
     **_readyz_docs())
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
