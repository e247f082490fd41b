"""Benchmark the gateway's added latency, maximum rate, streaming TTFB, memory and hot path.

    python -m loadtests.bench_gateway                      # Granian and uvicorn, everything (~3-4 min)
    python -m loadtests.bench_gateway --server granian --quick              # smoke test (~1.5 min)
    python -m loadtests.bench_gateway --million --skip-search --no-stream   # memory after 10^6 requests per
                                                                           # server (~35 min each at 500 req/s)
    python -m loadtests.bench_gateway --json bench.json --keep-tmp          # also JSON; keep logs and profiles

It starts the fake vLLM engine (``tests/fakes/vllm.py``, its own process) and one ``tenantgate serve``
per ASGI server, side by side, with everything on (auth, usage metering to its own embedded Postgres,
request ids), each in a temporary data directory, and stops them all at the end, on error and on Ctrl-C.

Load is open-loop with evenly spread arrivals: request ``i`` is sent at ``t0 + i / rate`` whatever
happened to earlier ones, and its latency is counted from that scheduled time (no coordinated omission);
``lag`` is how late the generator actually sent, and a run whose p99 lag exceeds ``--max-lag-ms`` is
flagged as behind schedule. Measurements go in rounds: the same load to the fake engine directly, then
to each gateway in turn (their order rotating), because on a small machine the load generator, the
engine, the gateways and Postgres share the CPUs and other work comes and goes: "added" latency is a
gateway's percentile minus the direct one of the same round(s), and both servers see the same conditions.

The profile is taken with py-spy (``record --nonblocking``, sampling the gateway's worker processes
from outside) during a separate fixed-rate run, so it does not disturb the latency figures.

The machine is shared: every run also records the CPU used by each process group (gateway, engine,
Postgres, this generator), by everything else on the machine, and hypervisor steal. A round in which
other work took more than ``--noise-limit`` percent of a CPU is repeated (a few times per server at
most), and rows measured under such load are marked "noisy".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from loadtests import _report as report
from loadtests._load import LoadGenerator, Run, Target, new_session
from loadtests._measure import CpuMeter, delta_by_pid, machine_busy_s, rss_each_mib, rss_mib
from loadtests._profile import Profile, finish_recording, py_spy_path, start_recording
from loadtests._stack import Children, Gateway, create_api_key, start_fake_engine, start_gateway, wait_ready

CHAT_PATH = "/v1/chat/completions"
DEFAULT_RATES = (200, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 6000)
MILLION = 1_000_000
_NOISY_REDOS = 2  # times a round disturbed by other work on the machine is repeated
_NOISE_BUDGET = 6  # such repeats per server: a machine busy for good only makes the run longer
_NOISY_STREAK = 3  # noisy rounds in a row after which the machine is taken as busy for good


@dataclass(frozen=True)
class Options:
    servers: tuple[str, ...]
    workers: int
    fixed_rate: float
    fixed_seconds: float
    rounds: int
    stream: bool
    stream_rate: float
    stream_seconds: float
    search: bool
    rates: tuple[float, ...]
    step_seconds: float
    step_warmup: float
    retries: int
    direct_max: bool
    p99_limit_ms: float
    max_lag_ms: float
    noise_limit: float
    warmup_seconds: float
    profile: bool
    profile_rate: float
    profile_seconds: float
    profile_hz: int
    top: int
    soak_requests: int
    soak_rate: float
    max_tokens: int
    connections: int
    timeout: float
    gateway_env: dict[str, str]
    json_path: str | None
    keep_tmp: bool
    pin: bool = False


@dataclass
class Step:
    """One rate of the maximum-rate search."""

    rate: float
    direct: Run
    gateway: Run | None
    direct_ok: bool
    gateway_ok: bool | None
    reason: str
    attempts: int


@dataclass
class ServerResult:
    server: str
    workers: int
    startup_s: float = 0.0
    shutdown_s: float = 0.0
    exit_code: int | None = None
    fixed: tuple[Run, Run] | None = None
    stream: tuple[Run, Run] | None = None
    steps: list[Step] = field(default_factory=list)
    max_rate: float | None = None  # highest passing gateway rate
    max_rate_direct: float | None = None
    gateway_limit: str = ""  # why the search stopped for the gateway
    direct_limit: str = ""
    soak: Run | None = None
    soak_rate: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    memory_timeline: list[tuple[int, float]] = field(default_factory=list)
    profile: Profile | None = None
    profile_run: Run | None = None
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)


def chat_body(max_tokens: int, stream: bool) -> bytes:
    doc: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": max_tokens}
    if stream:
        doc["stream"] = True
    return msgspec.json.encode(doc)


# -- verdicts -----------------------------------------------------------------------------------------


def added(gateway: float, direct: float) -> float:
    return gateway - direct


def healthy(run: Run, max_lag_ms: float) -> str:
    """Why ``run`` is not a valid measurement at its rate ("" when it is)."""
    if run.error_count:
        return f"{run.error_count} errors"
    if run.lag().p99 > max_lag_ms:
        return f"generator behind (lag p99 {run.lag().p99:.1f} ms)"
    if run.achieved_rate < 0.95 * run.rate:
        return f"achieved {run.achieved_rate:.0f} req/s"
    return ""


def judge(direct: Run, gateway: Run | None, opts: Options) -> tuple[bool, bool | None, str]:
    """(direct passes, gateway passes or None if not run, reason of the first failure)."""
    reason = healthy(direct, opts.max_lag_ms)
    if not reason and direct.latency().p99 > opts.p99_limit_ms:
        reason = f"direct p99 {direct.latency().p99:.1f} ms > {opts.p99_limit_ms:g} ms"
    direct_ok = not reason
    if not direct_ok:
        reason = "direct: " + reason
    if gateway is None:
        return direct_ok, None, reason
    gw_reason = healthy(gateway, opts.max_lag_ms)
    extra = added(gateway.latency().p99, direct.latency().p99)
    if not gw_reason and extra > opts.p99_limit_ms:
        gw_reason = f"added p99 {extra:.1f} ms > {opts.p99_limit_ms:g} ms"
    gateway_ok = direct_ok and not gw_reason
    if gw_reason and not reason:
        reason = "gateway: " + gw_reason
    return direct_ok, gateway_ok, reason


def _noise(run: Run) -> float:
    """CPU (percent of one CPU) that other work on the machine and the hypervisor took during ``run``."""
    return run.cpu_percent("others") + run.cpu_percent("steal")


def _merged(total: Run | None, run: Run) -> Run:
    if total is None:
        return run
    total.merge(run)
    return total


# -- the benchmark ------------------------------------------------------------------------------------


@dataclass
class Server:
    """One gateway under test: its processes, its target and what was measured of it."""

    gateway: Gateway
    target: Target
    result: ServerResult

    @property
    def name(self) -> str:
        return self.gateway.server


class Bench:
    """Runs every phase against all gateways at once, interleaved with direct runs against the engine.

    Every measurement round sends the same load to the engine directly, then to each gateway in turn
    (the gateways' order rotates from round to round), so that all of them see the same conditions
    on a shared machine; the gateways not being measured sit idle.
    """

    def __init__(
        self, opts: Options, children: Children, session: aiohttp.ClientSession, engine_url: str,
        engine_pid: int, tmp: Path,
    ) -> None:
        self.opts = opts
        self.children = children
        self.session = session
        self.engine_url = engine_url
        self.engine_pid = engine_pid
        self.tmp = tmp
        self.gen = LoadGenerator(session, timeout_s=opts.timeout)
        self.body = chat_body(opts.max_tokens, stream=False)
        self.stream_body = chat_body(opts.max_tokens, stream=True)
        self.direct = Target("direct", engine_url + CHAT_PATH, {"Content-Type": "application/json"})
        self.servers: list[Server] = []
        self.noise_budget = _NOISE_BUDGET * len(opts.servers)
        self.noisy_streak = 0  # noisy rounds in a row
        self.direct_steps: list[Step] = []
        self.max_rate_direct: float | None = None
        self.direct_limit = ""

    def _server(self, name: str) -> Server | None:
        return next((s for s in self.servers if s.name == name), None)

    async def measure(
        self, target: Target, rate: float, seconds: float, *, warmup_s: float, stream: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> Run:
        """One open-loop run, with the CPU used meanwhile by each group of processes."""
        server = self._server(target.name)
        gws = [server.gateway] if server is not None else [s.gateway for s in self.servers]
        workers = server.gateway.worker_pids() if server is not None else []
        meter = CpuMeter({
            "gateway": lambda: [p for g in gws for p in g.all_pids()],
            "engine": lambda: [self.engine_pid],
            "postgres": lambda: [p for g in gws for p in g.postgres_pids()],
            "loadgen": lambda: [os.getpid()],
            "workers": lambda: workers,
        })
        body = self.stream_body if stream else self.body
        before, machine_before, started = meter.snapshot(), machine_busy_s(), time.perf_counter()
        run = await self.gen.run(target, body, rate=rate, seconds=seconds, warmup_s=warmup_s, stream=stream,
                                 progress=progress)
        run.wall_s = time.perf_counter() - started
        after, machine_after = meter.snapshot(), machine_busy_s()
        run.worker_cpu_s = delta_by_pid(before, after, "workers")
        after.pop("workers")
        run.cpu_s = CpuMeter.delta(before, after)
        run.cpu_s["others"] = max(0.0, machine_after[0] - machine_before[0] - sum(run.cpu_s.values()))
        run.cpu_s["steal"] = machine_after[1] - machine_before[1]
        return run

    async def rounds(
        self, targets: list[Target], rate: float, seconds: float, *, rounds: int, stream: bool = False,
    ) -> dict[str, Run]:
        """Direct, then each target in turn, ``rounds`` times (``seconds / rounds`` each); merged runs.

        A round during which other work took more than ``--noise-limit`` of a CPU is done again (the
        quietest try is kept), and noisy rounds are left out of the result when some rounds were quiet.
        """
        kept: list[tuple[float, dict[str, Run]]] = []
        for r in range(rounds):
            order = [self.direct, *targets[r % len(targets):], *targets[:r % len(targets)]] if targets else [
                self.direct]
            best: tuple[float, dict[str, Run]] | None = None
            for redo in range(_NOISY_REDOS + 1):
                runs = {t.name: await self.measure(t, rate, seconds / rounds, warmup_s=self.opts.step_warmup,
                                                   stream=stream) for t in order}
                noise = max(_noise(run) for run in runs.values())
                if best is None or noise < best[0]:
                    best = (noise, runs)
                if not await self._again(noise, last=redo == _NOISY_REDOS):
                    break
            assert best is not None
            kept.append(best)
        quiet = [runs for noise, runs in kept if noise <= self.opts.noise_limit]
        if quiet and len(quiet) < len(kept):
            report.say(f"{'':<20}({len(kept) - len(quiet)} noisy round(s) of {len(kept)} left out)")
        totals: dict[str, Run] = {}
        for runs in quiet or [runs for _, runs in kept]:
            for name, run in runs.items():
                totals[name] = _merged(totals.get(name), run)
        return totals

    async def _again(self, noise: float, *, last: bool) -> bool:
        """Whether to measure a round again after other work took ``noise`` percent of a CPU."""
        if noise <= self.opts.noise_limit:
            self.noisy_streak = 0
            return False
        self.noisy_streak += 1
        if last or self.noise_budget <= 0:
            return False
        if self.noisy_streak > _NOISY_STREAK:
            report.say(f"{'':<20}(the machine stays busy with other work: measuring on, rows marked noisy)")
            self.noise_budget = 0
            return False
        self.noise_budget -= 1
        report.say(f"{'':<20}(other work and steal took {noise:.0f}% of a CPU: measuring that round again)")
        await asyncio.sleep(2.0)
        return True

    # -- phases ---------------------------------------------------------------------------------------

    async def start(self, server: str) -> Server:
        result = ServerResult(server, self.opts.workers, loadavg_before=os.getloadavg())
        gw = start_gateway(self.children, server=server, workers=self.opts.workers, engine_url=self.engine_url,
                           data_dir=self.tmp / f"gateway-{server}", extra_env=self.opts.gateway_env)
        result.startup_s = await wait_ready(gw, self.session)
        if self.opts.pin:
            pin_cpus(gw.all_pids(), GATEWAY_CPUS)
        gw.api_key = await create_api_key(gw, self.session, f"bench-{server}")
        workers = gw.worker_pids()
        report.say(f"{server}: ready in {result.startup_s:.1f} s at {gw.url}, {len(workers)} worker(s), "
                   f"pids {workers}")
        result.memory["workers"] = len(workers)
        result.memory["after_start_mib"] = rss_mib(workers)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {gw.api_key}"}
        srv = Server(gw, Target(server, gw.url + CHAT_PATH, headers), result)
        self.servers.append(srv)
        return srv

    async def warm_up(self) -> None:
        opts = self.opts
        for t in (self.direct, *(s.target for s in self.servers)):
            run = await self.measure(t, opts.fixed_rate, opts.warmup_seconds, warmup_s=0.0)
            if run.error_count:
                srv = self._server(t.name)
                raise RuntimeError(f"warm-up against {t.name} failed: {dict(run.errors)}\n"
                                   + (srv.gateway.log_tail() if srv else ""))
            if opts.stream:
                await self.measure(t, opts.stream_rate, 1.0, warmup_s=0.0, stream=True)

    async def fixed_rate(self) -> None:
        opts = self.opts
        runs = await self.rounds([s.target for s in self.servers], opts.fixed_rate, opts.fixed_seconds,
                                 rounds=opts.rounds)
        for s in self.servers:
            s.result.fixed = (runs["direct"], runs[s.name])
        report.fixed_table(f"non-streaming chat at {opts.fixed_rate:g} req/s ({opts.rounds} rounds, each: direct, "
                           "then every gateway in turn)", runs)

    async def streaming(self) -> None:
        opts = self.opts
        runs = await self.rounds([s.target for s in self.servers], opts.stream_rate, opts.stream_seconds,
                                 rounds=opts.rounds, stream=True)
        for s in self.servers:
            s.result.stream = (runs["direct"], runs[s.name])
        report.stream_table(f"streaming chat at {opts.stream_rate:g} req/s", runs)

    async def profile(self, srv: Server) -> None:
        opts = self.opts
        pids = srv.gateway.worker_pids()
        out_dir = self.tmp / f"profile-{srv.name}"
        out_dir.mkdir(exist_ok=True)
        recorders = start_recording(self.children, pids, seconds=opts.profile_seconds + 1.0,
                                    rate_hz=opts.profile_hz, out_dir=out_dir)
        await asyncio.sleep(0.5)  # let py-spy attach
        run = await self.measure(srv.target, opts.profile_rate, opts.profile_seconds, warmup_s=0.0)
        files = await asyncio.to_thread(finish_recording, self.children, recorders)
        prof = Profile(seconds=opts.profile_seconds + 1.0, rate_hz=opts.profile_hz, processes=len(pids))
        for path in files:
            prof.add_file(path)
        srv.result.profile, srv.result.profile_run = prof, run
        report.profile_table(srv.name, prof, run, opts.top)

    async def search(self) -> None:
        """Step up the rates until every gateway failed (then direct alone, until it fails too)."""
        opts = self.opts
        report.step_header(opts)
        active = list(self.servers)
        for rate in opts.rates:
            if not active and not opts.direct_max:
                break
            direct_ok, failed = await self.step(active, rate)
            for srv in [s for s in active if s.name in failed]:
                srv.result.gateway_limit = f"{failed[srv.name]} at {rate:g} req/s"
                active.remove(srv)
            if not direct_ok:
                for srv in active:
                    srv.result.gateway_limit = "not reached: the engine alone failed first"
                break
            self.max_rate_direct = rate
        for srv in self.servers:
            srv.result.max_rate_direct, srv.result.direct_limit = self.max_rate_direct, self.direct_limit

    async def step(self, active: list[Server], rate: float) -> tuple[bool, dict[str, str]]:
        """One rate: direct and every active gateway; what failed is measured again (``--retries``).

        Returns whether direct passed, and the gateways that failed (with why) while direct passed.
        """
        opts = self.opts
        todo, failed = list(active), dict[str, str]()
        direct_ok, reason = False, ""
        for attempt in range(1, opts.retries + 2):
            runs = await self.rounds([s.target for s in todo], rate, opts.step_seconds, rounds=1)
            direct = runs["direct"]
            direct_ok, _, reason = judge(direct, None, opts)
            verdicts = []
            for srv in todo:
                _, ok, why = judge(direct, runs[srv.name], opts)
                srv.result.steps.append(Step(rate, direct, runs[srv.name], direct_ok, ok, why, attempt))
                verdicts.append((srv.name, runs[srv.name], bool(ok), why))
                if ok:
                    srv.result.max_rate = rate
                    failed.pop(srv.name, None)
                elif direct_ok:
                    failed[srv.name] = why.removeprefix("gateway: ")
            if not todo:
                self.direct_steps.append(Step(rate, direct, None, direct_ok, None, reason, attempt))
            report.step_block(direct, direct_ok, reason, verdicts, attempt)
            if direct_ok:  # measure again what failed; everything, if direct itself failed
                todo = [s for s in todo if s.name in failed]
            if not todo:  # all passed, or direct alone (no second chance for it)
                break
            await asyncio.sleep(0.5)
        if not direct_ok:
            self.direct_limit = f"{reason} at {rate:g} req/s"
        return direct_ok, failed

    async def soak(self, srv: Server) -> None:
        opts, result = self.opts, srv.result
        rate = opts.soak_rate
        result.soak_rate = rate
        workers = srv.gateway.worker_pids()
        result.memory["before_soak_mib"] = rss_mib(workers)
        every = max(1, opts.soak_requests // 10)
        next_mark = [every]
        seconds = opts.soak_requests / rate
        report.say(f"\nsoak ({srv.name}): {opts.soak_requests:,} requests at {rate:g} req/s "
                   f"(~{report.duration(seconds)})")

        def progress(sent: int) -> None:
            if sent >= next_mark[0]:
                next_mark[0] += every
                mib = rss_mib(workers)
                result.memory_timeline.append((sent, mib))
                report.say(f"  {sent:>10,} sent   workers RSS {mib:7.1f} MiB")

        run = await self.measure(srv.target, rate, seconds, warmup_s=0.0, progress=progress)
        result.soak = run
        await asyncio.sleep(3.0)  # let the last usage batch flush and the worker settle
        result.memory["after_soak_mib"] = rss_mib(workers)
        result.memory["after_soak_each_mib"] = rss_each_mib(workers)
        result.memory["soak_requests"] = opts.soak_requests
        report.soak_row(run)

    async def stop(self, srv: Server) -> None:
        started = time.perf_counter()
        await asyncio.to_thread(self.children.stop, srv.gateway.proc)
        srv.result.shutdown_s = time.perf_counter() - started
        srv.result.exit_code = srv.gateway.proc.returncode
        report.say(f"{srv.name}: stopped in {srv.result.shutdown_s:.1f} s (exit status {srv.result.exit_code})")

    async def run(self) -> list[ServerResult]:
        opts = self.opts
        report.say(f"\nstarting {', '.join(opts.servers)} ({opts.workers} worker(s) each)")
        try:
            for name in opts.servers:
                await self.start(name)
            await self.warm_up()
            await asyncio.sleep(2.0)
            for s in self.servers:
                s.result.memory["at_rest_mib"] = rss_mib(s.gateway.worker_pids())
            await self.fixed_rate()
            if opts.stream:
                await self.streaming()
            if opts.search:
                await self.search()
            for s in self.servers:
                if opts.profile:
                    await self.profile(s)
                if opts.soak_requests > 0:
                    await self.soak(s)
                report.memory_rows(s.result)
        finally:
            for s in self.servers:
                await self.stop(s)
        return [s.result for s in self.servers]


async def run_all(opts: Options, children: Children, tmp: Path) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    gc.freeze()  # what exists now lives for the whole run: keep it out of the generator's collections
    meta = environment(opts)
    report.preamble(meta, opts)
    engine_proc, engine_url = start_fake_engine(children, tmp)
    if opts.pin:
        pin_cpus([os.getpid(), engine_proc.pid], LOAD_CPUS)
    async with new_session(opts.connections) as session:
        bench = Bench(opts, children, session, engine_url, engine_proc.pid, tmp)
        results = await bench.run()
    meta["loadavg_end"] = os.getloadavg()
    report.summary(results, opts, meta)
    return {"meta": meta, "servers": [report.server_dict(r, opts) for r in results],
            "direct_only_steps": [report.step_dict(st) for st in bench.direct_steps]}


# --pin: the gateway (server and workers) on one CPU, the load generator and the fake engine on another
# (the embedded Postgres floats). Without it the three compete for both CPUs, and the generator's own
# work (about 40% of a CPU at 1,000 req/s) shows up as gateway latency. The first two CPUs this process
# may use (normally 0 and 1).
_ALLOWED = sorted(os.sched_getaffinity(0))
LOAD_CPUS = frozenset(_ALLOWED[:1])
GATEWAY_CPUS = frozenset(_ALLOWED[1:2])


def pin_cpus(pids: Sequence[int], cpus: frozenset[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, cpus)


def environment(opts: Options) -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "argv": sys.argv[1:], "python": platform.python_version(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "loadavg_start": os.getloadavg(),
        "versions": {d: version(d) for d in ("granian", "uvicorn", "litestar", "aiohttp", "uvloop", "psycopg")},
        "py_spy": py_spy_path() if opts.profile else None,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "pinned": {"gateway": sorted(GATEWAY_CPUS), "load_and_engine": sorted(LOAD_CPUS)} if opts.pin else None,
    }


# -- command line -------------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v <= 0 or math.isnan(v) for v in values):
        raise argparse.ArgumentTypeError("rates must be positive")
    return values


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("TENANTGATE_"):
        raise argparse.ArgumentTypeError("expected TENANTGATE_NAME=value")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="granian,uvicorn",
                   help="ASGI server(s) to compare, comma-separated (default: granian,uvicorn)")
    p.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    p.add_argument("--fixed-rate", type=float, default=200.0, help="rate of the latency targets (default 200)")
    p.add_argument("--fixed-seconds", type=float, default=8.0,
                   help="measured seconds per target at the fixed rate, split over --rounds (default 8)")
    p.add_argument("--rounds", type=int, default=4,
                   help="rounds of the fixed-rate and streaming phases, each: direct, then every gateway (default 4)")
    p.add_argument("--no-stream", dest="stream", action="store_false", help="skip the streaming phase")
    p.add_argument("--stream-rate", type=float, default=200.0, help="streaming phase rate (default 200)")
    p.add_argument("--stream-seconds", type=float, default=4.0, help="streaming seconds per target (default 4)")
    p.add_argument("--skip-search", dest="search", action="store_false", help="skip the maximum-rate search")
    p.add_argument("--rates", type=_floats, default=",".join(str(r) for r in DEFAULT_RATES),
                   help="rate steps of the search, comma-separated (default %(default)s)")
    p.add_argument("--step-seconds", type=float, default=2.5,
                   help="measured seconds per step and target (default 2.5)")
    p.add_argument("--step-warmup", type=float, default=0.5,
                   help="unmeasured seconds at the same rate before each measured run (default 0.5)")
    p.add_argument("--retries", type=int, default=1,
                   help="re-runs of a failing step before it counts (default 1)")
    p.add_argument("--no-direct-max", dest="direct_max", action="store_false",
                   help="stop the search when the gateway fails (else direct goes on to find its own maximum)")
    p.add_argument("--p99-limit-ms", type=float, default=10.0,
                   help="a step passes while added p99 stays within this (default 10)")
    p.add_argument("--max-lag-ms", type=float, default=10.0,
                   help="a run whose generator lag p99 exceeds this is behind schedule (default 10)")
    p.add_argument("--noise-limit", type=float, default=20.0,
                   help="repeat a round (up to twice) when other processes and steal took more than this percent "
                        "of a CPU during it (default 20)")
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="warm-up per target at start (default 2)")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy profile")
    p.add_argument("--profile-rate", type=float, default=500.0, help="rate during the profile (default 500)")
    p.add_argument("--profile-seconds", type=float, default=5.0, help="profile length (default 5)")
    p.add_argument("--profile-hz", type=int, default=500, help="py-spy samples per second (default 500)")
    p.add_argument("--top", type=int, default=20, help="functions shown in the profile (default 20)")
    p.add_argument("--requests", type=int, default=10_000,
                   help="soak: requests through the gateway for the memory figure (default 10000; 0: none)")
    p.add_argument("--million", action="store_true", help="soak with 1,000,000 requests (same as --requests 1000000)")
    p.add_argument("--soak-rate", type=float, default=500.0,
                   help="soak rate, the same for every server; keep it well below the maximum rate, or the "
                        "backlog of an overloaded gateway inflates its memory (default 500)")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each chat request (default 16)")
    p.add_argument("--connections", type=int, default=4000, help="client connection pool limit (default 4000)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (default 10)")
    p.add_argument("--gateway-env", type=_env_pair, action="append", default=[], metavar="TENANTGATE_X=V",
                   help="extra gateway setting (repeatable)")
    p.add_argument("--quick", action="store_true", help="short everything (for a smoke test, ~1 min per server)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, profiles)")
    p.add_argument("--pin", action="store_true",
                   help="the gateway on one CPU, this load generator and the fake engine on another (needs 2 CPUs)")
    return p


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = build_parser()
    a = parser.parse_args(argv)
    servers = tuple(s.strip() for s in a.server.split(",") if s.strip())
    if not servers or any(s not in ("granian", "uvicorn") for s in servers):
        parser.error("--server: granian, uvicorn or both (comma-separated)")
    if a.workers < 1 or a.rounds < 1:
        parser.error("--workers and --rounds must be at least 1")
    if min(a.fixed_rate, a.stream_rate, a.profile_rate, a.soak_rate) <= 0:
        parser.error("rates must be positive")
    if a.pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin needs at least 2 CPUs")
    if a.quick:
        a.fixed_seconds, a.stream_seconds, a.step_seconds, a.warmup_seconds = 4.0, 2.0, 1.5, 1.0
        a.profile_seconds, a.requests = 3.0, min(a.requests, 3000)
    return Options(
        servers=servers, workers=a.workers, fixed_rate=a.fixed_rate, fixed_seconds=a.fixed_seconds,
        rounds=a.rounds, stream=a.stream, stream_rate=a.stream_rate, stream_seconds=a.stream_seconds,
        search=a.search, rates=tuple(sorted(a.rates)), step_seconds=a.step_seconds, step_warmup=a.step_warmup,
        retries=max(0, a.retries), direct_max=a.direct_max, p99_limit_ms=a.p99_limit_ms, max_lag_ms=a.max_lag_ms,
        noise_limit=a.noise_limit,
        warmup_seconds=a.warmup_seconds, profile=a.profile and py_spy_path() is not None,
        profile_rate=a.profile_rate, profile_seconds=a.profile_seconds, profile_hz=a.profile_hz, top=a.top,
        soak_requests=MILLION if a.million else max(0, a.requests), soak_rate=a.soak_rate,
        max_tokens=a.max_tokens, connections=a.connections, timeout=a.timeout, gateway_env=dict(a.gateway_env),
        json_path=a.json_path, keep_tmp=a.keep_tmp, pin=a.pin,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    if not opts.profile and py_spy_path() is None:
        report.say("note: py-spy is not installed, so there is no profile (pip install py-spy)")
    tmp = Path(tempfile.mkdtemp(prefix="tenantgate-bench-"))
    children = Children()
    status = 0
    try:
        import uvloop

        result = uvloop.run(run_all(opts, children, tmp))
        if opts.json_path:
            Path(opts.json_path).write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
            report.say(f"wrote {opts.json_path}")
    except (KeyboardInterrupt, asyncio.CancelledError):
        report.say("\ninterrupted: stopping every process started")
        status = 130
    except RuntimeError as exc:  # a process would not start or answer: its log tail is in the message
        report.say(f"\nerror: {exc}")
        status = 1
    finally:
        # A second Ctrl-C must not leave the gateway or its Postgres running.
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            children.stop_all()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        if opts.keep_tmp:
            report.say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
