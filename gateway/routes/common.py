"""Helpers shared by the routes: body reading, dependencies, disconnect watching, reply conversion.

The ``*_scope`` helpers, ``RequestHead`` and ``read_body`` serve the plain-ASGI inference routes, which see
the ASGI scope and ``receive`` rather than a Litestar ``Request``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from litestar import Request
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.auth.principal import Principal
from gateway.errors import ClientDisconnectedError, ErrorBody, PayloadTooLargeError, UnsupportedMediaTypeError
from gateway.services.container import Services
from gateway.services.inference import JsonReply, StreamReply

T = TypeVar("T")
AnyRequest = Request[Any, Any, Any]


def services_of(request: AnyRequest) -> Services:
    services: Services = request.app.state.services
    return services


async def provide_principal(request: AnyRequest) -> Principal:
    """Any valid tenant key (role user or admin)."""
    return await services_of(request).auth.tenant(request.headers.get("authorization"))


async def provide_tenant_admin(request: AnyRequest) -> Principal:
    """A tenant admin key."""
    return await services_of(request).auth.tenant(request.headers.get("authorization"), role="admin")


def services_of_scope(scope: Scope) -> Services:
    """The services, from the Litestar app in the scope (the outer layer sets it on its direct path too)."""
    services: Services = scope["app"].state.services
    return services


def check_json_media_type(content_type: str | None) -> None:
    """A body must be JSON (`application/json` or `*+json`); no Content-Type at all is taken as JSON."""
    if content_type is not None:
        media = content_type.partition(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaTypeError(
                f"Unsupported content type '{media[:64]}'; send 'application/json'."
            )


async def read_json_body(request: AnyRequest) -> bytes:
    check_json_media_type(request.headers.get("content-type"))
    return await request.body()


def request_id_of(request: AnyRequest) -> str:
    return str(request.scope["state"].get("request_id", ""))


def started_of_scope(scope: Scope) -> tuple[float, datetime]:
    started = scope["state"].get("started")
    return (started if isinstance(started, float) else time.perf_counter()), datetime.now(UTC)


# W3C Trace Context: only a well-formed `traceparent` is passed on to engines (the spec says to ignore others).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass(slots=True)
class RequestHead:
    """The request headers a plain-ASGI route acts on, found in one pass over the scope."""

    authorization: str | None = None
    content_type: str | None = None
    content_length: int | None = None
    traceparent: str | None = None

    @classmethod
    def of(cls, scope: Scope) -> RequestHead:
        head = cls()
        for name, value in scope["headers"]:
            if name == b"authorization":
                head.authorization = value.decode("latin-1")
            elif name == b"content-type":
                head.content_type = value.decode("latin-1")
            elif name == b"content-length":
                head.content_length = int(value) if value.isdigit() else None
            elif name == b"traceparent" and _TRACEPARENT.fullmatch(value.decode("latin-1")):
                head.traceparent = value.decode("ascii")
        return head

    def check_json_media_type(self) -> None:
        check_json_media_type(self.content_type)


async def read_body(receive: Receive, content_length: int | None, limit: int) -> bytes:
    """The whole request body from ASGI ``receive``; 413 as soon as it is known to exceed ``limit`` bytes."""
    too_large = f"The request body is larger than the limit of {limit} bytes."
    if content_length is not None and content_length > limit:
        raise PayloadTooLargeError(too_large)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("The client closed the connection before its body arrived.")
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(too_large)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# How long a request may run before a task starts listening for the client going away. Most answers that
# come back sooner (embeddings, cached or tiny generations) then cost no watcher task at all (about 0.1 ms
# of CPU each, measured); a client that left earlier is still noticed, at most this much later.
WATCH_DISCONNECT_AFTER_S = 0.05


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client goes away first, cancel it (and so the engine request under it).

    The watcher task is started only once ``work`` has run for ``WATCH_DISCONNECT_AFTER_S`` (a timer
    until then): ``receive()`` reports a disconnect that happened before the watcher started, too.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_DISCONNECT_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if (
            watcher is not None and watcher.done() and not watcher.cancelled() and task.uncancel() == 0
        ):
            raise ClientDisconnectedError("The client closed the connection.") from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_JSON_TYPE = (b"content-type", b"application/json")


class JsonBytesResponse:
    """An already-encoded JSON answer, sent as the two ASGI messages it is.

    The inference routes (plain ASGI apps, see ``gateway.routes.inference``) answer with this: their bodies
    come from the engine ready to send, and Litestar's response machinery (header and cookie objects,
    media-type handling) would only add CPU per request.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.status = status
        self.body = body
        self.headers = [_JSON_TYPE, (b"content-length", str(len(body)).encode("ascii"))]
        for name, value in headers:
            self.headers.append((name.encode("latin-1"), value.encode("latin-1")))

    @classmethod
    def error(cls, body: ErrorBody) -> JsonBytesResponse:
        return cls(body.status, body.to_bytes(), body.headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def to_response(reply: JsonReply | StreamReply) -> ASGIApp:
    if isinstance(reply, StreamReply):
        return ASGIStreamingResponse(
            iterator=reply.chunks, status_code=200, media_type="text/event-stream", headers=_SSE_HEADERS
        )
    return JsonBytesResponse(reply.status, reply.body)
