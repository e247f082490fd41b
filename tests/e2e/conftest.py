"""The end-to-end suite: real vLLM engines, real Postgres, ``tenantgate serve`` as its own process.

The engines are the session's shared pair (``tests/realengines.py``: ``engine_stack``, ``engines``),
also used by tests/local and by the suites that come next; that module also fixes the order the
real-engine modules run in (the API tests, then the recovery test, which kills and restarts the shared
chat engine, then ``tenantgate up``, which stops the pair and starts its own). The gateway runs once for
this package, in front of the shared engines.

Everything here skips cleanly where the engines extra (vLLM for the CPU, the model packages) is missing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import openai
import psycopg
import pytest

from tests.realengines import EngineStack, free_port, log_tail

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "sk-tgadmin-" + "e" * 52
CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any TENANTGATE_* variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTGATE_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **settings)
    return env


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
