"""The engine layer: vLLM replicas, their health, and forwarding requests to them.

Framework-free (no Litestar): the routes in `gateway/routes/` use it through `EngineClient`.
"""

from gateway.engines.client import EngineClient, EngineReply
from gateway.engines.errors import (
    EngineBadResponseError,
    EngineError,
    EngineStreamBrokenError,
    EngineTimeoutError,
    EngineUnavailableError,
    ModelNotServedError,
)
from gateway.engines.models import ModelCard
from gateway.engines.normalize import ErrorInfo, normalize_error_body, parse_stream_error, stream_error_info
from gateway.engines.pool import EnginePool
from gateway.engines.replica import Purpose, Replica
from gateway.engines.routes import Lease, Route
from gateway.engines.stream import EngineStream
from gateway.engines.timeouts import EngineTimeouts

__all__ = [
    "EngineBadResponseError",
    "EngineClient",
    "EngineError",
    "EnginePool",
    "EngineReply",
    "EngineStream",
    "EngineStreamBrokenError",
    "EngineTimeoutError",
    "EngineTimeouts",
    "EngineUnavailableError",
    "ErrorInfo",
    "Lease",
    "ModelCard",
    "ModelNotServedError",
    "Purpose",
    "Replica",
    "Route",
    "normalize_error_body",
    "parse_stream_error",
    "stream_error_info",
]
