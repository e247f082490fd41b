"""The application factory: ``create_app(settings)`` builds the Litestar app and its lifespan.

Per process, the lifespan opens the database pool, applies pending migrations, loads the admin key
hash (making one if none exists), starts the engine pool's health checks and the usage meter, and on
shutdown closes them in reverse, flushing every pending usage event.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from gateway import __version__
from gateway.adapter_runtime import open_adapter_runtime
from gateway.auth import store
from gateway.auth.keys import digest
from gateway.auth.service import Authenticator
from gateway.db.migrations import upgrade
from gateway.db.pool import open_pool
from gateway.docs_page import OfflineSwaggerPlugin, assets_router, docs_router
from gateway.embedder import EngineEmbedder
from gateway.engines.client import EngineClient
from gateway.engines.http1 import HttpClient
from gateway.engines.pool import EnginePool
from gateway.engines.timeouts import EngineTimeouts
from gateway.ingestion import open_ingestion
from gateway.litestar_errors import EXCEPTION_HANDLERS
from gateway.middleware import RequestContextMiddleware
from gateway.routes import adapters, admin, files, health, inference, keys, models, search, usage, vector_stores
from gateway.services.catalog import ModelCatalog
from gateway.services.container import Services
from gateway.services.grounding import GroundingStep
from gateway.services.inference import InferenceService
from gateway.services.metering import MeterUsage
from gateway.services.pipeline import Pipeline
from gateway.services.salts import CacheSalts, read_cache_salt_key
from gateway.services.shutdown import ShutdownWatch
from gateway.settings import Settings, SettingsError
from observability.usage import UsageMeter
from retrieval.search import SearchOptions

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The gateway cannot start; the message says which setting or resource is at fault."""


def announce_admin_key(key: str) -> None:
    """Print a newly generated admin key once, to the terminal only (never to the logs)."""
    print(
        "\n  No TENANTGATE_ADMIN_KEY was set, so a platform admin key was generated.\n"
        f"  It is shown only this once; only its hash is stored:\n\n      {key}\n",
        flush=True,
    )


async def _admin_key_hash(settings: Settings, db: Any) -> bytes:
    if settings.admin_key is not None:
        return digest(settings.admin_key)
    key_hash, new_key = await store.ensure_admin_key(db)
    if new_key is not None:
        announce_admin_key(new_key)
    return key_hash


def _timeouts(settings: Settings) -> EngineTimeouts:
    return EngineTimeouts(
        connect=settings.engine_connect_timeout,
        first_byte=settings.engine_first_byte_timeout,
        total=settings.engine_total_timeout,
    )


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    if settings.database_url is None:
        raise SettingsError(
            "TENANTGATE_DATABASE_URL is not set: run `tenantgate serve`, which starts the embedded Postgres,"
            " or point it at a Postgres server"
        )
    async with AsyncExitStack() as stack:
        try:
            await upgrade(settings.database_url)
            db = await open_pool(
                settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
                acquire_timeout=settings.db_pool_timeout,
            )
        except Exception as exc:
            raise StartupError(f"TENANTGATE_DATABASE_URL: cannot use the database ({type(exc).__name__})") from exc
        stack.push_async_callback(db.close)
        auth = Authenticator(
            db, admin_key_hash=await _admin_key_hash(settings, db), ttl=settings.auth_cache_ttl,
            max_entries=settings.auth_cache_size,
        )
        timeouts = _timeouts(settings)
        # The one pooled HTTP client toward engines: health checks and requests alike. It keeps no cookies,
        # so nothing an engine (or a proxy before it) set during one tenant's call rides along on another's.
        http = HttpClient(connect_timeout=timeouts.connect, max_response_bytes=settings.engine_max_response_bytes)
        stack.push_async_callback(http.close)
        # Tenant adapters: store, directory (followed from Postgres), placement, and the engine pool's listing
        # hook (LoRA support per replica, the identity adapter that isolates base traffic, reconciliation).
        adapter_runtime = await stack.enter_async_context(open_adapter_runtime(settings, db, http))
        engines = EnginePool(
            http, settings.engine_urls, settings.embedding_urls, timeouts=timeouts,
            health_interval=settings.engine_health_interval, on_listing=adapter_runtime.guard,
        )
        adapter_runtime.generate_replicas = tuple(r for r in engines.replicas if r.purpose == "generate")
        await engines.start()
        stack.push_async_callback(engines.stop)
        meter = UsageMeter(
            db, flush_interval=settings.usage_flush_interval, batch_size=settings.usage_batch_size,
            max_pending=settings.usage_queue_max,
        )
        await meter.start()
        stack.push_async_callback(meter.stop)
        client = EngineClient(engines, http, timeouts, adapter_runtime.leases)
        shutdown = ShutdownWatch(settings.shutdown_timeout)
        stack.enter_context(shutdown.hooked_signals())
        isolation = adapter_runtime.guard if settings.base_isolation == "identity" else None
        catalog = ModelCatalog(engines, adapters=adapter_runtime.directory, isolation=isolation)
        search_options = SearchOptions(mode=settings.search_mode)
        # Retrieval: the embedder every embedding of ingestion and search goes through (metered to the tenant),
        # and the ingestion queue, with a worker in this process unless ingestion runs apart (tenantgate worker).
        # Every engine request carries its tenant's prefix-cache salt (the key is one row in Postgres).
        salts = CacheSalts(await read_cache_salt_key(db))
        embedder = EngineEmbedder(engines, client, meter, model=settings.embedding_model, salts=salts)
        ingestion = await stack.enter_async_context(
            open_ingestion(
                db_url=settings.database_url, pool=db, embedder=embedder,
                run_in_process=settings.ingestion_in_gateway, tokenizer_path=settings.embedding_tokenizer,
                batch_size=settings.embedding_batch_size, max_pages=settings.max_file_pages,
                max_attempts=settings.ingestion_max_attempts, concurrency=settings.ingestion_concurrency,
                shutdown_timeout=settings.shutdown_timeout,
            )
        )
        # The request pipeline: the retrieval, adapter, policy and tracing parts plug in here.
        # Grounded chat: a chat or completion request's `retrieval` (nothing for a request without one).
        grounding = GroundingStep(db, embedder, client, search_options=search_options)
        pipeline = Pipeline(steps=(grounding.step(),), observers=(MeterUsage(meter),))
        inference = InferenceService(
            client, catalog, pipeline, max_event_bytes=settings.engine_max_event_bytes, shutdown=shutdown,
            salts=salts,
        )
        yield Services(
            settings, db, auth, http, engines, client, catalog, meter, inference, shutdown, embedder, ingestion,
            adapter_runtime.store, adapter_runtime.directory, adapter_runtime.retire,
        )


def freeze_startup_objects() -> None:
    """Move everything built at start-up (the app, its routes and schemas, the pools) out of the collector's way.

    A worker holds about 75,000 such objects, and a full garbage collection that walks them all took about
    40 ms here: one such pause in the middle of serving delays every request then in flight. After
    ``gc.freeze()`` the collector never scans them again (they live as long as the process anyway), and
    a full collection walks only what was allocated since.
    """
    gc.collect()
    gc.freeze()


def create_litestar(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            freeze_startup_objects()
            log.info("gateway ready", extra={"engines": len(services.engines.replicas)})
            yield
        log.info("gateway stopped")

    return Litestar(
        route_handlers=[
            *inference.ROUTES, *models.ROUTES, *usage.ROUTES, *health.ROUTES,
            keys.TenantKeysController, files.files_controller(settings.max_file_bytes), admin.AdminController,
            adapters.adapters_controller(settings.adapter_max_bytes),
            vector_stores.VectorStoresController, search.search_route(SearchOptions(mode=settings.search_mode)),
            assets_router(),
        ],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="tenantgate",
            version=__version__,
            description="Multi-tenant, OpenAI-compatible gateway over vLLM.",
            openapi_router=docs_router(),
            render_plugins=[OfflineSwaggerPlugin()],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="API key")}
            ),
            security=[{"bearer": []}],
        ),
        debug=False,
        logging_config=None,  # Litestar's default would replace the root handler configure_logging installed
    )


# How much of a body may be read and discarded after an early answer (say a 413), beyond the body limit: enough
# for a client that sends its whole body before reading (urllib) to read the answer, not a connection reset.
DRAIN_PAST_LIMIT = 16 * 1024 * 1024


def create_app(settings: Settings) -> RequestContextMiddleware:
    """The ASGI app to serve: Litestar wrapped in the request-context layer."""
    return RequestContextMiddleware(
        create_litestar(settings), body_read_timeout=settings.body_read_timeout,
        drain_limit=settings.max_body_bytes + DRAIN_PAST_LIMIT, direct=inference.DIRECT,
    )
