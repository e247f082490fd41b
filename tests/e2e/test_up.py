"""``tenantgate up`` end to end: embedded Postgres, its own two vLLM engines, the gateway; Ctrl-C ends it all.

The session's shared engines (tests/realengines.py) are stopped first, the last real-engine module to
run, checking that nothing of them is left: chat (0.4) and embeddings (0.2) reserve shares of NUMA node
0's memory, and a second pair beside them fails vLLM's start-up memory check. To save the conversion
(about half a minute) the data directory's ``models/`` gets a link to the chat model the session already
prepared; ``prepare_chat_model`` accepts it by its marker, so both runs must say they reuse it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.e2e.conftest import CHAT_MODEL, EMBED_MODEL, REPO, clean_env
from tests.realengines import EngineStack, free_port, live

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY_LINE = re.compile(r"its API key \(shown once\): (\S+)")
UP_TIMEOUT = 600.0


@dataclass
class Up:
    """A ``python -m gateway up`` child in its own process group, its output collected line by line."""

    data_dir: Path
    port: int
    chat_port: int
    embed_port: int
    proc: subprocess.Popen[str] = field(init=False)
    lines: list[str] = field(default_factory=list)
    _new: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start(self) -> None:
        env = clean_env(
            TENANTGATE_DATA_DIR=str(self.data_dir),
            TENANTGATE_PORT=str(self.port),
            TENANTGATE_LOCAL_CHAT_PORT=str(self.chat_port),
            TENANTGATE_LOCAL_EMBEDDING_PORT=str(self.embed_port),
            TENANTGATE_LOG_FORMAT="text",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "up"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,  # its own process group, which a terminal's Ctrl-C signals as a whole
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``; fails if ``up`` exits or time runs out first."""
        regex = re.compile(pattern)
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} after {timeout:g} s:\n{self.output[-4000:]}")
            try:
                if self._new.get(timeout=min(left, 1.0)) is None and seen == len(self.lines):
                    raise AssertionError(f"up exited ({self.proc.poll()}) before {pattern!r}:\n{self.output[-4000:]}")
            except queue.Empty:
                pass

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.output[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text}"
            time.sleep(0.5)
        raise AssertionError(f"up was not ready after {timeout:g} s (readyz: {last}):\n{self.output[-4000:]}")

    def ctrl_c(self, timeout: float = 120.0) -> int:
        """SIGINT to its process group, as a terminal's Ctrl-C; its exit status."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"up did not exit within {timeout:g} s of Ctrl-C:\n{self.output[-4000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


Snapshot = dict[tuple[int, float], str]


def snapshot() -> Snapshot:
    """Every process on the machine: (pid, start time) -> command line."""
    found: Snapshot = {}
    for proc in psutil.process_iter(["pid", "create_time", "cmdline", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        found[(info["pid"], info["create_time"])] = " ".join(info["cmdline"] or ())
    return found


def stack_processes(up: Up, before: Snapshot) -> Snapshot:
    """Processes of this ``up``: new since ``before`` and either its descendants or naming its data
    directory or engine ports (Postgres, started detached), plus their descendants (vLLM's workers,
    Postgres' backends, whose command lines name neither)."""
    now = snapshot()
    marks = (str(up.data_dir), f"--port {up.chat_port}", f"--port {up.embed_port}")
    roots = {key for key, cmdline in now.items() if key not in before and any(m in cmdline for m in marks)}
    roots |= {key for key in now if key[0] == up.proc.pid}
    found = set(roots)
    for pid, _ in roots:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                key = (child.pid, child.create_time())
                if key in now:
                    found.add(key)
    return {key: now[key] for key in found}


def still_running(seen: Snapshot) -> list[str]:
    now = snapshot()
    return [f"{pid}: {cmdline}" for (pid, started), cmdline in seen.items() if (pid, started) in now]


@pytest.fixture
def up_data_dir(engine_stack: EngineStack) -> Iterator[Path]:
    """A fresh data directory whose models/ links to the chat model the suite prepared."""
    data_dir = Path(tempfile.mkdtemp(prefix="tg-e2e-up-"))  # short: Postgres' socket lives in it
    (data_dir / "models").mkdir()
    (data_dir / "models" / CHAT_MODEL).symlink_to(engine_stack.chat_model(), target_is_directory=True)
    try:
        yield data_dir
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_the_shared_engines_stop_and_leave_nothing(engines: EngineStack) -> None:
    """The session's engines are stopped here, to make room on node 0 for up's own, and nothing of them
    (vLLM's API server, engine core, worker) is left."""
    families = engines.stop_all()
    assert set(families) == {"chat", "embeddings"}
    assert len(families["chat"]) >= 3, families  # API server, engine core, worker
    assert sum(len(family) for family in families.values()) >= 6, families
    assert engines.engines == {}
    assert not any(live(pid) for family in families.values() for pid in family)


def test_up_serves_then_ctrl_c_leaves_nothing_behind(engine_stack: EngineStack, up_data_dir: Path) -> None:
    engine_stack.stop_all()  # make room on node 0 for up's own engines (when this test runs alone)
    ports = (free_port(), free_port(), free_port())  # gateway, chat engine, embedding engine
    before = snapshot()
    first = Up(up_data_dir, *ports)
    second = Up(up_data_dir, *ports)
    seen: Snapshot = {}
    try:
        started = time.monotonic()
        first.start()
        first.wait_for(rf"Chat model {CHAT_MODEL}: reusing ", 120)
        key = first.wait_for(KEY_LINE.pattern, UP_TIMEOUT).group(1)  # printed once both engines are healthy
        first.wait_ready(60)
        print(f"tenantgate up: ready after {time.monotonic() - started:.0f} s")

        seen = stack_processes(first, before)
        commands = list(seen.values())
        assert sum("vllm.entrypoints.openai.api_server" in c for c in commands) >= 2, commands
        assert any("postgres" in c and str(up_data_dir) in c for c in commands), commands
        assert len(seen) >= 7, commands  # up, 2 x (API server, engine core, worker), the postmaster...

        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{first.port}/v1", api_key=key, max_retries=0, timeout=120)
        assert {CHAT_MODEL, EMBED_MODEL} <= {m.id for m in sdk.models.list()}
        reply = sdk.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0, max_tokens=30,
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert len(sdk.embeddings.create(model=EMBED_MODEL, input=["hello"]).data[0].embedding) == 384

        seen.update(stack_processes(first, before))
        stopped = time.monotonic()
        assert first.ctrl_c() in (0, 130), first.output[-4000:]  # a graceful stop, or KeyboardInterrupt's 130
        print(f"tenantgate up: stopped {time.monotonic() - stopped:.1f} s after Ctrl-C")
        assert still_running(seen) == []
        assert stack_processes(first, before) == {}
        assert "converting" not in first.output

        # A second run on the same data directory reuses the prepared model: interrupt it while its engines
        # start, which must leave nothing behind either.
        second.start()
        second.wait_for(rf"Chat model {CHAT_MODEL}: reusing ", 120)
        second.wait_for(r"chat: starting", 60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until both vLLM servers and Postgres are running
            seen = stack_processes(second, before)
            if sum("vllm.entrypoints.openai.api_server" in c for c in seen.values()) >= 2:
                break
            time.sleep(0.5)
        time.sleep(3)  # vLLM's engine cores and workers are starting too
        seen.update(stack_processes(second, before))
        assert second.ctrl_c() in (0, 130), second.output[-4000:]
        assert still_running(seen) == []
        assert stack_processes(second, before) == {}
        assert "converting" not in second.output
    finally:
        for up in (first, second):
            if hasattr(up, "proc"):
                up.kill()
        for pid, _ in stack_processes(first, before) | seen:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
