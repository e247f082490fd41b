"""``tenantgate up``'s engine supervisor notices an engine that dies, says so, and restarts it.

The engine is the fake of tests/local/test_engines.py (a ``/health`` server with a child and a grandchild
that leaves its session), so no vLLM is needed.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

from enginehost import run_engines
from tests.local.test_engines import _fake_pids, fake_spec
from tests.realengines import live


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def wait_for(messages: list[str], text: str, within: float = 60.0) -> str:
    """The first message containing ``text``, waiting up to ``within`` seconds for it (a bound)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = [m for m in messages if text in m]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no message with {text!r} in {messages}")


def test_an_engine_that_dies_is_reported_cleaned_up_and_restarted(tmp_path: Path) -> None:
    messages: list[str] = []
    with run_engines([fake_spec("ok")], log_dir=tmp_path, timeout=30, progress=messages.append,
                     restart_delay=0.2) as engines:
        engine = engines["fake-ok"]
        first_pid = engine.pid
        assert first_pid is not None
        left_behind = [int(p) for p in _fake_pids(tmp_path)][1:]  # its child and the one that left the session
        os.kill(first_pid, signal.SIGKILL)

        exited = wait_for(messages, "exited unexpectedly")
        assert "fake-ok" in exited and "restarting in" in exited
        wait_for(messages, "ready again")
        assert engine.pid != first_pid and healthy(engine.url)
        assert not any(live(pid) for pid in left_behind)  # nothing of the dead engine was orphaned
        second_pid = engine.pid
    assert second_pid is not None and not live(second_pid)
