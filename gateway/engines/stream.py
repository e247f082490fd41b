"""A streaming (200) answer from an engine, handed out chunk by chunk."""

from __future__ import annotations

from types import TracebackType

from gateway.engines.errors import EngineBadResponseError, EngineStreamBrokenError, EngineTimeoutError
from gateway.engines.http1 import HttpError, HttpResponse, InvalidResponseError, ResponseTooLargeError
from gateway.engines.replica import Replica
from gateway.engines.routes import Lease

__all__ = ["EngineStream"]


class EngineStream:
    """The body of a 200 answer as raw `bytes` chunks, exactly as they arrive.

    Iterate it (`async for chunk in stream`), then `aclose()` it, or use `async with`. Closing a
    stream that was not read to the end aborts the upstream connection: vLLM sees the disconnect
    and stops generating, which is how the gateway cancels engine work when its client goes away.
    A stream read to the end returns its connection to the pool. The stream owns the request's `Lease`
    on its replica and releases it exactly once, on whichever path ends the stream.

    Errors while iterating: `EngineTimeoutError` past the total timeout, `EngineStreamBrokenError`
    when the connection is lost or the body is truncated; the connection is aborted either way.
    """

    __slots__ = ("_done", "_lease", "_released", "_resp", "_total", "status")

    def __init__(self, resp: HttpResponse, lease: Lease, total_timeout: float) -> None:
        self._resp = resp
        self._total = total_timeout
        self._done = False
        self._released = False
        self._lease = lease
        self.status = resp.status

    @property
    def replica(self) -> Replica:
        return self._lease.replica

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    @property
    def finished(self) -> bool:
        """True once the engine's body was read to its end."""
        return self._done

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> bytes:
        if self._released:
            raise StopAsyncIteration
        try:
            chunk = await self._resp.read_chunk()
        except BaseException as exc:
            self._release(abort=True)
            mapped = map_body_error(exc, self._total)
            if mapped is exc:
                raise
            raise mapped from exc
        if chunk:
            return chunk
        self._done = True
        self._release(abort=False)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Release the stream: abort upstream unless it was read to the end. Idempotent."""
        self._release(abort=not self._done)

    def _release(self, *, abort: bool) -> None:
        if self._released:
            return
        self._released = True
        self._lease.release()
        if abort:
            self._resp.abort()  # closes the connection: the engine sees its client go away
        else:
            self._resp.release()

    async def __aenter__(self) -> EngineStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def map_body_error(exc: BaseException, total_timeout: float) -> BaseException:
    """The engine error for a failure while reading a response body (never retried).

    Anything else (cancellation, bugs) comes back as it is, for the caller to re-raise.
    """
    if isinstance(exc, TimeoutError):
        return EngineTimeoutError(f"The engine did not finish within {total_timeout:g} s.")
    if isinstance(exc, ResponseTooLargeError):
        return EngineBadResponseError("The engine's answer was larger than the gateway accepts.")
    if isinstance(exc, InvalidResponseError):
        return EngineBadResponseError(f"The engine sent an invalid response body ({str(exc)[:200]}).")
    if isinstance(exc, HttpError):
        return EngineStreamBrokenError("The connection to the engine was lost in the middle of its answer.")
    return exc
