"""Entry point for ASGI servers: ``create()`` reads settings from the environment and builds the app.

``tenantgate serve`` points Granian or uvicorn here (as a factory) after it has started the embedded
Postgres and exported its URL, so every worker process builds its own app, pools and clients.
"""

from __future__ import annotations

from gateway.app import create_app
from gateway.middleware import RequestContextMiddleware
from gateway.settings import load_settings
from observability.logging import configure_logging


def create() -> RequestContextMiddleware:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
