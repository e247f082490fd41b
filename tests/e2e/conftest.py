"""The end-to-end suite: real vLLM engines, real Postgres, ``tenantgate serve`` as its own process.

The two engines (chat: SmolLM2-135M-Instruct with LoRA enabled; embeddings: all-MiniLM-L6-v2) are started
once for the whole package and stopped when its last test is done, before any other package's tests run
(tests/local starts engines of its own, and node 0 has no room for two pairs). ``EngineStack`` starts
them lazily, can kill and restart one (the recovery test) and stop both (the ``tenantgate up`` test,
which starts its own pair). The modules run in a fixed order: the API tests, then the recovery test,
then ``tenantgate up``.

Everything here skips cleanly where the engines extra (vLLM for the CPU, the model packages) is missing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import openai
import psycopg
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

REPO = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
ADMIN_KEY = "sk-tgadmin-" + "e" * 52
CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
ENGINE_START_TIMEOUT = 600.0
# Modules in the order they must run: the recovery test kills an engine, `tenantgate up` stops them both.
MODULE_ORDER = ("test_api.py", "test_engine_recovery.py", "test_up.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run this package's modules in ``MODULE_ORDER`` (stable within a module); other items stay put."""
    slots = [i for i, item in enumerate(items) if item.path.parent == E2E_DIR]

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)

    for slot, item in zip(slots, sorted((items[i] for i in slots), key=rank), strict=True):
        items[slot] = item


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any TENANTGATE_* variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTGATE_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **settings)
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return f"--- last lines of {path}:\n" + "\n".join(text[-lines:])


# --- the engines ------------------------------------------------------------------------------------


@dataclass
class EngineStack:
    """The suite's chat and embedding engines on fixed ports: started on first use, restartable."""

    root: Path
    ports: dict[str, int] = field(default_factory=lambda: {"chat": free_port(), "embeddings": free_port()})
    engines: dict[str, EngineProcess] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)
    _chat_model: Path | None = None

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def data_dir(self) -> Path:
        """A tenantgate data directory whose ``models/`` holds the prepared chat model."""
        return self.root / "data"

    def chat_model(self) -> Path:
        """The chat model folder, converted from the packaged GGUF once per suite."""
        if self._chat_model is None:
            self._chat_model = prepare_chat_model(self.data_dir, progress=print)
        return self._chat_model

    def spec(self, name: str) -> EngineSpec:
        if name == "chat":
            return chat_engine_spec(self.chat_model(), port=self.ports["chat"])
        return embedding_engine_spec(embedding_model_path(), port=self.ports["embeddings"])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def ensure_started(self) -> None:
        """Start whichever engine is not running (both at once, as ``tenantgate up`` does)."""
        todo = [name for name in self.ports if name not in self.engines or not self.engines[name].running()]
        for name in todo:
            self._forget(name)
        started = [EngineProcess(self.spec(name), self.log_dir) for name in todo]
        try:
            for engine in started:
                self.engines[engine.spec.name] = engine
                engine.spawn()
            wait_all_ready(started, timeout=ENGINE_START_TIMEOUT, progress=print)
        except BaseException:
            for engine in started:
                self._forget(engine.spec.name)
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

    def stop_all(self) -> None:
        for engine in self.engines.values():
            engine.terminate()
        for name in list(self.engines):
            self._forget(name)


@pytest.fixture(scope="package")
def engine_stack() -> Iterator[EngineStack]:
    """The engines' supervisor, nothing started yet; every engine is stopped after the package's tests."""
    if not engines_available():
        pytest.skip(missing_engine_extra_message())
    root = Path(tempfile.mkdtemp(prefix="tenantgate-e2e-"))  # not pytest's tmp dirs: concurrent runs prune those
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
    """Both engines running (started on the first test that needs them, again after a test stopped one)."""
    engine_stack.ensure_started()
    return engine_stack


# --- the gateway ------------------------------------------------------------------------------------


@dataclass
class GatewayProcess:
    """``python -m gateway serve`` in front of the suite's engines, over the session's Postgres."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    database_url: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def client(self, key: str, **kwargs: object) -> openai.OpenAI:
        """The official SDK, without retries: a 503 must reach the test, not be retried away."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120, **kwargs)  # type: ignore[arg-type]

    def readyz(self) -> int:
        try:
            return httpx.get(self.url + "/readyz", timeout=5).status_code
        except httpx.TransportError:
            return 0


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {proc.returncode}\n{log_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"the gateway was not ready after {timeout:g} s\n{log_tail(log)}")


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 30.0) -> int:
    """SIGTERM, then SIGKILL its process group after ``grace`` seconds; return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


@pytest.fixture(scope="package")
def gateway(engine_stack: EngineStack, database_url: str) -> Iterator[GatewayProcess]:
    engine_stack.ensure_started()
    port = free_port()
    env = clean_env(
        TENANTGATE_DATABASE_URL=database_url,
        TENANTGATE_ENGINE_URLS=engine_stack.url("chat"),
        TENANTGATE_EMBEDDING_URLS=engine_stack.url("embeddings"),
        TENANTGATE_ADMIN_KEY=ADMIN_KEY,
        TENANTGATE_PORT=str(port),
        TENANTGATE_DATA_DIR=str(engine_stack.root / "gateway"),
        TENANTGATE_ENGINE_HEALTH_INTERVAL="0.5",
        TENANTGATE_USAGE_FLUSH_INTERVAL="0.2",
        TENANTGATE_SHUTDOWN_TIMEOUT="5",
        TENANTGATE_LOG_FORMAT="text",
    )
    log = engine_stack.root / "gateway.log"
    out: IO[bytes]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield GatewayProcess(proc, url, log, database_url)
    finally:
        stop_process(proc)


@dataclass(frozen=True)
class Tenant:
    id: str
    key: str


@pytest.fixture(scope="package")
def tenant(gateway: GatewayProcess) -> Tenant:
    """A tenant and a user key, made through the admin API."""
    with gateway.admin() as admin:
        created = admin.post("/admin/tenants", json={"name": f"e2e-{secrets.token_hex(4)}"})
        assert created.status_code == 201, created.text
        tenant_id = created.json()["id"]
        key = admin.post(f"/admin/tenants/{tenant_id}/keys", json={"role": "user"})
        assert key.status_code == 201, key.text
    return Tenant(tenant_id, key.json()["key"])


@pytest.fixture
def client(gateway: GatewayProcess, tenant: Tenant, engines: EngineStack) -> openai.OpenAI:
    """The OpenAI SDK on the gateway with the tenant's key; both engines are up."""
    del engines
    return gateway.client(tenant.key)


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed e2e test, show the end of the gateway's and the engines' logs."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before and "engine_stack" in request.fixturenames:
        stack: EngineStack = request.getfixturevalue("engine_stack")
        for path in sorted([stack.root / "gateway.log", *stack.log_dir.glob("*.log")]):
            print(log_tail(path))


def usage_row(database_url: str, request_id: str, timeout: float = 10.0) -> dict[str, object]:
    """The usage_events row of a request, once the gateway has flushed it."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            cur = conn.execute(
                "SELECT endpoint, model, stream, status_code, error_code, prompt_tokens, completion_tokens,"
                " ttft_ms FROM usage_events WHERE request_id = %s",
                (request_id,),
            )
            row = cur.fetchone()
            if row is not None:
                names = [column.name for column in cur.description or ()]
                return dict(zip(names, row, strict=True))
            if time.monotonic() >= deadline:
                raise AssertionError(f"no usage_events row for {request_id} after {timeout:g} s")
            time.sleep(0.1)
