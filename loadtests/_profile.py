"""Where the gateway's time goes: ``py-spy record`` on its worker processes during a fixed-rate run.

py-spy samples from outside (``--nonblocking``: the worker is not paused to be read), so the gateway
runs unmodified. Only samples of busy threads are kept (py-spy's default), so percentages are shares
of the time the worker's threads were on CPU. The raw collapsed stacks (``--threads``: the first frame
names the thread) are aggregated here: "self" is the function on top of the stack, "total" any
function on it. A busy thread with no Python frame at all is native code: under Granian, its Rust
I/O thread (HTTP parsing and writing); it is shown as ``<native>``.

Under uvloop, a coroutine step is run from C, so its stack starts at the coroutine, not at the event
loop: "total" is only meaningful for the gateway's own functions, and only those are listed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests._stack import Children

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>0x[0-9a-fA-F]+|\d+)\)(?::\s*(?P<name>.*))?$")
_NATIVE = ("<native: no Python frame>", "")
# A stack made only of these frames is a sample of C/Rust code under the process's entry point: the
# event loop itself (uvloop/libuv, socket I/O, task stepping, GC) or, under Granian, its Rust core.
_BOOTSTRAP = ("<frozen runpy>", "asyncio/runners.py", "asyncio/base_events.py", "granian/server/", "multiprocessing/",
              "gateway/cli.py", "gateway/server.py", "gateway/__main__.py", "uvicorn/main.py", "uvicorn/server.py",
              "uvloop/", "threading.py")
# The gateway's own code, for the "total" list; its entry points (the whole worker) are left out.
_OWN = ("gateway/", "observability/")
_ENTRY_POINTS = ("gateway/cli.py", "gateway/server.py", "gateway/__main__.py", "gateway/asgi.py")


def py_spy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_recording(
    children: Children, pids: list[int], *, seconds: float, rate_hz: int, out_dir: Path
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """One ``py-spy record`` per worker process, each writing collapsed stacks to ``out_dir``."""
    exe = py_spy_path()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    started = []
    for pid in pids:
        out = out_dir / f"py-spy-{pid}.txt"
        argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate",
                str(rate_hz), "--format", "raw", "--nonblocking", "--threads", "--output", str(out)]
        proc = children.spawn("py-spy", argv, env={"PATH": "/usr/bin:/bin"}, log=out_dir / f"py-spy-{pid}.log",
                              grace_s=10.0)
        started.append((proc, out))
    return started


def finish_recording(children: Children, recorders: list[tuple[subprocess.Popen[bytes], Path]]) -> list[Path]:
    """Wait for the recorders (they stop by themselves after their duration); the files written."""
    files = []
    for proc, out in recorders:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        children.stop(proc)
        if out.exists():
            files.append(out)
    return files


def _frame_key(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["func"], match["file"]


def _package(file: str) -> str:
    """``litestar/app.py`` -> ``litestar``; stdlib modules by name; ``<frozen ...>`` as is."""
    if not file:
        return "<native>"
    if file.startswith("<"):
        return file
    head = file.split("/", 1)[0]
    return head.removesuffix(".py")


@dataclass
class Profile:
    samples: int = 0
    self_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    total_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    package_counts: Counter[str] = field(default_factory=Counter)
    thread_counts: Counter[str] = field(default_factory=Counter)
    native_thread_counts: Counter[str] = field(default_factory=Counter)  # samples with no Python frame
    seconds: float = 0.0
    rate_hz: int = 0
    processes: int = 0

    def add_file(self, path: Path) -> None:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            parts = stack.split(";")
            thread = _THREAD.match(parts[0].strip())
            if thread is not None:
                parts = parts[1:]
            frames = [_frame_key(f) for f in parts if f.strip()] or [_NATIVE]
            leaf = frames[-1]
            if all(file.startswith(_BOOTSTRAP) for _, file in frames):
                leaf = (f"<native: event loop / server core, under {leaf[0]}>", "")
            self.samples += count
            label = _thread_label(thread)
            self.thread_counts[label] += count
            if frames == [_NATIVE]:
                self.native_thread_counts[label] += count
            self.self_counts[leaf] += count
            self.package_counts[_package(leaf[1])] += count
            for key in set(frames):
                self.total_counts[key] += count

    def thread_busy(self, count: int) -> float:
        """A thread's busy samples as a share of the recording's wall time (its CPU share, roughly)."""
        possible = self.seconds * self.rate_hz * max(1, self.processes)
        return count / possible if possible else 0.0

    def top(self, which: str, n: int) -> list[tuple[str, str, int, float]]:
        """``(function, file, samples, percent)``, most first: ``self``, or ``total`` of the gateway's code."""
        counts = self.self_counts if which == "self" else self.total_counts
        rows = []
        for (func, file), count in counts.most_common():
            if which == "total" and (not file.startswith(_OWN) or file in _ENTRY_POINTS):
                continue
            share = count / self.samples if self.samples else 0.0
            rows.append((func, file, count, 100.0 * share))
            if len(rows) == n:
                break
        return rows

    def threads(self) -> list[tuple[str, int, float]]:
        """``(thread, samples, percent of the recording that thread was busy)``; a thread whose samples
        have (nearly) no Python frame is marked "native only" (Granian's Rust I/O thread)."""
        out = []
        for t, c in self.thread_counts.most_common():
            native = self.native_thread_counts[t] >= 0.9 * c
            out.append((t + (" (native only)" if native else ""), c, 100.0 * self.thread_busy(c)))
        return out

    def packages(self, n: int) -> list[tuple[str, int, float]]:
        return [(pkg, c, 100.0 * c / self.samples) for pkg, c in self.package_counts.most_common(n)]

    def as_dict(self, n: int) -> dict[str, Any]:
        def rows(which: str) -> list[dict[str, Any]]:
            return [{"function": f, "file": file, "samples": c, "percent": round(p, 2)}
                    for f, file, c, p in self.top(which, n)]

        return {
            "tool": "py-spy record --nonblocking --format raw", "samples": self.samples, "seconds": self.seconds,
            "rate_hz": self.rate_hz, "processes": self.processes,
            "threads_busy_percent": {t: round(p, 1) for t, _, p in self.threads()},
            "top_self": rows("self"), "top_total_gateway_code": rows("total"),
            "by_package": [{"package": p, "samples": c, "percent": round(s, 2)} for p, c, s in self.packages(n)],
        }


def _thread_label(thread: re.Match[str] | None) -> str:
    if thread is None:
        return "?"
    name = (thread["name"] or "").strip()
    return name or f"thread {thread['tid']}"
