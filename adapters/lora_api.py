"""The engine's runtime LoRA API as placement sees it: a Protocol and its typed outcomes, no HTTP.

The HTTP implementation lives in the gateway (``gateway/engines/lora.py``) and maps vLLM's answers:

- load: 200 -> returns; 400 "has already been loaded" -> :class:`LoraAlreadyLoaded`; 404/400 naming the path
  ("No adapter found for ...") -> :class:`LoraFilesRejected`; 404 on the route itself (runtime loading is off:
  no ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) -> :class:`LoraUnsupported`; anything else (connection refused,
  5xx, timeout) -> :class:`LoraEngineError`.
- unload: 200 -> returns; 404 -> :class:`LoraNotLoaded`; the rest as for load.

Hierarchy::

    LoraApiError                    not an AdapterError: placement translates these
    +-- LoraAlreadyLoaded           load: the engine holds that name already (placement: success)
    +-- LoraNotLoaded               unload: the engine does not hold that name (placement: success)
    +-- LoraFilesRejected           load: the engine blamed the files (-> AdapterLoadFailed(files_at_fault=True))
    +-- LoraEngineError             the engine failed: down, 5xx, timeout (-> AdapterLoadFailed)
        +-- LoraUnsupported         the replica has no runtime LoRA API

Messages must carry no secrets (no credentials from engine URLs): they reach logs and, for load failures,
the client's error message.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

__all__ = [
    "LoraAlreadyLoaded",
    "LoraApi",
    "LoraApiError",
    "LoraEngineError",
    "LoraFilesRejected",
    "LoraNotLoaded",
    "LoraUnsupported",
    "R_contra",
]


class LoraApiError(Exception):
    """Base of every outcome of a runtime LoRA call other than plain success."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class LoraAlreadyLoaded(LoraApiError):  # noqa: N818  # an outcome, not a failure
    """Load: the engine already holds an adapter of that name (another gateway replica loaded it)."""


class LoraNotLoaded(LoraApiError):  # noqa: N818  # an outcome, not a failure
    """Unload: the engine holds no adapter of that name (never loaded, or the engine restarted)."""


class LoraFilesRejected(LoraApiError):  # noqa: N818  # reads as the engine's answer
    """Load: the engine refused the adapter's files (missing folder, unreadable or invalid adapter)."""


class LoraEngineError(LoraApiError):
    """The engine could not be asked or failed (connection refused, 5xx, timeout): nothing about the files."""


class LoraUnsupported(LoraEngineError):  # noqa: N818
    """The replica has no runtime LoRA API (vLLM without ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``: 404 on the route)."""


R_contra = TypeVar("R_contra", contravariant=True)


class LoraApi(Protocol[R_contra]):
    """Loads and unloads adapters on one replica (``R_contra``: the gateway's ``Replica``, opaque here)."""

    async def load(self, replica: R_contra, engine_name: str, path: str) -> None:
        """Register ``path`` under ``engine_name``. Raises :class:`LoraAlreadyLoaded`, :class:`LoraFilesRejected`
        or :class:`LoraEngineError` (see the module docstring)."""
        ...

    async def unload(self, replica: R_contra, engine_name: str) -> None:
        """Unregister ``engine_name``. Raises :class:`LoraNotLoaded` or :class:`LoraEngineError`."""
        ...
