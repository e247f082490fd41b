"""Everything one gateway process holds, built once in the app's lifespan and closed in reverse."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from gateway.auth.service import Authenticator
from gateway.engines.client import EngineClient
from gateway.engines.http1 import HttpClient
from gateway.engines.pool import EnginePool
from gateway.services.inference import InferenceService
from gateway.settings import Settings
from observability.usage import UsageMeter


@dataclass
class Services:
    settings: Settings
    db: AsyncConnectionPool
    auth: Authenticator
    http: HttpClient
    engines: EnginePool
    client: EngineClient
    meter: UsageMeter
    inference: InferenceService
