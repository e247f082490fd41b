"""Process-level measurements taken around the load runs: CPU time per process group, and RSS."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import psutil

MIB = 1024.0 * 1024.0

PidSource = Callable[[], list[int]]


class CpuMeter:
    """CPU seconds (user + system) of named groups of processes, between two snapshots.

    Groups are given as functions returning pids, asked again at every snapshot (Postgres starts and
    ends backends; a server may respawn a worker). A process seen only in the second snapshot counts
    with all its CPU time, one seen only in the first with none.
    """

    def __init__(self, groups: dict[str, PidSource]) -> None:
        self._groups = groups
        self._procs: dict[int, psutil.Process] = {}

    def _cpu(self, pid: int) -> float | None:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            times = proc.cpu_times()
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        return float(times.user + times.system)

    def snapshot(self) -> dict[str, dict[int, float]]:
        snap: dict[str, dict[int, float]] = {}
        for name, pids in self._groups.items():
            per_pid: dict[int, float] = {}
            for pid in pids():
                cpu = self._cpu(pid)
                if cpu is not None:
                    per_pid[pid] = cpu
            snap[name] = per_pid
        return snap

    @staticmethod
    def delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, now in after.items():
            then = before.get(name, {})
            out[name] = sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items())
        return out


def delta_by_pid(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], group: str) -> list[float]:
    """CPU seconds of each process of ``group`` between two snapshots, in pid order."""
    then = before.get(group, {})
    return [cpu - then.get(pid, 0.0) for pid, cpu in sorted(after.get(group, {}).items())]


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds used by every process on the machine (user + nice + system, all CPUs) since boot, and
    the seconds the hypervisor gave the virtual CPUs to someone else (steal)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system), float(getattr(t, "steal", 0.0))


def rss_mib(pids: list[int]) -> float:
    """Summed resident set size of ``pids``, in MiB (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total / MIB


def rss_each_mib(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out.append(psutil.Process(pid).memory_info().rss / MIB)
    return out
