"""uvicorn's httptools protocol with the bounds it lacks: head size, head time, connections per worker.

uvicorn feeds every byte to httptools, which keeps a header that has not ended by appending each new chunk
to it: a head of 64 MiB was held (and copied, again and again) until it ended, blocking the event loop for
seconds. Here the bytes of an unfinished head are counted *before* they reach the parser, so a head over
``max_header_bytes`` costs at most that plus one read before it is answered 431 and the connection closed.

Time: a connection must finish its head within ``header_read_timeout`` of its first byte (or of its start,
so a connection that never sends a byte is closed too). Between requests, uvicorn's own keep-alive timer
(``timeout_keep_alive``) closes an idle connection; the head timer takes over at the next request's first
read, armed only when that read did not end the head (nearly every head arrives whole in one read, and
then costs no timer). Nothing runs while the app works on a request: its body has its own deadline (the
outer ASGI layer).

The 431 is delivered: the connection is half-closed after it and whatever the client still sends is read
and dropped (up to ``_DRAIN_BYTES`` or ``_DRAIN_SECONDS``), because closing a socket with unread data makes
the kernel reset the connection, and a reset can destroy the answer before the client reads it.

Count: a worker holds at most ``max_connections`` client connections; one more is closed as soon as it is
accepted, so a flood of idle sockets cannot take every file descriptor the worker has.

The bounds ride on the uvicorn config (:class:`BoundedConfig`), which uvicorn pickles into worker
processes, so they reach every worker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import HeaderFieldsTooLargeError, error_body_for

__all__ = ["BoundedConfig", "BoundedHttpToolsProtocol", "ConnectionLimits"]

_DRAIN_BYTES = 1024 * 1024
_DRAIN_SECONDS = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds (defaults as in :class:`gateway.settings.Settings`)."""

    max_header_bytes: int = 64 * 1024
    header_read_timeout: float = 10.0
    max_connections: int = 4096


class BoundedConfig(uvicorn.Config):
    """``uvicorn.Config`` that also carries the :class:`ConnectionLimits` for the protocol."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        self.limits = limits
        super().__init__(*args, **kwargs)


class _HeadTooLargeError(Exception):
    """Raised in a parser callback to stop parsing a head that ended past the limit."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection, with its head bounded in bytes and time and the worker's connections capped."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = config.limits if isinstance(config, BoundedConfig) else ConnectionLimits()
        self.max_header_bytes = limits.max_header_bytes
        self.header_read_timeout = limits.header_read_timeout
        self.max_connections = limits.max_connections
        self.head_bytes = 0
        self.reading_head = True  # between one request's last body byte and the next head's end
        self.head_timer: asyncio.TimerHandle | None = None
        self.drained: int | None = None  # bytes dropped after a 431; None until then

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self.transport = transport  # for connection_lost, which follows
            transport.close()
            return
        super().connection_made(transport)
        self.head_timer = self.loop.call_later(self.header_read_timeout, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.reading_head:  # the body of the current request: the common case
            super().data_received(data)
            return
        if self.drained is not None:
            self.drain(len(data))
            return
        self.head_bytes += len(data)
        super().data_received(data)
        if self.reading_head:
            if self.head_bytes > self.max_header_bytes:
                if self.drained is None:
                    self.reject_head()  # the head goes on past the limit
            elif self.head_timer is None and self.head_bytes:
                # A head begun after an idle keep-alive wait, not ended in one read. Not when this read ended a
                # whole request (on_message_complete set head_bytes to 0): while the app answers it, no head is
                # being read, and the timer would close the connection unanswered.
                self.head_timer = self.loop.call_later(self.header_read_timeout, self.head_timed_out)

    def on_headers_complete(self) -> None:
        # head_bytes counts whole reads, so a body read with the head may lift it over the limit: only
        # then is the head itself measured (ends of lines included), and one over the limit refused.
        if self.head_bytes > self.max_header_bytes and self.head_size() > self.max_header_bytes:
            raise _HeadTooLargeError  # stops the parser; uvicorn then calls send_400_response
        self.reading_head = False
        self.cancel_head_timer()
        super().on_headers_complete()

    def head_size(self) -> int:
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def send_400_response(self, msg: str) -> None:
        if self.reading_head and self.head_bytes > self.max_header_bytes:
            self.reject_head()
        else:
            super().send_400_response(msg)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_head = True  # the next bytes begin the next request's head
        self.head_bytes = 0

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_timed_out(self) -> None:
        """The head did not end in time (or never began): close without an answer, as for an idle connection."""
        self.head_timer = None
        if self.reading_head and not self.transport.is_closing():
            self.transport.close()

    def drain(self, size: int) -> None:
        assert self.drained is not None
        self.drained += size
        if self.drained > _DRAIN_BYTES:
            self.transport.close()

    def reject_head(self) -> None:
        """Answer 431, half-close, drop what still comes for a bounded while, then close: nothing is parsed."""
        self.cancel_head_timer()
        self.drained = 0
        error = error_body_for(
            HeaderFieldsTooLargeError(f"The request line and headers exceed {self.max_header_bytes} bytes.")
        )
        body = error.to_bytes()
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        for text_name, text_value in error.headers:
            head += [text_name.encode("latin-1"), b": ", text_value.encode("latin-1"), b"\r\n"]
        head += [
            b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
            b"connection: close\r\n\r\n", body,
        ]  # fmt: skip
        self.transport.write(b"".join(head))
        if not self.transport.can_write_eof():  # TLS
            self.transport.close()
            return
        self.transport.write_eof()
        self.head_timer = self.loop.call_later(_DRAIN_SECONDS, self.transport.close)
