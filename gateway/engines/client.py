"""Forward one request to an engine replica: replica choice, retries, timeouts, streaming.

Retry rule: a request is retried, on another replica, only when the engine provably did not receive it,
that is when no connection could be made:
- connect failed (refused, DNS, TLS): the replica is marked unhealthy and excluded; a connect *timeout*,
  or a failure that was this process's own (out of file descriptors), excludes it for this request only
  (see `_Retry`).
A pooled connection the engine had already closed is not a failure at all: `HttpClient` finds it at
checkout and takes another before writing anything. Everything after the request was written is final:
a connection closed or reset before any response byte (the engine may have crashed *on this request*,
and would crash again elsewhere) answers `EngineStreamBrokenError` (502, `engine_disconnected`) without
marking the replica down, since one request's failure is no verdict on the replica for everyone (the
pool is asked for an early health check instead); nor is anything retried after the first-byte timeout
(the engine may be busy generating: a retry would double the load) or once response bytes arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.engines.adapter_leases import AdapterLeases
from gateway.engines.errors import (
    EngineBadResponseError,
    EngineStreamBrokenError,
    EngineTimeoutError,
    EngineUnavailableError,
)
from gateway.engines.http1 import (
    ClosedBeforeResponseError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    HttpClient,
    HttpError,
    HttpResponse,
    encode_headers,
)
from gateway.engines.normalize import redact
from gateway.engines.pool import EnginePool
from gateway.engines.replica import Replica
from gateway.engines.routes import Lease, Route
from gateway.engines.stream import EngineStream, map_body_error
from gateway.engines.timeouts import EngineTimeouts

__all__ = ["EngineClient", "EngineReply"]

logger = logging.getLogger(__name__)

_JSON = b"Content-Type: application/json\r\n"


@dataclass(frozen=True, slots=True)
class EngineReply:
    """A complete (non-streaming) answer from a replica, whatever its HTTP status."""

    status: int
    body: bytes
    replica: Replica

    def json(self) -> Any:
        """The body decoded as JSON; `EngineBadResponseError` when it is not JSON."""
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as exc:
            raise EngineBadResponseError(
                f"The engine answered HTTP {self.status} with a body that is not JSON."
            ) from exc


@dataclass(frozen=True, slots=True)
class _Retry:
    """This attempt failed before the engine saw the request: try again on another replica.

    `mark_down`: also take the replica out of rotation until a health check brings it back. A refused
    connection does; a connect *timeout* does not, since an overloaded but live engine (or gateway host)
    times out too, and marking the only replica down would turn one slow moment into seconds of 503s.
    """

    reason: str
    mark_down: bool = True


class EngineClient:
    """Sends requests to the replicas of an `EnginePool` over the gateway's one `HttpClient`.

    `timeouts.first_byte` runs until the response headers are complete, `timeouts.total` over the whole
    exchange, body or stream included (`timeouts.connect` is the `HttpClient`'s own). `adapters`: the leases of
    adapter routes (placement); without it an adapter route is leased like any other.

    An adapter request an engine answers with 404 (it does not hold the adapter: restarted, or another gateway
    process unloaded it) is sent once more, after placement forgot the adapter there and loaded it again.
    """

    def __init__(
        self, pool: EnginePool, http: HttpClient, timeouts: EngineTimeouts, adapters: AdapterLeases | None = None
    ) -> None:
        self._pool = pool
        self._http = http
        self._timeouts = timeouts
        self._adapters = adapters

    async def post(
        self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply:
        """Send `body` unchanged to a replica of `route` and read the whole answer.

        `headers` are end-to-end headers to pass along (`traceparent`, `x-request-id`), never
        hop-by-hop ones (`connection`, `content-length`, `host`).
        """
        resp, lease = await self._send(route, path, body, headers)
        return await _read_reply(resp, lease, self._timeouts)

    async def open_stream(
        self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply | EngineStream:
        """Like `post`, but a 200 answer comes back as an `EngineStream` to be iterated and closed."""
        resp, lease = await self._send(route, path, body, headers)
        if resp.status == 200:
            if resp.is_event_stream:
                return EngineStream(resp, lease, self._timeouts.total)
            lease.release()
            replica = lease.replica
            resp.abort()  # nothing of it is read: relaying it raw would corrupt the client's event stream
            logger.warning(
                "engine %s answered a stream with Content-Type %s", replica.display_url, redact(resp.content_type, 80)
            )
            raise EngineBadResponseError("The engine answered a streaming request with something that is not a stream.")
        return await _read_reply(resp, lease, self._timeouts)

    async def _send(
        self, route: Route, path: str, body: bytes, headers: Mapping[str, str] | None
    ) -> tuple[HttpResponse, Lease]:
        """Lease a replica and send until response headers arrive; the caller owns the lease then.

        `headers` must not hold CR, LF or NUL (`ValueError`); a Content-Type among them replaces ours.
        """
        header_block = _JSON
        if headers:
            header_block = encode_headers(headers)
            if not any(name.lower() == "content-type" for name in headers):
                header_block = _JSON + header_block
        target = path.encode("ascii")
        timeouts = self._timeouts
        excluded: list[Replica] = []
        last_reason = ""
        adapters = self._adapters if route.adapter is not None else None
        reloaded = False  # an adapter request answered 404 was sent once more
        while True:
            try:
                lease = self._pool.lease(route, excluded) if adapters is None else await adapters.lease(route, excluded)
            except EngineUnavailableError as exc:
                if not excluded:
                    raise
                raise _unreachable(route, last_reason) from exc
            replica = lease.replica
            try:
                resp = await self._http.request(
                    replica.origin, b"POST", target, header_block, body,
                    first_byte_timeout=timeouts.first_byte, total_timeout=timeouts.total,
                )
            except BaseException as exc:
                lease.release()
                mapped = _map_send_error(exc, timeouts)
                if mapped is exc:
                    raise
                if not isinstance(mapped, _Retry):
                    if isinstance(mapped, EngineStreamBrokenError):
                        self._pool.check_soon(replica)  # it may have crashed: let a health check find out
                    raise mapped from exc
                last_reason = mapped.reason
                if mapped.mark_down:
                    self._pool.mark_unhealthy(replica, mapped.reason)
                excluded.append(replica)
                continue
            if adapters is not None and resp.status == 404 and not reloaded:
                reloaded = True
                await _read_reply(resp, lease, timeouts)  # small; releases the lease
                adapters.lost(replica, route)
                continue
            return resp, lease


def _unreachable(route: Route, last_reason: str) -> EngineUnavailableError:
    """No replica is left after some could not be reached: say why the last one could not."""
    model = route.engine_model
    return EngineUnavailableError(
        f"No engine serving the model `{model}` could be reached (last: {last_reason}).", model
    )


def _map_send_error(exc: BaseException, timeouts: EngineTimeouts) -> BaseException | _Retry:
    """The error to raise for a failure before response headers, or `_Retry`."""
    if isinstance(exc, ConnectError):  # a local shortage (say, no file descriptors left) is not the engine's fault
        return _Retry(f"cannot connect: {exc.reason}", mark_down=not exc.local)
    if isinstance(exc, ConnectTimeoutError):
        return _Retry(f"connect timed out after {timeouts.connect:g} s", mark_down=False)
    if isinstance(exc, (ClosedBeforeResponseError, ConnectionLostError)):  # after the request was written: final
        return EngineStreamBrokenError("The connection to the engine was lost before its answer arrived.")
    if isinstance(exc, TimeoutError):
        return EngineTimeoutError(f"The engine did not answer within {timeouts.first_byte:g} s.")
    if isinstance(exc, HttpError):
        return EngineBadResponseError(f"The engine sent an invalid HTTP response ({str(exc)[:200]}).")
    return exc  # cancellation and bugs propagate as they are


async def _read_reply(resp: HttpResponse, lease: Lease, timeouts: EngineTimeouts) -> EngineReply:
    try:
        data = await resp.read()  # on any failure the connection is aborted, so the engine stops working on it
    except BaseException as exc:
        mapped = map_body_error(exc, timeouts.total)
        if mapped is exc:
            raise
        raise mapped from exc
    finally:
        lease.release()
    return EngineReply(resp.status, data, lease.replica)
