"""Errors raised by the engine layer.

Hierarchy::

    EngineError                      base; carries `message` and a stable `code`
    ├── ModelNotServedError          no configured replica lists the model    (model_not_found)
    ├── EngineUnavailableError       model known, no healthy replica left     (engine_unavailable)
    ├── EngineTimeoutError           connect / first-byte / total timeout     (engine_timeout)
    └── EngineBadResponseError       garbage, protocol error                  (engine_bad_response)
        └── EngineStreamBrokenError  connection lost after the request was sent (engine_disconnected)

No HTTP statuses here: `gateway/errors.py` maps these to responses. Messages never carry an engine
URL's credentials (see `Replica.display_url`).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "EngineBadResponseError",
    "EngineError",
    "EngineStreamBrokenError",
    "EngineTimeoutError",
    "EngineUnavailableError",
    "ModelNotServedError",
]


class EngineError(Exception):
    """Base of every error the engine layer raises."""

    code: ClassVar[str] = "engine_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotServedError(EngineError):
    """No replica of the requested purpose lists the model, healthy or not."""

    code: ClassVar[str] = "model_not_found"

    def __init__(self, model: str, message: str | None = None) -> None:
        super().__init__(message or f"The model `{model}` does not exist.")
        self.model = model


class EngineUnavailableError(EngineError):
    """The model is known, but no healthy replica is left to serve it."""

    code: ClassVar[str] = "engine_unavailable"

    def __init__(self, message: str, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model


class EngineTimeoutError(EngineError):
    """The engine did not connect, answer or finish in time."""

    code: ClassVar[str] = "engine_timeout"


class EngineBadResponseError(EngineError):
    """The engine answered something that is not valid HTTP or not what was expected."""

    code: ClassVar[str] = "engine_bad_response"


class EngineStreamBrokenError(EngineBadResponseError):
    """The connection was lost (or the body truncated) after the request was sent: before the answer or
    in the middle of it. Never retried: the engine may have received the request."""

    code: ClassVar[str] = "engine_disconnected"
