"""Open-loop load: request ``i`` is sent at ``t0 + i / rate`` whatever happened to earlier ones.

Latency is measured from the *scheduled* send time, not from when the request actually left, so a
generator or server that falls behind shows up as latency (no coordinated omission). How late the
generator was (``lag``: actual start minus scheduled time) is recorded too, to tell when it could not
keep up with the schedule.

One aiohttp ``ClientSession`` (keep-alive, pooled connections) is shared by every run of the process.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

_DONE_TAIL = b"data: [DONE]\n\n"
_TIMER_RESOLUTION_S = 0.001


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: ``direct`` (the fake engine itself) or ``gateway``."""

    name: str
    url: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Dist:
    """Percentiles (nearest rank) of a sample, in milliseconds; NaN when the sample is empty."""

    n: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Dist:
        if not values:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan)
        ordered = sorted(values)
        n = len(ordered)

        def rank(q: float) -> float:
            return ordered[max(0, math.ceil(q * n) - 1)]

        return cls(n, rank(0.50), rank(0.90), rank(0.99), ordered[-1], sum(ordered) / n)

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else round(v, 3))
                for k, v in (("n", self.n), ("p50", self.p50), ("p90", self.p90), ("p99", self.p99),
                             ("max", self.max), ("mean", self.mean))}


def _floats() -> array[float]:
    return array("d")


@dataclass(slots=True)
class Run:
    """What one open-loop run measured (or several runs of the same target and rate, merged)."""

    target: str
    rate: float
    stream: bool
    scheduled: int = 0  # measured requests (warm-up ones excluded)
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    odd_statuses: Counter[int] = field(default_factory=Counter)  # successes answered with a 2xx other than 200
    latency_ms: array[float] = field(default_factory=_floats)  # scheduled send -> whole answer read
    ttfb_ms: array[float] = field(default_factory=_floats)  # scheduled send -> first body bytes (streams)
    lag_ms: array[float] = field(default_factory=_floats)  # actual send start - scheduled send
    window_s: float = 0.0  # first measured scheduled send -> last measured completion
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds used per process group
    wall_s: float = 0.0  # wall time over which cpu_s was measured
    worker_cpu_s: list[float] = field(default_factory=list)  # CPU seconds of each gateway worker process
    max_in_flight: int = 0  # most requests sent and not yet answered at once (a backlog shows here)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.window_s if self.window_s > 0 else 0.0

    def latency(self) -> Dist:
        return Dist.of(self.latency_ms)

    def ttfb(self) -> Dist:
        return Dist.of(self.ttfb_ms)

    def lag(self) -> Dist:
        return Dist.of(self.lag_ms)

    def cpu_percent(self, group: str) -> float:
        return 100.0 * self.cpu_s.get(group, 0.0) / self.wall_s if self.wall_s > 0 else math.nan

    def cpu_us_per_request(self, group: str) -> float:
        return 1e6 * self.cpu_s.get(group, 0.0) / self.ok if self.ok else math.nan

    def worker_split(self) -> list[float]:
        """Each gateway worker's share of the workers' CPU time, in percent (how evenly load spread)."""
        total = sum(self.worker_cpu_s)
        return [round(100.0 * c / total, 1) for c in self.worker_cpu_s] if total > 0 else []

    def merge(self, other: Run) -> None:
        self.scheduled += other.scheduled
        self.ok += other.ok
        self.errors.update(other.errors)
        self.odd_statuses.update(other.odd_statuses)
        self.latency_ms.extend(other.latency_ms)
        self.ttfb_ms.extend(other.ttfb_ms)
        self.lag_ms.extend(other.lag_ms)
        self.window_s += other.window_s
        self.wall_s += other.wall_s
        for group, seconds in other.cpu_s.items():
            self.cpu_s[group] = self.cpu_s.get(group, 0.0) + seconds
        self.max_in_flight = max(self.max_in_flight, other.max_in_flight)
        if len(self.worker_cpu_s) == len(other.worker_cpu_s):
            self.worker_cpu_s = [a + b for a, b in zip(self.worker_cpu_s, other.worker_cpu_s, strict=True)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "rate": self.rate, "stream": self.stream, "scheduled": self.scheduled,
            "ok": self.ok, "errors": dict(self.errors),
            "non_200_successes": {str(k): v for k, v in self.odd_statuses.items()},
            "achieved_rate": round(self.achieved_rate, 1), "max_in_flight": self.max_in_flight,
            "latency_ms": self.latency().as_dict(),
            "ttfb_ms": self.ttfb().as_dict() if self.stream else None,
            "lag_ms": self.lag().as_dict(),
            "cpu_percent": {g: round(self.cpu_percent(g), 1) for g in self.cpu_s},
            "cpu_us_per_request": {g: round(self.cpu_us_per_request(g), 1) for g in self.cpu_s},
            "worker_cpu_split": self.worker_split(),
        }


class _Window:
    """First scheduled time and last completion time of the measured requests of a run."""

    __slots__ = ("first", "last")

    def __init__(self) -> None:
        self.first = math.inf
        self.last = -math.inf


class LoadGenerator:
    """Sends open-loop load over one shared session; ``run()`` is one fixed-rate run against a target."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout_s: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s

    async def run(
        self, target: Target, body: bytes, *, rate: float, seconds: float, warmup_s: float = 0.0,
        stream: bool = False, progress: Any = None,
    ) -> Run:
        """Send ``rate * (warmup_s + seconds)`` requests, evenly spread; measure those after the warm-up.

        ``progress``, if given, is called with the number of requests sent so far about once a second.
        """
        if rate <= 0:
            raise ValueError("rate must be positive")
        interval = 1.0 / rate
        n_warm = round(rate * warmup_s)
        total = n_warm + max(1, round(rate * seconds))
        result = Run(target.name, rate, stream)
        window = _Window()
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter() + 0.002
        next_progress = t0 + 1.0
        i = 0
        while i < total:
            now = time.perf_counter()
            due = t0 + i * interval
            if due > now:
                # The event loop's timers have millisecond resolution: a shorter sleep would spin the
                # loop (CPU the gateway needs on a small machine); the lateness is recorded as lag.
                await asyncio.sleep(max(due - now, _TIMER_RESOLUTION_S))
                continue
            while i < total and t0 + i * interval <= now:
                measured = result if i >= n_warm else None
                task = loop.create_task(self._one(target, body, t0 + i * interval, stream, measured, window))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            result.max_in_flight = max(result.max_in_flight, len(tasks))
            if progress is not None and now >= next_progress:
                next_progress = now + 1.0
                progress(i)
        if tasks:
            await asyncio.wait(set(tasks), timeout=self._timeout_s + 5.0)
        result.scheduled = total - n_warm
        result.window_s = max(0.0, window.last - window.first)
        lost = result.scheduled - result.ok - result.error_count
        if lost > 0:  # still running long after their timeout: count them, do not wait for ever
            result.errors["unfinished"] += lost
        return result

    async def _one(
        self, target: Target, body: bytes, scheduled: float, stream: bool, result: Run | None, window: _Window
    ) -> None:
        started = time.perf_counter()
        first: float | None = None
        error: str | None = None
        try:
            async with self._session.post(target.url, data=body, headers=target.headers,
                                          timeout=self._timeout) as resp:
                if stream:
                    chunk = await resp.content.readany()
                    first = time.perf_counter()
                    tail = chunk[-len(_DONE_TAIL):]
                    async for chunk in resp.content.iter_any():
                        tail = (tail + chunk)[-len(_DONE_TAIL):]
                    complete = tail == _DONE_TAIL
                else:
                    complete = bool(await resp.read())
                if not 200 <= resp.status < 300:
                    error = f"http_{resp.status}"
                elif resp.status != 200 and result is not None:
                    result.odd_statuses[resp.status] += 1
                elif not complete:
                    error = "incomplete_body"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
        done = time.perf_counter()
        if result is None:
            return
        result.lag_ms.append((started - scheduled) * 1000.0)
        window.first = min(window.first, scheduled)
        window.last = max(window.last, done)
        if error is not None:
            result.errors[error] += 1
            return
        result.ok += 1
        result.latency_ms.append((done - scheduled) * 1000.0)
        if first is not None:
            result.ttfb_ms.append((first - scheduled) * 1000.0)


def new_session(connections: int) -> aiohttp.ClientSession:
    """The one client session: pooled keep-alive connections, no cookies, no decompression.

    Idle connections are dropped after 4 s, before uvicorn's 5 s keep-alive timeout can close one
    under a request that is just being sent on it.
    """
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, keepalive_timeout=4.0)
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )
