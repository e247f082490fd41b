"""The engine supervisor (enginehost/engines.py).

The first tests run a fake engine (this very module, run with ``python -m``: it serves ``/health``,
starts a child and a grandchild that leaves the session, and can fail or ignore SIGTERM) and need no
vLLM. The ``e2e`` tests use real vLLM servers (the session's shared pair from tests/realengines.py, or,
for a broken model, one of their own) and skip where the engines extra is not installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from enginehost import (
    CHAT_MODEL_NAME,
    EMBEDDING_MODEL_NAME,
    EngineExitedError,
    EngineProcess,
    EngineSpec,
    EngineStartTimeoutError,
    PortInUseError,
    chat_engine_spec,
    embedding_engine_spec,
    run_engines,
)
from enginehost._logs import explain_failure
from tests.realengines import EngineStack, free_port, live

REPO = Path(__file__).resolve().parents[2]
FAKE_MODULE = "tests.local.test_engines"


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def fake_spec(mode: str, port: int | None = None) -> EngineSpec:
    return EngineSpec(
        name=f"fake-{mode}",
        model=Path(mode),
        served_name="fake",
        port=port or free_port(),
        memory_fraction=0.1,
        env={"PYTHONPATH": str(REPO)},
        server_module=FAKE_MODULE,
    )


# --- without vLLM: the supervisor against a fake engine ---------------------------------------------


def test_spec_command_lines() -> None:
    chat = chat_engine_spec(Path("/m/chat"), port=9000)
    command = chat.command("/py")
    assert command[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.4"
    assert command[command.index("--served-model-name") + 1] == CHAT_MODEL_NAME
    assert {"--enable-lora", "--max-loras", "--max-lora-rank", "--max-cpu-loras"} <= set(command)
    assert chat.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    embeddings = embedding_engine_spec(Path("/m/emb"), port=9001).command("/py")
    assert embeddings[embeddings.index("--runner") + 1] == "pooling"
    assert embeddings[embeddings.index("--gpu-memory-utilization") + 1] == "0.2"
    assert chat.url == "http://127.0.0.1:9000"


def test_explain_failure_finds_the_root_cause_not_the_last_error() -> None:
    lines = [
        "(APIServer pid=1) WARNING 11-25 16:27:09 [s.py:255] ulimit: `OSError: [Errno 24] Too many open files`",
        "(VllmWorker-0 pid=3) ERROR 11-25 16:27:33 [m.py:953] Traceback (most recent call last):",
        "(VllmWorker-0 pid=3) ERROR 11-25 16:27:33 [m.py:953] ValueError: Available memory on node 0 is less",
        "(EngineCore pid=2) ERROR 11-25 16:27:36 [core.py:1510] Exception: WorkerProc initialization failed",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ]
    reason, shown = explain_failure(lines, exit_code=1)
    assert reason == "ValueError: Available memory on node 0 is less"
    assert lines[2] in shown
    assert explain_failure([], exit_code=3)[0] == "it exited with code 3 and wrote nothing to its log"


def test_start_waits_for_health_and_stop_leaves_nothing(tmp_path: Path) -> None:
    engine = EngineProcess(fake_spec("ok"), tmp_path)
    messages: list[str] = []
    elapsed = engine.start(timeout=30, progress=messages.append)
    assert elapsed >= 1.0  # the fake answers /health after a second
    assert messages[-1].startswith("fake-ok: ready on http://127.0.0.1:")
    family = engine.processes()
    assert len(family) == 3  # server, child, grandchild in its own session
    engine.stop(grace=5)
    assert engine.processes() == []
    assert not any(live(pid) for pid in family)


def test_sigkill_after_grace_when_sigterm_is_ignored(tmp_path: Path) -> None:
    engine = EngineProcess(fake_spec("stubborn"), tmp_path)
    engine.start(timeout=30, progress=lambda _: None)
    family = engine.processes()
    started = time.monotonic()
    engine.stop(grace=1)
    assert 1.0 <= time.monotonic() - started < 8
    assert not any(live(pid) for pid in family)


def test_exit_during_start_raises_with_the_reason_from_its_log(tmp_path: Path) -> None:
    engine = EngineProcess(fake_spec("fail"), tmp_path)
    started = time.monotonic()
    with pytest.raises(EngineExitedError) as caught:
        engine.start(timeout=60, progress=lambda _: None)
    assert time.monotonic() - started < 20  # not a time-out
    error = caught.value
    assert error.reason == "ValueError: fake root cause"
    assert error.exit_code == 1
    assert any("fake root cause" in line for line in error.log_tail)
    assert str(error.log_path) in str(error)
    assert engine.processes() == []  # the children it left behind were ended too


def test_start_timeout(tmp_path: Path) -> None:
    engine = EngineProcess(fake_spec("silent"), tmp_path)
    with pytest.raises(EngineStartTimeoutError):
        engine.start(timeout=2, progress=lambda _: None)
    assert engine.processes() == []


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        engine = EngineProcess(fake_spec("ok", port=taken.getsockname()[1]), tmp_path)
        with pytest.raises(PortInUseError):
            engine.spawn()


def test_run_engines_stops_all_when_one_fails(tmp_path: Path) -> None:
    specs = [fake_spec("ok"), fake_spec("fail")]
    with pytest.raises(EngineExitedError), run_engines(specs, log_dir=tmp_path, timeout=30, progress=print):
        pytest.fail("must not be reached")
    assert not any(live(int(pid)) for pid in _fake_pids(tmp_path))


PARENT_SCRIPT = """
import json, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
sys.path.insert(0, {repo!r})
from tests.local.test_engines import fake_spec
from enginehost import run_engines
specs = {specs}
with run_engines(specs, log_dir=Path({log_dir!r}), progress=lambda s: None, stop_grace={grace}) as engines:
    print(json.dumps({{n: [e.url, e.processes()] for n, e in engines.items()}}), flush=True)
    time.sleep(3600)
"""


def run_parent(
    specs: str, log_dir: Path, *, timeout: float, grace: float = 3.0
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a parent process holding ``run_engines``; return it and its engines' urls and pids."""
    script = PARENT_SCRIPT.format(repo=str(REPO), specs=specs, log_dir=str(log_dir), grace=grace)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    deadline = time.monotonic() + timeout
    line = ""
    while not line and time.monotonic() < deadline and parent.poll() is None:
        line = parent.stdout.readline()
    if not line:
        parent.kill()
        pytest.fail("the engines did not start")
    return parent, json.loads(line)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_parent_signal_stops_the_engines(tmp_path: Path, sig: signal.Signals) -> None:
    parent, engines = run_parent('[fake_spec("ok"), fake_spec("stubborn")]', tmp_path, timeout=30)
    servers = [pids[0] for _, pids in engines.values()]
    family = [pid for _, pids in engines.values() for pid in pids]
    parent.send_signal(sig)
    parent.wait(timeout=30)
    if sig == signal.SIGKILL:
        # No finally runs: the kernel's parent-death signal (SIGTERM) ends the servers that honour it.
        deadline = time.monotonic() + 10
        while live(servers[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live(servers[0])
        for pid in family:  # clean up what a SIGKILLed parent cannot (the stubborn fake, its children)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    else:
        assert parent.returncode != 0
        assert not any(live(pid) for pid in family)


def _fake_pids(log_dir: Path) -> list[str]:
    pids: list[str] = []
    for log in log_dir.glob("engine-*.log"):
        pids += [ln.split()[1] for ln in log.read_text().splitlines() if ln.startswith("fake-pids ")]
    return [pid for chunk in pids for pid in chunk.split(",")]


# --- e2e: real vLLM ----------------------------------------------------------------------------------
# The answering tests use the session's shared engines (tests/realengines.py); that they stop leaving
# nothing behind is checked where the pair is stopped (tests/e2e/test_up.py), and run_engines with real
# engines under Ctrl-C by ``tenantgate up`` there.


def ask_capital(url: str) -> str:
    reply = post_json(
        f"{url}/v1/chat/completions",
        {
            "model": CHAT_MODEL_NAME,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0,
            "max_tokens": 30,
        },
    )
    return str(reply["choices"][0]["message"]["content"])


def embed(url: str, texts: list[str]) -> list[list[float]]:
    reply = post_json(f"{url}/v1/embeddings", {"model": EMBEDDING_MODEL_NAME, "input": texts})
    return [item["embedding"] for item in reply["data"]]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.mark.e2e
def test_real_engine_failure_shows_its_reason(engine_stack: EngineStack, tmp_path: Path) -> None:
    # Its own engine, and first in this module: it runs before the shared pair starts.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    engine = EngineProcess(chat_engine_spec(broken, port=free_port()), tmp_path)
    with pytest.raises(EngineExitedError) as caught:
        engine.start(timeout=600, progress=print)
    assert caught.value.reason.split(":")[0].endswith(("Error", "Exception"))
    assert caught.value.log_tail
    assert engine.processes() == []


@pytest.mark.e2e
@pytest.mark.slow
def test_chat_engine_answers(engines: EngineStack) -> None:
    chat = engines.engines["chat"]
    assert len(chat.processes()) >= 3  # API server, engine core, worker
    assert "Paris" in ask_capital(chat.url)


@pytest.mark.e2e
@pytest.mark.slow
def test_embedding_engine_answers(engines: EngineStack) -> None:
    a, b, c = embed(engines.url("embeddings"), ["How do I bake bread?", "What is a recipe for bread?", "Stock prices"])
    assert len(a) == 384
    assert cosine(a, b) > cosine(a, c) + 0.3


# --- the fake engine ---------------------------------------------------------------------------------


def _fake_engine(argv: list[str]) -> None:
    """Modes (the --model value): ok, stubborn (ignores SIGTERM), fail (exits), silent (never healthy)."""
    import http.server

    mode = argv[argv.index("--model") + 1]
    port = int(argv[argv.index("--port") + 1])
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    child = subprocess.Popen(sleeper)
    escaped = subprocess.Popen(sleeper, start_new_session=True)
    print(f"fake-pids {os.getpid()},{child.pid},{escaped.pid}", flush=True)
    if mode == "fail":
        time.sleep(0.5)
        print("(VllmWorker-0 pid=3) ERROR 01-01 00:00:00 [x.py:1] ValueError: fake root cause", flush=True)
        print("RuntimeError: Engine core initialization failed. See root cause above.", flush=True)
        os._exit(1)  # leaves its children behind: the supervisor must end them
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(1.0)
    if mode == "silent":
        time.sleep(600)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()


if __name__ == "__main__":
    _fake_engine(sys.argv[1:])
