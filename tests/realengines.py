"""The real vLLM engines the real-engine suites share: one prepared chat model, one engine pair per session.

Registered by ``tests/conftest.py`` (``pytest_plugins``). vLLM on the CPU takes about a minute to start
and the chat model about 40 s to prepare, so ``tests/local``, ``tests/e2e`` and the suites that come
next (retrieval, adapters) share one pair instead of starting their own: the ``engine_stack`` fixture
(session scope) starts the chat engine (SmolLM2-135M-Instruct, LoRA enabled) and the embedding engine
(all-MiniLM-L6-v2) on first use, through ``enginehost`` as ``tenantgate up`` does, and stops them when
the session ends. Ask for ``engines`` to get both running.

Two engines fill NUMA node 0's memory (chat 0.4, embeddings 0.2): a test that must start engines of its
own (``tenantgate up``) stops the shared pair first, and a test that kills or restarts a shared engine
(the recovery test) runs after every other user of the pair. ``pytest_collection_modifyitems`` puts the
real-engine modules last, in this order (``ORDER``):

1. ``local/test_models.py``: model preparation (the one conversion of the session), no engine;
2. ``local/test_engines.py``: the supervisor (its broken-model test runs before the pair starts);
3. every other module under ``local/`` or ``e2e/`` (the API tests, and new suites by default): users of
   the shared pair;
4. ``e2e/test_engine_recovery.py``: kills the shared chat engine and restarts it;
5. ``e2e/test_up.py``: stops the shared pair (checking that nothing of it is left), then runs ``up``.

Everything here skips cleanly where the engines extra (vLLM for the CPU, the model packages) is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from enginehost import (
    EngineProcess,
    EngineSpec,
    chat_engine_spec,
    embedding_engine_spec,
    embedding_model_path,
    engines_available,
    missing_engine_extra_message,
    prepare_chat_model,
    wait_all_ready,
)

TESTS_DIR = Path(__file__).resolve().parent
ENGINE_START_TIMEOUT = 600.0
# Real-engine modules in the order they must run (paths relative to tests/); None stands for every other
# module under local/ or e2e/. See the module docstring.
ORDER: tuple[str | None, ...] = (
    "local/test_models.py",  # prepares the chat model; no engine
    "local/test_engines.py",  # the supervisor; its broken-model test runs before the shared pair starts
    None,  # users of the shared pair
    "e2e/test_engine_recovery.py",  # kills the shared chat engine and restarts it
    "e2e/test_up.py",  # stops the shared pair, then `tenantgate up` starts its own
)


def _phase(item: pytest.Item) -> tuple[int, int]:
    """(phase, package): 0 for every test that needs no real engine, then 1 + the index in ``ORDER``;
    within a phase, local/ before e2e/ so that e2e's package fixtures (the gateway) are set up once."""
    try:
        relative = item.path.resolve().relative_to(TESTS_DIR).as_posix()
    except ValueError:
        return 0, 0
    package = relative.split("/", 1)[0]
    if package not in ("local", "e2e"):
        return 0, 0
    slot = ORDER.index(relative) if relative in ORDER else ORDER.index(None)
    return 1 + slot, 0 if package == "local" else 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Real-engine modules last, in phase order; the sort is stable, so every other order is kept."""
    items.sort(key=_phase)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return f"--- last lines of {path}:\n" + "\n".join(text[-lines:])


@dataclass
class EngineStack:
    """The session's chat and embedding engines on fixed ports: started on first use, restartable."""

    root: Path
    ports: dict[str, int] = field(default_factory=lambda: {"chat": free_port(), "embeddings": free_port()})
    engines: dict[str, EngineProcess] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)
    _chat_model: Path | None = None
    _start_failure: str | None = None

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def data_dir(self) -> Path:
        """A tenantgate data directory whose ``models/`` holds the prepared chat model."""
        return self.root / "data"

    def chat_model(self, progress: Callable[[str], None] = print) -> Path:
        """The chat model folder, converted from the packaged GGUF once per session."""
        if self._chat_model is None:
            self._chat_model = prepare_chat_model(self.data_dir, progress=progress)
        return self._chat_model

    def spec(self, name: str) -> EngineSpec:
        if name == "chat":
            return chat_engine_spec(self.chat_model(), port=self.ports["chat"])
        return embedding_engine_spec(embedding_model_path(), port=self.ports["embeddings"])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def ensure_started(self) -> None:
        """Start whichever engine is not running (both at once, as ``tenantgate up`` does).

        A start that failed is not tried again for every later test (each try can take minutes): they
        fail at once with its reason."""
        if self._start_failure is not None:
            pytest.fail(f"the shared engines failed to start earlier in this session: {self._start_failure}")
        todo = [name for name in self.ports if name not in self.engines or not self.engines[name].running()]
        for name in todo:
            self._forget(name)
        started = [EngineProcess(self.spec(name), self.log_dir) for name in todo]
        try:
            for engine in started:
                self.engines[engine.spec.name] = engine
                engine.spawn()
            wait_all_ready(started, timeout=ENGINE_START_TIMEOUT, progress=print)
        except BaseException as exc:
            for engine in started:
                self._forget(engine.spec.name)
            if isinstance(exc, Exception):
                self._start_failure = f"{type(exc).__name__}: {exc}"
            raise
        for engine in started:
            self.startup_s[engine.spec.name] = engine.elapsed()

    def kill(self, name: str) -> list[int]:
        """SIGKILL every process of an engine at once (a crash, not a stop); return their ids."""
        engine = self.engines[name]
        pids = engine.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        engine.stop(grace=5)  # reaps the server and checks that nothing of it is left
        del self.engines[name]
        return pids

    def _forget(self, name: str) -> None:
        engine = self.engines.pop(name, None)
        if engine is not None:
            engine.stop()

    def stop_all(self) -> dict[str, list[int]]:
        """Stop every engine (SIGTERM to all first, so they wind down together); the processes each had."""
        families = {name: engine.processes() for name, engine in self.engines.items()}
        for engine in self.engines.values():
            engine.terminate()
        for name in list(self.engines):
            self._forget(name)
        return families


@pytest.fixture(scope="session")
def engine_stack() -> Iterator[EngineStack]:
    """The session's engines, nothing started yet; whatever runs is stopped when the session ends."""
    if not engines_available():
        pytest.skip(missing_engine_extra_message())
    root = Path(tempfile.mkdtemp(prefix="tenantgate-engines-"))  # not pytest's tmp dirs: concurrent runs prune those
    stack = EngineStack(root)
    try:
        yield stack
    finally:
        try:
            stack.stop_all()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def engines(engine_stack: EngineStack) -> EngineStack:
    """Both engines running (started by the first test that needs them, again after a test stopped one)."""
    engine_stack.ensure_started()
    return engine_stack


@pytest.fixture(autouse=True)
def _engine_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed test that used the shared engines, show the end of their logs (and the e2e gateway's)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "engine_stack" in request.fixturenames:
        stack: EngineStack = request.getfixturevalue("engine_stack")
        for path in sorted([stack.root / "gateway.log", *stack.log_dir.glob("*.log")]):
            print(log_tail(path))
