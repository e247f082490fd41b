"""Entry point for ASGI servers: ``create()`` builds the app with the settings ``tenantgate serve`` resolved.

``tenantgate serve`` points Granian or uvicorn here (as a factory) after it has started the embedded
Postgres and resolved every setting, so every worker process builds its own app, pools and clients with
exactly those settings. Started some other way (``uvicorn --factory gateway.asgi:create``), it reads them
from the environment.
"""

from __future__ import annotations

from gateway.app import create_app
from gateway.middleware import RequestContextMiddleware
from gateway.server import worker_settings
from gateway.settings import load_settings
from observability.logging import configure_logging


def create() -> RequestContextMiddleware:
    settings = worker_settings() or load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
