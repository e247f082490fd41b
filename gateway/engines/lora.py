"""vLLM's runtime LoRA API over the gateway's HTTP client: the implementation of ``adapters.lora_api.LoraApi``.

vLLM 0.32 (``vllm/entrypoints/serve/lora/api_router.py``, ``openai/models/serving.py``), with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``:

- ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``: 200 plain text on success; 400 ``InvalidUserInput``
  "... has already been loaded ..." for a name it holds; 404 ``NotFoundError`` "No adapter found for <path>";
  500 with the engine's exception text when it could not load the files (``add_lora`` preloads them).
- ``POST /v1/unload_lora_adapter {"lora_name"}``: 200; 404 ``NotFoundError`` when it holds no such name.
- Without runtime updating the routes do not exist: FastAPI's 404 ``{"detail": "Not Found"}``.

A 500 is taken as the engine's failure, not the files' (the files were validated before they were stored): it
fails the request but does not mark the adapter failed. Messages are redacted and clipped: they reach logs and
the client's error message.
"""

from __future__ import annotations

import msgspec

from adapters.lora_api import (
    LoraAlreadyLoaded,
    LoraEngineError,
    LoraFilesRejected,
    LoraNotLoaded,
    LoraUnsupported,
)
from gateway.engines.http1 import ConnectError, ConnectTimeoutError, HttpClient, HttpError
from gateway.engines.normalize import normalize_error_body, redact
from gateway.engines.replica import Replica

__all__ = ["HttpLoraApi"]

_HEADERS = b"Content-Type: application/json\r\n"


class HttpLoraApi:
    """Loads and unloads adapters on vLLM replicas; ``timeout`` bounds each call, connecting included."""

    def __init__(self, http: HttpClient, timeout: float = 60.0) -> None:
        self._http = http
        self._timeout = timeout

    async def load(self, replica: Replica, engine_name: str, path: str) -> None:
        body = msgspec.json.encode({"lora_name": engine_name, "lora_path": path})
        status, answer = await self._post(replica, b"/v1/load_lora_adapter", body)
        if status == 200:
            return
        message = _message(status, answer)
        if _route_missing(status, answer):
            raise LoraUnsupported(f"{replica.display_url} does not take LoRA adapters at run time")
        if status == 400 and "already been loaded" in message:
            raise LoraAlreadyLoaded(message)
        if status in (400, 404):
            raise LoraFilesRejected(message)
        raise LoraEngineError(f"the engine answered HTTP {status}: {message}")

    async def unload(self, replica: Replica, engine_name: str) -> None:
        body = msgspec.json.encode({"lora_name": engine_name})
        status, answer = await self._post(replica, b"/v1/unload_lora_adapter", body)
        if status == 200:
            return
        if _route_missing(status, answer):
            raise LoraUnsupported(f"{replica.display_url} does not take LoRA adapters at run time")
        message = _message(status, answer)
        if status == 404:
            raise LoraNotLoaded(message)
        raise LoraEngineError(f"the engine answered HTTP {status}: {message}")

    async def _post(self, replica: Replica, target: bytes, body: bytes) -> tuple[int, bytes]:
        try:
            resp = await self._http.request(
                replica.origin, b"POST", target, _HEADERS, body,
                first_byte_timeout=self._timeout, total_timeout=self._timeout,
            )
            return resp.status, await resp.read()
        except ConnectError as exc:
            raise LoraEngineError(f"cannot connect to {replica.display_url}: {exc.reason}") from exc
        except (ConnectTimeoutError, TimeoutError) as exc:
            raise LoraEngineError(f"{replica.display_url} did not answer within {self._timeout:g} s") from exc
        except HttpError as exc:
            raise LoraEngineError(f"{replica.display_url}: {redact(str(exc), 200)}") from exc


def _route_missing(status: int, body: bytes) -> bool:
    """FastAPI's own 404 for a path it has no route for (``{"detail": "Not Found"}``)."""
    if status not in (404, 405):
        return False
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return isinstance(doc, dict) and doc.get("detail") in ("Not Found", "Method Not Allowed") and "error" not in doc


def _message(status: int, body: bytes) -> str:
    return redact(normalize_error_body(status, body).message, 300)
