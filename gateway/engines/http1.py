"""The gateway's one pooled HTTP client toward engines: keep-alive HTTP/1.1 on `asyncio.Protocol` and httptools.

Why not a general-purpose client: on the hot path aiohttp's `ClientSession` was about a fifth of the gateway's
own CPU per proxied request (see the README's profile). Talking to an engine needs far less than such a client
offers, and this module does only that:

- one request at a time per connection (no pipelining), connections kept alive and reused last-in first-out;
- request bodies already in memory, sent with `Content-Length`;
- response bodies delimited by `Content-Length`, chunked, or the connection closing, parsed by httptools
  (the parser uvicorn already uses, so nothing new to install);
- plain TCP or TLS; credentials in the URL are sent as HTTP Basic auth;
- a body read whole (`read()`) is capped (`max_response_bytes`); a streamed one is bounded by flow control;
- no redirects, cookies, proxies, compression or `Expect: 100-continue`: an engine asks for none of those, and
  a cookie one tenant's call received must never ride along on another's anyway.

Timeouts are single timer handles per exchange (not a task or an `asyncio.timeout` per read): one until the
response headers are complete, then one until the whole body is. When one fires, the connection is aborted,
so the engine sees its client go away and stops working on the request. The same happens when a caller is
cancelled or gives up on a body it did not read to the end.

A request is written at most once: nothing here retries. An idle connection is checked before reuse (one
`poll` that does not wait): one the server already closed, or sent unrequested bytes on, is dropped and another
taken, so that `ClosedBeforeResponseError` means the server closed the connection *after* the request was
written, and may have received it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import select
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

__all__ = [
    "ClosedBeforeResponseError",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionLostError",
    "HttpClient",
    "HttpError",
    "HttpResponse",
    "InvalidResponseError",
    "Origin",
    "ResponseTooLargeError",
    "encode_headers",
]

# Below uvicorn's default keep-alive timeout (5 s), which vLLM's server keeps: a connection idle for longer
# is closed here first, instead of racing the server's close.
IDLE_TIMEOUT_S = 4.0
# A streamed body buffered beyond this (a client reading slower than the engine writes) pauses reading.
_STREAM_HIGH_WATER = 256 * 1024
# Default cap on a body read whole (the gateway's `engine_max_response_bytes`).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class HttpError(Exception):
    """Talking to a server over HTTP failed."""


class ConnectError(HttpError):
    """No connection could be made (refused, unreachable, unknown host, TLS handshake failed).

    `local`: the failure was this process's own (out of file descriptors or buffers), not the server's.
    """

    def __init__(self, reason: str, *, local: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.local = local


# Failures to connect that say nothing about the server: this process ran out of something.
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ConnectTimeoutError(HttpError):
    """The server did not accept a connection in time (down, or overloaded)."""


class ClosedBeforeResponseError(HttpError):
    """The connection closed (or was reset) after the request was written, before any byte of the response.

    The server may have received the request (and crashed on it): never resend it on this alone. Idle
    connections the server had closed before the request are skipped at checkout, so they do not end here.
    """


class InvalidResponseError(HttpError):
    """What came back is not a valid HTTP/1.1 response."""


class ResponseTooLargeError(InvalidResponseError):
    """More body bytes were buffered than the client accepts (`HttpClient(max_response_bytes=)`)."""


class ConnectionLostError(HttpError):
    """The connection was lost after the response had begun: the answer is incomplete."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where to connect, and the request-line prefix and fixed headers for every request sent there.

    Built once per engine URL: `http(s)://[user:password@]host[:port][/base/path]`.
    """

    tls: bool
    host: str
    port: int
    base_path: bytes
    fixed_headers: bytes  # Host (and Authorization, for credentials in the URL), CRLF-terminated

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("engine URL must be absolute http(s)")
        tls = parts.scheme == "https"
        default_port = 443 if tls else 80
        port = parts.port or default_port
        host = parts.hostname
        host_value = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_value += f":{port}"
        fixed = [("Host", host_value)]
        if parts.username is not None or parts.password is not None:
            userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            fixed.append(("Authorization", "Basic " + base64.b64encode(userinfo.encode("utf-8")).decode("ascii")))
        return cls(tls, host, port, parts.path.rstrip("/").encode("ascii"), encode_headers(fixed))


def encode_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """`name: value` lines for a mapping (or pairs), each CRLF-terminated.

    Raises `ValueError` for a name or value that could split the request (CR, LF or NUL) or is not latin-1.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = []
    for name, value in items:
        line = f"{name}: {value}\r\n"
        if "\r" in line[:-2] or "\n" in line[:-2] or "\x00" in line:
            raise ValueError(f"header {name!r} holds a control character")
        lines.append(line.encode("latin-1"))
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One TCP connection and the exchange currently on it (at most one)."""

    def __init__(self, client: HttpClient, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.max_buffered = client.max_response_bytes
        self.fd = -1  # the socket's descriptor, for `peer_closed` (-1: none known)
        self.closed = False
        self.idle_since = 0.0
        self.busy = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.content_type = b""
        self.got_bytes = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.delimited = False  # Content-Length or chunked; otherwise the body ends when the connection does
        self.error: BaseException | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.flow_control = False
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- the exchange --------------------------------------------------------------------------------------

    def begin(self, request: list[bytes], deadline: float) -> None:
        self._reset()
        self.busy = True
        self.timer = self.loop.call_at(deadline, self._on_timeout)
        assert self.transport is not None
        self.transport.writelines(request)

    async def until(self, ready: Callable[[_Connection], bool]) -> None:
        """Wait until ``ready(self)``, re-checked whenever the protocol has news; raise the exchange's error
        if one comes first. On any failure, and on cancellation, the connection is aborted."""
        try:
            while not ready(self):
                if self.error is not None:
                    raise self.error
                waiter = self.loop.create_future()
                self.waiter = waiter
                try:
                    await waiter
                finally:
                    self.waiter = None
        except BaseException:
            self.abort()
            self.busy = False
            raise

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._on_timeout)

    def _on_timeout(self) -> None:
        self.timer = None
        if self.busy and not self.complete:
            self.fail(TimeoutError())

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.abort()
        self._wake()

    def take_body(self) -> bytes:
        chunks = self.chunks
        if not chunks:
            return b""
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return body

    def finish(self) -> None:
        """The exchange is over: keep the connection for the next request if it can carry one."""
        self.busy = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.complete and self.keep_alive and self.error is None and not self.closed:
            self.client._keep(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close at once: the server sees its client go away mid-request."""
        self.closed = True
        self.fd = -1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def peer_closed(self) -> bool:
        """Whether the server closed this idle connection (or sent bytes on it) since it was last read.

        asyncio learns of a close only when the loop next polls the socket; a request written before then
        reaches a server that is gone. One `poll` with a zero timeout closes that window: EOF, an error, or
        bytes nobody asked for all mean the connection cannot carry a request. (Under TLS this sees the raw
        stream: a close_notify is bytes, which retires the connection just as well.) Not `recv(MSG_PEEK)`:
        on Linux that can make the kernel send a separate ACK, measured at about 10 us of CPU per request.
        """
        if self.fd < 0:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)  # errors and hang-ups are always reported too
        return bool(poller.poll(0))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError, AttributeError, ValueError):
                self.fd = sock.fileno()

    def data_received(self, data: bytes) -> None:
        if not self.busy or self.complete:
            self.abort()  # bytes nobody asked for: this connection can no longer be trusted
            self.keep_alive = False
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(InvalidResponseError(f"not a valid HTTP/1.1 response ({exc})"))

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fd = -1
        self.client._forget(self)
        if self.busy and not self.complete and self.error is None:
            if self.headers_done and not self.delimited:
                self.complete = True  # a body delimited by the connection closing has ended
            elif not self.got_bytes:
                self.error = ClosedBeforeResponseError("connection closed before the response")
            else:
                self.error = ConnectionLostError("connection lost in the middle of the response")
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake()

    # -- httptools callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second response in the same read: not asked for; fails the parse (see above)
            raise InvalidResponseError("more than one response to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self.content_type = value
        elif lowered == b"content-length" or lowered == b"transfer-encoding":
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > self.max_buffered and not self.flow_control:  # a streamed body's backlog: flow control
            exc = ResponseTooLargeError(f"response body larger than {self.max_buffered} bytes")
            self.chunks = []  # freed now; and a reader gets the error, not a part of the body
            self.buffered = 0
            self.fail(exc)
            raise exc  # stops the parser: nothing after this counts
        if self.flow_control and self.buffered > _STREAM_HIGH_WATER and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake()


def _headers_done(conn: _Connection) -> bool:
    return conn.headers_done


def _complete(conn: _Connection) -> bool:
    return conn.complete


def _has_data_or_complete(conn: _Connection) -> bool:
    return bool(conn.chunks) or conn.complete


class HttpResponse:
    """A response whose headers have arrived; the body is read with `read()` or piece by piece with
    `read_chunk()`. Reading to the end returns the connection to the pool; `abort()` (or an error,
    or cancellation while reading) closes it. Either ends the exchange exactly once."""

    __slots__ = ("_conn", "_ended", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._ended = False
        self.status = conn.status

    @property
    def is_event_stream(self) -> bool:
        """Whether the media type is `text/event-stream` (parameters allowed); cheaper than `content_type`."""
        raw = self._conn.content_type
        return raw[:17].lower() == b"text/event-stream" and raw[17:18] in (b"", b";", b" ", b"\t")

    @property
    def content_type(self) -> str:
        """The media type, lowercased and without parameters (`application/octet-stream` when absent)."""
        raw = self._conn.content_type.decode("latin-1").partition(";")[0].strip().lower()
        return raw or "application/octet-stream"

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        if self._ended:
            return b""
        try:
            await conn.until(_complete)
        except BaseException:
            self._ended = True
            raise
        body = conn.take_body()
        self._end()
        return body

    async def read_chunk(self) -> bytes:
        """The body as it arrives: whatever is buffered (at least one piece), `b""` once it has ended."""
        conn = self._conn
        if self._ended:
            return b""
        conn.flow_control = True
        try:
            await conn.until(_has_data_or_complete)
        except BaseException:
            self._ended = True
            raise
        if conn.chunks:
            return conn.take_body()
        self._end()
        return b""

    def release(self) -> None:
        """End the exchange: the connection is reused if the body was read to its end, else aborted."""
        if not self._ended:
            self._end()

    def abort(self) -> None:
        if not self._ended:
            self._ended = True
            self._conn.abort()
            self._conn.busy = False

    def _end(self) -> None:
        self._ended = True
        self._conn.finish()


class HttpClient:
    """Pooled keep-alive connections per origin. Create and use it inside one running event loop."""

    def __init__(
        self, *, connect_timeout: float, idle_timeout: float = IDLE_TIMEOUT_S, max_idle_per_origin: int = 512,
        ssl_context: ssl.SSLContext | None = None, max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        """`max_response_bytes`: the most body bytes buffered for one response; past it the connection is
        aborted and the read fails with `ResponseTooLargeError`. That caps a body read whole (`read()`); a body
        streamed (`read_chunk()`) has no size cap (its total timeout bounds it), and flow control bounds what
        is buffered of it.
        """
        if max_response_bytes <= 0:
            raise ValueError("max_response_bytes must be positive")
        self.max_response_bytes = max_response_bytes
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    async def request(
        self, origin: Origin, method: bytes, target: bytes, headers: bytes, body: bytes, *,
        first_byte_timeout: float, total_timeout: float, fresh: bool = False,
    ) -> HttpResponse:
        """Send a request and wait for the response headers.

        `target` is the path (after the origin's base path); `headers` come from `encode_headers` (without
        Host or Content-Length). `fresh`: do not reuse an idle connection. The request is written once, never
        resent. Raises `ConnectError`, `ConnectTimeoutError`, `ClosedBeforeResponseError`, `InvalidResponseError`,
        `ConnectionLostError`, or `TimeoutError` when the headers are not complete within `first_byte_timeout`;
        the connection is aborted on every failure and on cancellation.
        """
        if self._closed:
            raise RuntimeError("HttpClient is closed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        conn = None if fresh else self._checkout(origin, started)
        if conn is None:
            conn = await self._connect(origin, loop)
        head = b"%s %s%s HTTP/1.1\r\n%s%s" % (method, origin.base_path, target, origin.fixed_headers, headers)
        if body or method != b"GET":
            head += b"Content-Length: %d\r\n" % len(body)
        head += b"\r\n"
        conn.begin([head, body] if body else [head], started + min(first_byte_timeout, total_timeout))
        await conn.until(_headers_done)
        if not conn.complete:
            conn.arm(started + total_timeout)
        return HttpResponse(conn)

    async def close(self) -> None:
        """Close every connection, idle or busy (busy exchanges fail with `ConnectionLostError`)."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            conn.abort()
        self._open.clear()

    @property
    def idle_connections(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def _checkout(self, origin: Origin, now: float) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > self._idle_timeout or conn.peer_closed():
                conn.abort()  # expired, or closed by the server already: skipped, not a failure
                continue
            return conn
        return None

    async def _connect(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> _Connection:
        conn = _Connection(self, origin, loop)
        tls: ssl.SSLContext | None = None
        if origin.tls:
            if self._ssl is None:  # made once: loading the system's CA certificates is not cheap
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
                )
        except TimeoutError:
            conn.abort()
            raise ConnectTimeoutError(f"connect timed out after {self._connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake failed ({exc.reason or type(exc).__name__})") from exc
        except OSError as exc:  # asyncio's own message names the address; the errno's says what happened
            reason = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else exc.strerror
            raise ConnectError(reason or type(exc).__name__, local=exc.errno in _LOCAL_ERRNOS) from exc
        except BaseException:
            conn.abort()
            raise
        self._open.add(conn)
        return conn

    def _keep(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= self._max_idle:
            conn.abort()
            return
        now = conn.loop.time()
        conn.idle_since = now
        idle.append(conn)
        if now - idle[0].idle_since > self._idle_timeout:  # the least recently used went stale
            idle.pop(0).abort()

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and not conn.busy:
            with contextlib.suppress(ValueError):
                idle.remove(conn)
