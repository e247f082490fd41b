"""The outermost ASGI layer: request id on every response (404s and 405s included), body read deadline,
one pass over the request headers for what every route must agree on, and the direct path to the
inference routes.

It wraps the whole Litestar app rather than sitting in Litestar's middleware stack, because Litestar
answers unknown routes before its middleware runs. Kept to plain ASGI so it costs a few microseconds.
A ``POST`` whose path is in ``direct`` goes straight to that ASGI app (see ``gateway.routes.inference``),
with ``scope["app"]`` set to the Litestar app as Litestar itself would.

What it decides for every route alike:
- two ``Authorization`` headers are a 400 (no route may read the first while another reads the last);
- ``HEAD`` is served as ``GET`` without the body, wherever ``GET`` is (load balancers probe with it);
- an answer given before the request body was read (a 413, a 401) first reads and discards the rest of
  the body, up to ``drain_limit`` bytes: a client that sends its whole body before reading (urllib does)
  then reads the answer instead of a connection reset. A client that sent ``Expect: 100-continue`` has
  not sent its body, and is not asked for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InvalidRequestError, RequestTimeoutError, answer_error
from gateway.routes.common import JsonBytesResponse
from observability.context import is_valid_request_id, new_request_id, reset_request_id, set_request_id

REQUEST_ID_HEADER = b"x-request-id"


class RequestContextMiddleware:
    def __init__(
        self, app: Litestar, *, body_read_timeout: float, drain_limit: int = 8 * 1024 * 1024,
        direct: Mapping[str, ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.body_read_timeout = body_read_timeout
        self.drain_limit = drain_limit
        self.direct = dict(direct or {})

    def __getattr__(self, name: str) -> Any:  # let servers and tests reach the wrapped app's attributes
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id, authorizations, body_expected = _scan_headers(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = time.perf_counter()
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        body = _Body(receive, self.body_read_timeout, body_expected)
        head_only = scope["method"] == "HEAD"
        if head_only:
            scope["method"] = "GET"
        drain_limit = self.drain_limit

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                if not body.done:
                    await body.drain(drain_limit)
                message["headers"] = [*message.get("headers", ()), header]
            elif head_only and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        app: ASGIApp | None = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
        if authorizations > 1:
            error = InvalidRequestError(
                f"The request has {authorizations} Authorization headers; send exactly one.",
                param="authorization", code="duplicate_header",
            )
            app = JsonBytesResponse.error(answer_error(error, scope["method"], scope["path"]))
        elif app is None:
            app = self.app
        else:
            scope["app"] = self.app
        token = set_request_id(request_id)
        try:
            await app(scope, body, send_with_id)
        finally:
            reset_request_id(token)


def _scan_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, int, bool]:
    """The request id to use, how many Authorization headers came, and whether a body is on its way."""
    request_id: str | None = None
    authorizations = 0
    body_expected = continue_expected = False
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if request_id is None:
                request_id = _valid_request_id(value)
        elif name == b"authorization":
            authorizations += 1
        elif name == b"content-length":
            body_expected = value != b"0"
        elif name == b"transfer-encoding":
            body_expected = True
        elif name == b"expect":
            continue_expected = value.lower() == b"100-continue"  # the body is not sent until asked for
    return request_id or new_request_id(), authorizations, body_expected and not continue_expected


def _valid_request_id(value: bytes) -> str:
    try:
        candidate = value.decode("ascii")
    except UnicodeDecodeError:
        return new_request_id()
    return candidate if is_valid_request_id(candidate) else new_request_id()


class _Body:
    """ASGI ``receive`` that fails with 408 if the body has not fully arrived within ``timeout`` seconds,
    and knows whether it has (``done``)."""

    __slots__ = ("_deadline", "_receive", "_timeout", "done")

    def __init__(self, receive: Receive, timeout: float, expected: bool) -> None:
        self._receive = receive
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self.done = not expected

    async def __call__(self) -> Any:
        if self.done:
            return await self._receive()
        remaining = self._deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                message = await self._receive()
        except TimeoutError:
            raise RequestTimeoutError(
                f"The request body did not arrive within {self._timeout:g} seconds."
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
        return message

    async def drain(self, limit: int) -> None:
        """Read and discard the rest of the body, up to ``limit`` bytes and within the body deadline."""
        drained = 0
        while not self.done and drained <= limit:
            try:
                message = await self()
            except RequestTimeoutError:
                return
            drained += len(message.get("body", b""))
