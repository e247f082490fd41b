"""Find and end every process an engine started, via /proc (Linux).

An engine's child leads its own session (``start_new_session``). Its family is every live process that
is in that session, descends from a member, or carries the engine's tag in its environment
(``TENANTGATE_ENGINE_TAG``; inherited, but unreadable once ``setproctitle`` rewrites a process's
environment block, as vLLM's workers do). ``ProcessFamily`` remembers each member it has seen (pid and
start time, so a reused pid is never taken for one), so a worker reparented to init is still found.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TAG_VARIABLE", "ProcessFamily"]

TAG_VARIABLE = "TENANTGATE_ENGINE_TAG"
_PROC = Path("/proc")


@dataclass(frozen=True)
class _Stat:
    pid: int
    ppid: int
    sid: int
    state: str
    start_time: int

    @property
    def live(self) -> bool:
        return self.state not in ("Z", "X")


def _stat(pid: int) -> _Stat | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ... starttime(22nd field)"; comm may hold spaces and parens.
    fields = text[text.rfind(")") + 2 :].split()
    return _Stat(pid, int(fields[1]), int(fields[3]), fields[0], int(fields[19]))


def _all_stats() -> list[_Stat]:
    stats = (_stat(int(entry.name)) for entry in _PROC.iterdir() if entry.name.isdigit())
    return [stat for stat in stats if stat is not None]


def _has_tag(pid: int, needle: bytes) -> bool:
    try:
        return needle in (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


@dataclass
class ProcessFamily:
    """The processes of one engine: the session leader ``leader`` (our child) and all it started."""

    leader: int
    tag: str
    _seen: dict[int, int] = field(default_factory=dict)  # pid -> start time
    _leader_start: int | None = None

    def __post_init__(self) -> None:
        stat = _stat(self.leader)  # called while the leader is our unreaped child: it is the right one
        self._leader_start = stat.start_time if stat is not None else None

    def refresh(self) -> None:
        """Record the current members: the session, tagged processes, and their descendants."""
        stats = _all_stats()
        by_pid = {s.pid: s for s in stats}
        lead = by_pid.get(self.leader)
        # Linux never hands out a pid still used as a session id, so sid == leader is ours unless the
        # leader's pid now names a different (newer) process.
        ours = lead is None or lead.start_time == self._leader_start
        needle = f"{TAG_VARIABLE}={self.tag}".encode()
        members = {
            s.pid
            for s in stats
            if s.live
            and ((ours and s.sid == self.leader) or self._seen.get(s.pid) == s.start_time or _has_tag(s.pid, needle))
        }
        children: dict[int, list[int]] = {}
        for s in stats:
            children.setdefault(s.ppid, []).append(s.pid)
        stack = list(members)
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in members:
                    members.add(child)
                    stack.append(child)
        for pid in members:
            stat = by_pid.get(pid)
            if stat is not None and stat.live:
                self._seen[pid] = stat.start_time

    def alive(self) -> list[int]:
        """Members seen so far (refreshed now) that still run."""
        self.refresh()
        alive = []
        for pid, start_time in self._seen.items():
            stat = _stat(pid)
            if stat is not None and stat.live and stat.start_time == start_time:
                alive.append(pid)
        return sorted(alive)

    def signal(self, sig: signal.Signals) -> list[int]:
        """Send ``sig`` to every live member; return their ids."""
        pids = self.alive()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return pids

    def wait_gone(self, timeout: float) -> list[int]:
        """Wait up to ``timeout`` seconds for all members to end; return those still alive."""
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive()
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.1)
