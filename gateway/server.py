"""Run the gateway under a production ASGI server: uvicorn (default, measured faster here) or Granian.

Both drain in-flight requests on SIGTERM/SIGINT before the app's shutdown flushes the usage meter.
"""

from __future__ import annotations

import os

from gateway.settings import Settings

FACTORY = "gateway.asgi:create"


def serve(settings: Settings, database_url: str) -> None:
    """Serve until stopped. Workers read their settings from the environment, so pass the URL there."""
    os.environ["TENANTGATE_DATABASE_URL"] = database_url
    # `tenantgate up` and `--engine-url` decide the engines in this process: the workers must see them too.
    os.environ["TENANTGATE_ENGINE_URLS"] = ",".join(settings.engine_urls)
    os.environ["TENANTGATE_EMBEDDING_URLS"] = ",".join(settings.embedding_urls)
    if settings.server == "uvicorn":
        _serve_uvicorn(settings)
    else:
        _serve_granian(settings)


def _serve_granian(settings: Settings) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        FACTORY,
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        log_enabled=False,  # our JSON logging (configured by the CLI and each worker) takes Granian's records
        log_access=False,
        backlog=2048,
        workers_kill_timeout=int(settings.shutdown_timeout),
        respawn_failed_workers=True,
    ).serve()


def _serve_uvicorn(settings: Settings) -> None:
    import signal

    import uvicorn

    # uvicorn re-raises the stop signal once it has drained; with SIGTERM's default action that would kill
    # this process before the embedded Postgres is stopped. Once uvicorn is done, a SIGTERM is handled.
    signal.signal(signal.SIGTERM, lambda *_: None)

    uvicorn.run(
        FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools" if _has("httptools") else "h11",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        log_level=settings.log_level,
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
