"""The processes of a benchmark: the fake engine, and ``tenantgate serve`` with its embedded Postgres.

Every process is started in its own session (so a Ctrl-C at the terminal reaches only the benchmark,
which then stops them in order) and asks the kernel for SIGTERM if the benchmark dies. ``Children``
stops them all, gracefully first (SIGTERM, so the gateway drains, flushes usage and stops its
embedded Postgres), then by force (SIGKILL to the whole process group); a Postgres still running in a
data directory of ours after that is stopped too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the benchmark process exits, however it exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def admin_key() -> str:
    return "sk-tgadmin-" + secrets.token_hex(26)


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any TENANTGATE_* variable of the caller's, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTGATE_")}
    env.update(settings)
    return env


class Children:
    """Every process started by the benchmark; ``stop_all()`` stops them, newest first."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes], float]] = []
        self._pg_dirs: list[Path] = []

    def spawn(
        self, name: str, argv: list[str], *, env: dict[str, str], log: Path | None, grace_s: float = 5.0
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``; its output goes to ``log`` (or a pipe, when ``log`` is None)."""
        out: IO[bytes] | int = subprocess.PIPE if log is None else log.open("ab")
        try:
            proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self._procs.append((name, proc, grace_s))
        return proc

    def watch_postgres(self, pgdata: Path) -> None:
        """Stop a Postgres left running in ``pgdata`` when everything is stopped."""
        self._pg_dirs.append(pgdata)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for i, (_, p, grace) in enumerate(self._procs):
            if p is proc:
                del self._procs[i]
                _terminate(proc, grace)
                return

    def stop_all(self) -> None:
        while self._procs:
            _, proc, grace = self._procs.pop()
            _terminate(proc, grace)
        while self._pg_dirs:
            stop_leftover_postgres(self._pg_dirs.pop())


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    # Whatever is left of its process group (workers of a killed server): SIGKILL.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)
    if proc.stdout is not None:
        proc.stdout.close()


def stop_leftover_postgres(pgdata: Path) -> None:
    """Fast-shutdown (then kill) a postmaster still running in ``pgdata``; nothing if none is."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        postmaster = psutil.Process(pid)
        if str(pgdata) not in " ".join(postmaster.cmdline()):
            return
    except (OSError, ValueError, psutil.Error):
        return
    with contextlib.suppress(psutil.Error):
        postmaster.send_signal(signal.SIGINT)  # fast shutdown
        try:
            postmaster.wait(10)
        except psutil.TimeoutExpired:
            postmaster.kill()


# -- the fake engine ---------------------------------------------------------------------------------


def start_fake_engine(children: Children, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m tests.fakes.vllm`` on a free port; returns the process and its base URL."""
    proc = children.spawn(
        "fake engine", [sys.executable, "-m", "tests.fakes.vllm", "--port", "0", "--model", "fake-chat"],
        env=clean_env(), log=None, grace_s=3.0,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace").strip()
    if not line.startswith("READY "):
        rest = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
        raise RuntimeError(f"the fake engine did not start: {line!r} {rest[-2000:]}")
    (log_dir / "fake-engine.url").write_text(line + "\n")
    return proc, line.split(" ", 1)[1]


# -- the gateway -------------------------------------------------------------------------------------


@dataclass
class Gateway:
    """A running ``tenantgate serve`` (Granian or uvicorn) and what the benchmark needs of it."""

    server: str
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log: Path
    admin_key: str
    api_key: str = ""

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the server's worker processes, or the main one if none."""
        try:
            main = psutil.Process(self.proc.pid)
            kids = [p for p in main.children(recursive=True) if _is_worker(p)]
        except psutil.Error:
            return []
        return [p.pid for p in kids] or [main.pid]

    def all_pids(self) -> list[int]:
        """The main process and every process under it."""
        try:
            main = psutil.Process(self.proc.pid)
            return [main.pid, *(p.pid for p in main.children(recursive=True))]
        except psutil.Error:
            return []

    def postgres_pids(self) -> list[int]:
        """The embedded Postgres: the postmaster and its children (backends, writers)."""
        try:
            pid = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])
            postmaster = psutil.Process(pid)
            return [pid, *(p.pid for p in postmaster.children())]
        except (OSError, ValueError, psutil.Error):
            return []

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _is_worker(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
        return proc.name().startswith("python") and "resource_tracker" not in cmdline
    except psutil.Error:
        return False


def start_gateway(
    children: Children, *, server: str, workers: int, engine_url: str, data_dir: Path,
    extra_env: dict[str, str],
) -> Gateway:
    """``python -m gateway serve`` with everything on, its embedded Postgres in ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    key = admin_key()
    env = clean_env(
        TENANTGATE_DATA_DIR=str(data_dir), TENANTGATE_ADMIN_KEY=key, TENANTGATE_ENGINE_URLS=engine_url,
        TENANTGATE_HOST="127.0.0.1", TENANTGATE_PORT=str(port), TENANTGATE_SERVER=server,
        TENANTGATE_WORKERS=str(workers), TENANTGATE_LOG_LEVEL="warning", TENANTGATE_SHUTDOWN_TIMEOUT="5",
        **extra_env,
    )
    log = data_dir / "gateway.log"
    children.watch_postgres(data_dir / "postgres")
    proc = children.spawn(f"gateway ({server})", [sys.executable, "-m", "gateway", "serve"], env=env, log=log,
                          grace_s=20.0)
    return Gateway(server, proc, f"http://127.0.0.1:{port}", data_dir, log, key)


async def wait_ready(gateway: Gateway, session: aiohttp.ClientSession, timeout_s: float = 120.0) -> float:
    """Poll ``GET /readyz`` until 200; returns the seconds it took."""
    started = time.perf_counter()
    deadline = started + timeout_s
    while time.perf_counter() < deadline:
        if gateway.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with status {gateway.proc.returncode}:\n{gateway.log_tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(gateway.url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                await resp.read()
                if resp.status == 200:
                    return time.perf_counter() - started
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready after {timeout_s:g} s:\n{gateway.log_tail()}")


async def create_api_key(gateway: Gateway, session: aiohttp.ClientSession, tenant: str) -> str:
    """Create a tenant and a user key for it through the admin API."""
    admin = {"Authorization": f"Bearer {gateway.admin_key}", "Content-Type": "application/json"}
    async with session.post(gateway.url + "/admin/tenants", json={"name": tenant}, headers=admin) as resp:
        doc = await resp.json()
        if resp.status not in (200, 201):
            raise RuntimeError(f"POST /admin/tenants answered {resp.status}: {doc}")
    url = f"{gateway.url}/admin/tenants/{doc['id']}/keys"
    async with session.post(url, json={"role": "user"}, headers=admin) as resp:
        doc = await resp.json()
        if resp.status not in (200, 201):
            raise RuntimeError(f"POST /admin/tenants/../keys answered {resp.status}: {doc}")
    key: str = doc["key"]
    return key
