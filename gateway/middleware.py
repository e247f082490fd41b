"""The outermost ASGI layer: request id on every response (404s and 405s included), body read deadline,
and the direct path to the inference routes.

It wraps the whole Litestar app rather than sitting in Litestar's middleware stack, because Litestar
answers unknown routes before its middleware runs. Kept to plain ASGI so it costs a few microseconds.
A ``POST`` whose path is in ``direct`` goes straight to that ASGI app (see ``gateway.routes.inference``),
with ``scope["app"]`` set to the Litestar app as Litestar itself would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import RequestTimeoutError
from observability.context import is_valid_request_id, new_request_id, reset_request_id, set_request_id

REQUEST_ID_HEADER = b"x-request-id"


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            try:
                candidate = value.decode("ascii")
            except UnicodeDecodeError:
                break
            if is_valid_request_id(candidate):
                return candidate
            break
    return new_request_id()


class RequestContextMiddleware:
    def __init__(self, app: Litestar, *, body_read_timeout: float, direct: Mapping[str, ASGIApp] | None = None) -> None:
        self.app = app
        self.body_read_timeout = body_read_timeout
        self.direct = dict(direct or {})

    def __getattr__(self, name: str) -> Any:  # let servers and tests reach the wrapped app's attributes
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["started"] = time.perf_counter()
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        app = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
        if app is None:
            app = self.app
        else:
            scope["app"] = self.app
        token = set_request_id(request_id)
        try:
            await app(scope, _deadline_receive(receive, self.body_read_timeout), send_with_id)
        finally:
            reset_request_id(token)


def _deadline_receive(receive: Receive, timeout: float) -> Receive:
    """``receive`` that fails with 408 if the body has not fully arrived within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    body_done = False

    async def receive_with_deadline() -> Any:
        nonlocal body_done
        if body_done:
            return await receive()
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                message = await receive()
        except TimeoutError:
            raise RequestTimeoutError(
                f"The request body did not arrive within {timeout:g} seconds."
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return receive_with_deadline
