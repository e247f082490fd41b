"""Forward one request to an engine replica: replica choice, retries, timeouts, streaming.

Retry rule: only failures before the engine saw the request are retried, on another replica.
- connect failed (refused, DNS, connect timeout): the replica is marked unhealthy and excluded;
- a pooled keep-alive connection found dead before any response byte (`ServerDisconnectedError`,
  `ClientOSError`): that is routine when the engine closed an idle connection at the same moment,
  so the same replica gets one more try on a fresh connection; a second such failure (or a refused
  connect, when the engine really died) marks it unhealthy and excludes it.
Nothing is retried once response headers arrived, nor after the first-byte timeout (the engine may
be busy generating: a retry would double the load).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.engines.errors import (
    EngineBadResponseError,
    EngineTimeoutError,
    EngineUnavailableError,
)
from gateway.engines.pool import EnginePool
from gateway.engines.replica import Purpose, Replica
from gateway.engines.stream import EngineStream, map_body_error
from gateway.engines.timeouts import EngineTimeouts

__all__ = ["EngineClient", "EngineReply"]

_JSON_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))


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
    """This attempt failed before the engine saw the request: try again (`exclude`: elsewhere).

    `mark_down`: also take the replica out of rotation until a health check brings it back. A refused
    connection does; a connect *timeout* does not, since an overloaded but live engine (or gateway host)
    times out too, and marking the only replica down would turn one slow moment into seconds of 503s.
    """

    reason: str
    exclude: bool
    mark_down: bool = True


class EngineClient:
    """Sends requests to the replicas of an `EnginePool` over one shared aiohttp session.

    The session should have no small connection limit (`TCPConnector(limit=0)` or a large one):
    waiting for a free pooled connection counts against the first-byte timeout.
    """

    def __init__(self, pool: EnginePool, session: aiohttp.ClientSession, timeouts: EngineTimeouts) -> None:
        self._pool = pool
        self._session = session
        self._timeouts = timeouts
        # aiohttp enforces `total` over the whole exchange (body and stream reads included).
        self._client_timeout = aiohttp.ClientTimeout(total=timeouts.total, sock_connect=timeouts.connect)

    async def post(
        self, model: str, purpose: Purpose, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply:
        """Send `body` unchanged to a replica serving `model` and read the whole answer.

        `headers` are end-to-end headers to pass along (`traceparent`, `x-request-id`), never
        hop-by-hop ones (`connection`, `content-length`, `host`).
        """
        resp, replica = await self._send(model, purpose, path, body, headers)
        return await _read_reply(resp, replica, self._timeouts)

    async def open_stream(
        self, model: str, purpose: Purpose, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> EngineReply | EngineStream:
        """Like `post`, but a 200 answer comes back as an `EngineStream` to be iterated and closed."""
        resp, replica = await self._send(model, purpose, path, body, headers)
        if resp.status == 200:
            return EngineStream(resp, replica, self._timeouts.total)
        return await _read_reply(resp, replica, self._timeouts)

    async def _send(
        self, model: str, purpose: Purpose, path: str, body: bytes, headers: Mapping[str, str] | None
    ) -> tuple[aiohttp.ClientResponse, Replica]:
        """Pick a replica and send until response headers arrive; the caller owns `in_flight` then."""
        send_headers: Mapping[str, str] = _JSON_HEADERS
        if headers:  # the caller's Content-Type, if any, replaces ours (case-insensitively)
            merged = CIMultiDict(_JSON_HEADERS)
            merged.update(headers)
            send_headers = merged
        excluded: list[Replica] = []
        suspect: list[Replica] = []
        last_reason = ""
        while True:
            try:
                replica = self._pool.choose(model, purpose, excluded)
            except EngineUnavailableError as exc:
                if not excluded:
                    raise
                raise EngineUnavailableError(
                    f"No engine serving the model `{model}` could be reached (last: {last_reason}).",
                    model,
                ) from exc
            replica.in_flight += 1
            try:
                async with asyncio.timeout(self._timeouts.first_byte):
                    resp = await self._session.post(
                        replica.endpoint(path), data=body, headers=send_headers, timeout=self._client_timeout
                    )
            except BaseException as exc:
                replica.in_flight -= 1
                mapped = _map_send_error(exc, self._timeouts)
                if mapped is exc:
                    raise
                if not isinstance(mapped, _Retry):
                    raise mapped from exc
                last_reason = mapped.reason
                if mapped.exclude or replica in suspect:
                    if mapped.mark_down:
                        self._pool.mark_unhealthy(replica, mapped.reason)
                    excluded.append(replica)
                else:
                    suspect.append(replica)
                continue
            return resp, replica


def _map_send_error(exc: BaseException, timeouts: EngineTimeouts) -> BaseException | _Retry:
    """The error to raise for a failure before response headers, or `_Retry`."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _Retry(f"cannot connect: {exc.os_error.strerror or type(exc.os_error).__name__}", exclude=True)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return _Retry(f"connect timed out after {timeouts.connect:g} s", exclude=True, mark_down=False)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return _Retry("connection closed before the response", exclude=False)
    if isinstance(exc, TimeoutError):
        return EngineTimeoutError(f"The engine did not answer within {timeouts.first_byte:g} s.")
    if isinstance(exc, aiohttp.ClientResponseError):
        return EngineBadResponseError(f"The engine sent an invalid HTTP response ({exc.message[:200]}).")
    if isinstance(exc, aiohttp.ClientError):
        return EngineBadResponseError(f"Talking to the engine failed ({type(exc).__name__}).")
    return exc  # cancellation and bugs propagate as they are


async def _read_reply(resp: aiohttp.ClientResponse, replica: Replica, timeouts: EngineTimeouts) -> EngineReply:
    try:
        data = await resp.read()
    except BaseException as exc:
        resp.close()  # aborts the connection, so the engine stops working on it
        mapped = map_body_error(exc, timeouts.total)
        if mapped is exc:
            raise
        raise mapped from exc
    finally:
        replica.in_flight -= 1
    return EngineReply(resp.status, data, replica)
