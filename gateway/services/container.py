"""Everything one gateway process holds, built once in the app's lifespan and closed in reverse."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property

from psycopg_pool import AsyncConnectionPool

from adapters.directory import AdapterDirectory, AdapterEntry
from adapters.storage import AdapterStore
from gateway.auth.service import Authenticator
from gateway.engines.client import EngineClient
from gateway.engines.http1 import HttpClient
from gateway.engines.pool import EnginePool
from gateway.openai.decode import BodyLimits
from gateway.services.catalog import ModelCatalog
from gateway.services.inference import InferenceService
from gateway.services.shutdown import ShutdownWatch
from gateway.settings import Settings
from observability.usage import UsageMeter
from retrieval.embedding import Embedder
from retrieval.jobs import IngestionQueue


@dataclass
class Services:
    settings: Settings
    db: AsyncConnectionPool
    auth: Authenticator
    http: HttpClient
    engines: EnginePool
    client: EngineClient
    catalog: ModelCatalog
    meter: UsageMeter
    inference: InferenceService
    shutdown: ShutdownWatch
    embedder: Embedder  # every embedding of ingestion and search, metered to the tenant
    ingestion: IngestionQueue  # where attached files are handed to ingestion
    adapter_store: AdapterStore  # the adapter files, in the folder every engine replica reads
    adapters: AdapterDirectory  # every tenant's ready adapters, kept current from Postgres
    adapter_retire: Callable[[AdapterEntry], Awaitable[None]]  # unloads a deleted adapter from every engine

    @cached_property
    def body_limits(self) -> BodyLimits:
        s = self.settings
        return BodyLimits(s.max_body_containers, s.max_body_items, s.max_input_items)
