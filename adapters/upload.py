"""Send a trained adapter to a gateway: ``POST /v1/adapters`` as multipart, what ``tenantgate adapters upload``
and ``train --upload`` run. The API key is passed in by the caller (the CLI reads it from an environment
variable) and is never part of a message."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import msgspec

from adapters.training import ADAPTER_FILES

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
TIMEOUT = httpx.Timeout(600.0, connect=10.0)  # up to 1 GiB goes up, then the gateway validates it


class UploadError(Exception):
    """The adapter could not be sent, or the gateway refused it: ``message`` says why (``status`` when it
    answered)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def adapters_url(gateway: str) -> str:
    """``<gateway>/v1/adapters``; a gateway URL given with its ``/v1`` works too."""
    base = gateway.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UploadError(f"--gateway {gateway[:80]!r}: expected an http:// or https:// URL")
    return base.removesuffix("/v1") + "/v1/adapters"


def upload_files(path: Path) -> dict[str, tuple[str, Path, str]]:
    """Form field -> (file name, path, content type): the two files of an adapter folder, or one archive."""
    if path.is_dir():
        missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
        if missing:
            raise UploadError(f"{path}: no {' and no '.join(missing)} in this folder")
        return {
            "adapter_config": (ADAPTER_FILES[0], path / ADAPTER_FILES[0], "application/json"),
            "adapter_model": (ADAPTER_FILES[1], path / ADAPTER_FILES[1], "application/octet-stream"),
        }
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        return {"file": (path.name, path, "application/octet-stream")}
    if path.exists():
        raise UploadError(f"{path}: expected an adapter folder or a .tar.gz or .zip archive")
    raise UploadError(f"{path}: no such folder or file")


def _refusal(response: httpx.Response) -> UploadError:
    """The gateway's OpenAI-shaped error as one line."""
    try:
        error = msgspec.json.decode(response.content)["error"]
        detail = f"{error.get('code') or error.get('type')}: {error['message']}"
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        detail = response.text[:200] or response.reason_phrase
    status = response.status_code
    return UploadError(f"the gateway refused the adapter ({status} {detail})", status=status)


def upload_adapter(
    path: Path,
    *,
    gateway: str,
    api_key: str,
    name: str,
    base_model: str,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Upload the adapter at ``path`` (folder or archive) as ``name`` for the served ``base_model``; return
    the gateway's adapter object. The files are streamed, not read into memory."""
    url = adapters_url(gateway)
    fields = upload_files(path)
    with ExitStack() as stack:
        files = {
            field: (filename, stack.enter_context(file.open("rb")), content_type)
            for field, (filename, file, content_type) in fields.items()
        }
        client = stack.enter_context(httpx.Client(transport=transport, timeout=TIMEOUT))
        try:
            response = client.post(
                url,
                data={"name": name, "base_model": base_model},
                files=files,
                headers={"Authorization": f"Bearer {api_key}"},
            )
        except httpx.HTTPError as exc:
            raise UploadError(f"cannot reach the gateway at {url}: {type(exc).__name__} {exc}") from None
    if response.status_code >= 400:
        raise _refusal(response)
    try:
        answer = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise UploadError(f"the gateway answered {response.status_code} with no JSON") from None
    if not isinstance(answer, dict):
        raise UploadError(f"the gateway answered {response.status_code} with no adapter object")
    return answer
