"""The engine HTTP/1.1 client against scripted raw TCP servers: framing, keep-alive, failures, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from gateway.engines.http1 import (
    ClosedBeforeResponseError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    HttpClient,
    InvalidResponseError,
    Origin,
    ResponseTooLargeError,
    encode_headers,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawServer"], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request (head and Content-Length body), as raw bytes; b"" when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


@dataclass
class RawServer:
    """A TCP server whose handler writes exactly the bytes a test wants; it records what it saw."""

    handler: Handler
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
            if await reader.read(1) == b"":
                self.closed_by_client.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client.set()
        finally:
            writer.close()

    async def next_request(self, reader: asyncio.StreamReader) -> bytes:
        request = await read_request(reader)
        if request:
            self.requests.append(request)
        return request


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> RawServer:
        raw = RawServer(handler)
        raw.server = await asyncio.start_server(raw._serve, "127.0.0.1", 0, ssl=tls)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient(connect_timeout=1.0)
    yield http
    await http.close()


async def get(client: HttpClient, url: str, path: bytes = b"/x", *, first_byte: float = 2.0, total: float = 5.0,
              body: bytes = b"", headers: bytes = b"") -> tuple[int, str, bytes]:
    method = b"POST" if body else b"GET"
    resp = await client.request(Origin.from_url(url), method, path, headers, body,
                                first_byte_timeout=first_byte, total_timeout=total)
    return resp.status, resp.content_type, await resp.read()


async def answer_each(reply: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        while await raw.next_request(reader):
            writer.write(reply)
            await writer.drain()

    return handler


async def test_keep_alive_reuses_one_connection(serve: Callable[[Handler], Awaitable[RawServer]],
                                                client: HttpClient) -> None:
    raw = await serve(await answer_each(OK))
    for _ in range(3):
        assert await get(client, raw.url) == (200, "application/json", b"{}")
    assert raw.connections == 1
    assert client.idle_connections == 1


async def test_request_line_headers_and_body(serve: Callable[[Handler], Awaitable[RawServer]],
                                             client: HttpClient) -> None:
    raw = await serve(await answer_each(OK))
    url = raw.url.replace("http://", "http://us%40er:p%3Ass@") + "/base/"
    await get(client, url, b"/v1/chat/completions", body=b'{"a": 1}', headers=b"x-request-id: r1\r\n")
    head, _, body = raw.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /base/v1/chat/completions HTTP/1.1"
    port = raw.url.rsplit(":", 1)[1]
    assert lines[1:] == [
        f"Host: 127.0.0.1:{port}".encode(),
        b"Authorization: Basic dXNAZXI6cDpzcw==",  # us@er:p:ss
        b"x-request-id: r1",
        b"Content-Length: 8",
    ]
    assert body == b'{"a": 1}'


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", b""),
    ],
)
async def test_framings(serve: Callable[[Handler], Awaitable[RawServer]], client: HttpClient,
                        reply: bytes, body: bytes) -> None:
    raw = await serve(await answer_each(reply))
    status, content_type, read = await get(client, raw.url)
    assert (status, content_type, read) == (int(reply[9:12]), "application/octet-stream", body)
    await get(client, raw.url)
    assert raw.connections == 1


async def test_close_delimited_body_and_connection_close(serve: Callable[[Handler], Awaitable[RawServer]],
                                                         client: HttpClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nuntil ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"the end")
        writer.close()

    raw = await serve(handler)
    assert await get(client, raw.url) == (200, "text/plain", b"until the end")
    assert await get(client, raw.url) == (200, "text/plain", b"until the end")
    assert raw.connections == 2  # never reused
    assert client.idle_connections == 0


async def test_garbage_and_truncation(serve: Callable[[Handler], Awaitable[RawServer]], client: HttpClient) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)
        writer.write(b"THIS IS NOT HTTP\r\n\r\n")

    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)
        writer.close()

    with pytest.raises(InvalidResponseError):
        await get(client, (await serve(garbage)).url)
    with pytest.raises(ConnectionLostError):
        await get(client, (await serve(truncated)).url)
    with pytest.raises(ClosedBeforeResponseError):
        await get(client, (await serve(silent)).url)
    assert client.idle_connections == 0


async def test_unrequested_bytes_after_a_response_retire_the_connection(
    serve: Callable[[Handler], Awaitable[RawServer]], client: HttpClient
) -> None:
    raw = await serve(await answer_each(OK + OK))  # two answers to one request
    assert await get(client, raw.url) == (200, "application/json", b"{}")
    await asyncio.sleep(0.05)
    assert await get(client, raw.url) == (200, "application/json", b"{}")
    assert raw.connections == 2


async def test_first_byte_timeout_aborts_the_connection(serve: Callable[[Handler], Awaitable[RawServer]],
                                                        client: HttpClient) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)

    raw = await serve(stall)
    with pytest.raises(TimeoutError):
        await get(client, raw.url, first_byte=0.1)
    async with asyncio.timeout(2):
        await raw.closed_by_client.wait()


async def test_total_timeout_while_reading_the_body(serve: Callable[[Handler], Awaitable[RawServer]],
                                                    client: HttpClient) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(50):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    raw = await serve(trickle)
    resp = await client.request(Origin.from_url(raw.url), b"GET", b"/", b"", b"", first_byte_timeout=1.0,
                                total_timeout=0.3)
    pieces: list[bytes] = []

    async def read_all() -> None:
        while chunk := await resp.read_chunk():
            pieces.append(chunk)

    with pytest.raises(TimeoutError):
        await read_all()
    assert 2 <= len(pieces) < 10
    async with asyncio.timeout(2):
        await raw.closed_by_client.wait()


async def test_cancelled_caller_aborts_the_connection(serve: Callable[[Handler], Awaitable[RawServer]],
                                                      client: HttpClient) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)

    raw = await serve(stall)
    task = asyncio.create_task(get(client, raw.url))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(2):
        await raw.closed_by_client.wait()
    assert client.idle_connections == 0


async def test_a_slow_reader_pauses_the_stream_and_loses_nothing(
    serve: Callable[[Handler], Awaitable[RawServer]], client: HttpClient
) -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    count = 32  # 2 MiB, well past the high-water mark

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * count))
        for _ in range(count):
            writer.write(piece)
            await writer.drain()

    raw = await serve(flood)
    resp = await client.request(Origin.from_url(raw.url), b"GET", b"/", b"", b"", first_byte_timeout=1.0,
                                total_timeout=10.0)
    received = bytearray()
    while chunk := await resp.read_chunk():
        received += chunk
        await asyncio.sleep(0.01)
    assert received == piece * count
    assert client.idle_connections == 1  # read to its end: kept


async def test_idle_connections_expire(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    raw = await serve(await answer_each(OK))
    http = HttpClient(connect_timeout=1.0, idle_timeout=0.05)
    try:
        await get(http, raw.url)
        await get(http, raw.url)
        assert raw.connections == 1
        await asyncio.sleep(0.1)
        await get(http, raw.url)
        assert raw.connections == 2
    finally:
        await http.close()


async def test_connect_refused_and_connect_timeout() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{spare.getsockname()[1]}"
    http = HttpClient(connect_timeout=0.2)
    # A listener that never accepts, its backlog full: further connects hang in SYN retries.
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        with pytest.raises(ConnectError) as refused:
            await get(http, refused_url)
        assert refused.value.reason == "Connection refused"
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(listener.getsockname())
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectTimeoutError):
            await get(http, f"http://127.0.0.1:{listener.getsockname()[1]}")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
        await http.close()


def test_headers_that_could_split_a_request_are_refused() -> None:
    assert encode_headers({"traceparent": "00-ab-cd-01"}) == b"traceparent: 00-ab-cd-01\r\n"
    for bad in ({"x": "a\r\nHost: evil"}, {"x\n": "a"}, {"x": "a\x00"}):
        with pytest.raises(ValueError, match="control character"):
            encode_headers(bad)
    with pytest.raises(ValueError, match="absolute"):
        Origin.from_url("engine:8000")


async def test_tls_engine_with_a_trusted_and_an_untrusted_certificate(
    serve: Callable[..., Awaitable[RawServer]]
) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    raw = await serve(await answer_each(OK), server_tls)
    url = raw.url.replace("http://", "https://")
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    http = HttpClient(connect_timeout=1.0, ssl_context=trusting)
    untrusting = HttpClient(connect_timeout=1.0)  # the system's CAs only
    try:
        assert await get(http, url) == (200, "application/json", b"{}")
        assert await get(http, url) == (200, "application/json", b"{}")
        assert raw.connections == 1
        with pytest.raises(ConnectError, match="TLS handshake failed"):
            await get(untrusting, url)
    finally:
        await http.close()
        await untrusting.close()


async def test_running_out_of_file_descriptors_is_a_local_connect_error(
    serve: Callable[[Handler], Awaitable[RawServer]], client: HttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = await serve(await answer_each(OK))
    loop = asyncio.get_running_loop()

    async def no_descriptors(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(loop, "create_connection", no_descriptors)
    with pytest.raises(ConnectError) as exc_info:
        await get(client, raw.url)
    assert exc_info.value.local
    assert exc_info.value.reason == "Too many open files"
    monkeypatch.undo()
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{spare.getsockname()[1]}"
    with pytest.raises(ConnectError) as refused:
        await get(client, refused_url)
    assert not refused.value.local


def read_request_blocking(conn: socket.socket) -> bytes:
    """One GET request's head from a blocking socket; b"" when the client closed."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        piece = conn.recv(4096)
        if not piece:
            return b""
        head += piece
    return head


async def test_an_idle_connection_the_server_closed_is_skipped_before_anything_is_written(
    client: HttpClient,
) -> None:
    """The server closes a kept-alive connection and the FIN sits unread in the client's socket (the event
    loop has not polled it yet): the next request must go out on a new connection, not into the dead one."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    per_connection: list[list[bytes]] = []
    close_first = threading.Event()
    first_closed = threading.Event()

    def serve() -> None:  # a thread: it runs while the test holds the event loop
        for index in range(2):
            conn, _ = listener.accept()
            seen: list[bytes] = []
            per_connection.append(seen)
            with conn:
                conn.settimeout(5)
                while request := read_request_blocking(conn):
                    seen.append(request)
                    conn.sendall(OK)
                    if index == 0:
                        close_first.wait(5)
                        break
            if index == 0:
                first_closed.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert await get(client, url) == (200, "application/json", b"{}")
        (idle,) = client._idle[Origin.from_url(url)]
        close_first.set()
        assert first_closed.wait(5)
        assert select.select([idle.fd], [], [], 5)[0], "the server's FIN should be readable by now"
        assert not idle.closed  # the loop has not seen the close: only a look at the socket can tell
        assert await get(client, url) == (200, "application/json", b"{}")
        assert [len(seen) for seen in per_connection] == [1, 1]  # nothing written into the closed one
    finally:
        listener.close()
        await client.close()
        await asyncio.to_thread(thread.join, 5)


async def test_a_body_past_the_cap_aborts_the_exchange(serve: Callable[[Handler], Awaitable[RawServer]]) -> None:
    cap = 64 * 1024
    piece = b"x" * 16 * 1024

    def sending(count: int, *, chunked: bool) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
            while await raw.next_request(reader):
                if chunked:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(count):
                        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * count))
                    for _ in range(count):
                        writer.write(piece)
                        await writer.drain()

        return handler

    http = HttpClient(connect_timeout=1.0, max_response_bytes=cap)
    try:
        at_cap = await serve(sending(cap // len(piece), chunked=False))
        assert await get(http, at_cap.url) == (200, "application/octet-stream", piece * (cap // len(piece)))
        for chunked in (False, True):
            raw = await serve(sending(1024, chunked=chunked))  # 16 MiB offered
            with pytest.raises(ResponseTooLargeError):
                await get(http, raw.url)
            async with asyncio.timeout(2):
                await raw.closed_by_client.wait()  # aborted: the server stopped being read
        assert http.idle_connections == 1  # only the connection that answered within the cap
    finally:
        await http.close()


async def test_a_streamed_body_is_not_capped_by_the_whole_body_limit(
    serve: Callable[[Handler], Awaitable[RawServer]]
) -> None:
    piece = bytes(range(256)) * 256  # 64 KiB

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: RawServer) -> None:
        await raw.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * 64))
        for _ in range(64):
            writer.write(piece)
            await writer.drain()

    raw = await serve(flood)
    http = HttpClient(connect_timeout=1.0, max_response_bytes=1024 * 1024)
    try:
        resp = await http.request(Origin.from_url(raw.url), b"GET", b"/", b"", b"", first_byte_timeout=1.0,
                                  total_timeout=10.0)
        received = 0
        while chunk := await resp.read_chunk():
            received += len(chunk)
        assert received == len(piece) * 64  # 4 MiB through a 1 MiB cap: flow control bounds the backlog
    finally:
        await http.close()
