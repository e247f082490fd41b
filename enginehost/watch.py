"""Watch running engines: when one exits, say so at once, end what it left behind, and restart it.

A background thread polls each engine's process (a cheap ``waitpid``) every ``interval`` seconds. When
one has exited, it reports the reason from the engine's log, stops the rest of its process family (vLLM's
engine core and workers would otherwise stay orphaned, holding memory and the port), and starts it again
after a back-off that doubles from ``first_delay`` up to ``max_delay`` while the engine keeps failing and
goes back to ``first_delay`` once it is healthy again. Meanwhile the gateway's health checks take the
replica out of rotation and put it back when it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enginehost.errors import EngineExitedError, EngineStartError

if TYPE_CHECKING:
    from enginehost.engines import EngineProcess

__all__ = ["EngineWatcher"]

log = logging.getLogger(__name__)


@dataclass
class _State:
    delay: float
    restart_at: float | None = None  # monotonic time of the next start, while waiting for it
    starting: bool = False  # spawned again, not healthy yet
    attempts: int = 0


class EngineWatcher:
    """Restart engines that exit while the stack runs (see the module docstring)."""

    def __init__(
        self,
        engines: Sequence[EngineProcess],
        *,
        progress: Callable[[str], None],
        interval: float = 1.0,
        first_delay: float = 1.0,
        max_delay: float = 60.0,
        start_timeout: float = 900.0,
    ) -> None:
        self.engines = list(engines)
        self.progress = progress
        self.interval = interval
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.start_timeout = start_timeout
        self._states = {id(e): _State(first_delay) for e in self.engines}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the engines themselves are stopped by their owner afterwards)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            for engine in self.engines:
                if self._stopping.is_set():
                    return
                try:
                    self._check(engine, self._states[id(engine)])
                except Exception:  # the watcher must outlive any one failure
                    log.exception("engine watcher: checking %s failed", engine.spec.name)

    def _check(self, engine: EngineProcess, state: _State) -> None:
        name = engine.spec.name
        if state.restart_at is not None:
            if time.monotonic() >= state.restart_at:
                self._respawn(engine, state)
            return
        if state.starting:
            self._check_starting(engine, state)
            return
        if not engine.running():
            try:
                engine.check_ready()  # raises with the reason from its log, and ends its process family
            except EngineExitedError as exc:
                self.progress(
                    f"{name}: exited unexpectedly ({exc.reason}; exit code {exc.exit_code}); restarting in"
                    f" {state.delay:g} s (log: {exc.log_path})"
                )
            else:
                engine.stop()
                self.progress(f"{name}: stopped unexpectedly; restarting in {state.delay:g} s")
            self._schedule(state)

    def _check_starting(self, engine: EngineProcess, state: _State) -> None:
        name = engine.spec.name
        try:
            ready = engine.check_ready()
        except EngineExitedError as exc:
            self.progress(f"{name}: exited again while starting ({exc.reason}); retrying in {state.delay:g} s")
            self._schedule(state)
            return
        if ready:
            self.progress(f"{name}: ready again on {engine.url} after {engine.elapsed():.0f} s")
            state.starting = False
            state.delay = self.first_delay
            state.attempts = 0
        elif engine.elapsed() > self.start_timeout:
            engine.stop()
            self.progress(f"{name}: not healthy {self.start_timeout:g} s after its restart; retrying in"
                          f" {state.delay:g} s")
            self._schedule(state)

    def _schedule(self, state: _State) -> None:
        state.starting = False
        state.restart_at = time.monotonic() + state.delay
        state.delay = min(self.max_delay, state.delay * 2)

    def _respawn(self, engine: EngineProcess, state: _State) -> None:
        state.restart_at = None
        state.attempts += 1
        try:
            engine.spawn(die_with_parent=True)
        except EngineStartError as exc:  # e.g. its port is still taken
            self.progress(f"{engine.spec.name}: cannot restart ({exc.reason}); retrying in {state.delay:g} s")
            self._schedule(state)
            return
        state.starting = True
        self.progress(f"{engine.spec.name}: restarting (attempt {state.attempts})")
