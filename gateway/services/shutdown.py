"""Ending the streams still running when a graceful stop runs out of time, in a way clients understand.

uvicorn, on SIGTERM or SIGINT, stops accepting, waits up to its ``timeout_graceful_shutdown`` for the
requests in flight, then *cancels* what is left, and only then runs the app's lifespan shutdown. A long
stream cancelled there ends as a truncated body, which a client cannot tell from a network fault. So the
app must learn of the signal itself: :meth:`ShutdownWatch.hooked_signals` chains a handler in front of
the server's (which it then calls, so the server stops as before), and a little before the drain time is
up (``drain_timeout`` minus a margin) :meth:`ShutdownWatch.cut` ends every stream still running. Each
stream then sends an error event (``code: server_shutting_down``) and ``data: [DONE]``, and its usage row
says ``server_shutdown`` (503) with the tokens delivered until then.

Streams register with :meth:`track` (once per stream, never per chunk) and are ended through their
:class:`Cuttable` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger(__name__)

SHUTDOWN_MARGIN_S = 1.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Cuttable(Protocol):
    def cut(self) -> None:
        """End this stream now, with the shutdown error event."""


class ShutdownWatch:
    """Knows whether a graceful stop has begun, and ends the tracked streams shortly before it times out.

    ``margin``: how long before ``drain_timeout`` the streams are ended (at most half of it), time enough
    for each to send its last events before the server cancels what is left.
    """

    def __init__(self, drain_timeout: float, *, margin: float = SHUTDOWN_MARGIN_S) -> None:
        self.cut_after = max(0.0, drain_timeout - min(margin, drain_timeout / 2))
        self.begun = False  # the stop signal arrived
        self.cutting = False  # the drain time is nearly up: streams still running are ended
        self._streams: set[Cuttable] = set()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """A graceful stop has begun: end the streams still running ``cut_after`` seconds from now.

        Idempotent; call it on the event loop.
        """
        if self.begun:
            return
        self.begun = True
        log.info("shutdown begun: streams still running in %.1f s will be ended", self.cut_after)
        self._timer = asyncio.get_running_loop().call_later(self.cut_after, self.cut)

    def cut(self) -> None:
        """End every stream still running (and any that starts from now on)."""
        self._timer = None
        self.cutting = True
        if self._streams:
            log.warning("ending %d stream(s) still running at shutdown", len(self._streams))
        for stream in list(self._streams):
            stream.cut()

    def track(self, stream: Cuttable) -> None:
        self._streams.add(stream)
        if self.cutting:
            stream.cut()

    def untrack(self, stream: Cuttable) -> None:
        self._streams.discard(stream)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @contextlib.contextmanager
    def hooked_signals(self) -> Iterator[None]:
        """Call :meth:`begin` on SIGTERM and SIGINT, in front of the handlers installed now (the server's).

        Only a Python-level handler is chained (uvicorn installs its own with ``signal.signal`` before the
        app starts): where none is, no server drains on that signal, so there is nothing to cut. Signals are
        only handled in the main thread; elsewhere this does nothing. On exit the previous handlers come
        back, unless someone replaced ours meanwhile.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        installed: list[tuple[signal.Signals, _Handler, _Handler]] = []

        def begin_soon() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to cut
                loop.call_soon_threadsafe(self.begin)

        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            if callable(previous):
                handler = _chained(begin_soon, previous)
                signal.signal(sig, handler)
                installed.append((sig, handler, previous))
        try:
            yield
        finally:
            self.close()
            for sig, handler, previous in installed:
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, previous)


_Handler = Callable[[int, FrameType | None], Any]


def _chained(first: Callable[[], None], then: _Handler) -> _Handler:
    def handler(signum: int, frame: FrameType | None) -> None:
        first()
        then(signum, frame)

    return handler
