"""Printing the benchmark: tables as the phases finish, then the summary; and the JSON form."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from loadtests._load import Dist, Run
from loadtests._profile import Profile

if TYPE_CHECKING:
    from loadtests.bench_gateway import Options, ServerResult, Step

_noisy = {"limit": 20.0}  # percent of a CPU taken by other work above which a row is marked noisy
_GROUPS = ("gateway", "engine", "postgres", "loadgen", "others", "steal")
_W = 20  # width of the row labels
_HEAD = (f"{'':<{_W}}{'rate':>6} {'sent':>7} {'ok':>7} {'err':>5} {'achieved':>9} {'p50':>7} {'p90':>7} {'p99':>7} "
         f"{'max':>8} {'lag p99':>8}   CPU%: {'gw':>4} {'eng':>4} {'pg':>4} {'gen':>4} {'oth':>4} {'stl':>4} "
         f"{'gw us/req':>10}")


def say(text: str = "") -> None:
    print(text, flush=True)


def loadavg(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _ms(value: float, width: int = 7, sign: bool = False) -> str:
    if math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:>+{width}.2f}" if sign else f"{value:>{width}.2f}"


def _num(value: float, width: int, fmt: str = ".0f") -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}{fmt}}"


def _errors(run: Run) -> str:
    out = "" if not run.errors else "  errors: " + ", ".join(f"{k} x{v}" for k, v in run.errors.most_common(4))
    noise = run.cpu_percent("others") + run.cpu_percent("steal")
    if noise > _noisy["limit"]:
        out += f"  (noisy: other work took {noise:.0f}% of a CPU)"
    split = run.worker_split()
    if len(split) > 1:
        out += "  worker CPU split " + "/".join(f"{s:.0f}%" for s in split)
    if run.odd_statuses:
        out += "  (answered " + ", ".join(f"HTTP {k} x{v}" for k, v in run.odd_statuses.items()) + ", not 200)"
    return out


def run_row(label: str, run: Run, dist: Dist | None = None) -> str:
    d = dist or run.latency()
    cpu = " ".join(_num(run.cpu_percent(g), 4) for g in _GROUPS)
    per_req = _num(run.cpu_us_per_request("gateway"), 10) if run.target != "direct" else f"{'':>10}"
    return (f"{label:<{_W}}{run.rate:>6.0f} {run.scheduled:>7} {run.ok:>7} {run.error_count:>5} "
            f"{run.achieved_rate:>9.1f} {_ms(d.p50)} {_ms(d.p90)} {_ms(d.p99)} {_ms(d.max, 8)} "
            f"{_ms(run.lag().p99, 8)}         {cpu} {per_req}{_errors(run)}")


def _blank() -> str:
    return f"{'':>6} {'':>7} {'':>7} {'':>5} {'':>9}"


def added_row(direct: Dist, gateway: Dist, label: str) -> str:
    return (f"{label:<{_W}}{_blank()} {_ms(gateway.p50 - direct.p50, sign=True)} "
            f"{_ms(gateway.p90 - direct.p90, sign=True)} {_ms(gateway.p99 - direct.p99, sign=True)} "
            f"{_ms(gateway.max - direct.max, 8, sign=True)}")


def ratio_row(direct: Dist, gateway: Dist, label: str) -> str:
    def r(g: float, d: float) -> str:
        return f"{'-':>7}" if not d or math.isnan(g) or math.isnan(d) else f"{g / d:>6.2f}x"

    return (f"{label:<{_W}}{_blank()} {r(gateway.p50, direct.p50)} "
            f"{r(gateway.p90, direct.p90)} {r(gateway.p99, direct.p99)} {r(gateway.max, direct.max):>8}")


def preamble(meta: dict[str, Any], opts: Options) -> None:
    _noisy["limit"] = opts.noise_limit
    say("tenantgate gateway benchmark")
    say(f"  {meta['started_at']}  python {meta['python']}  {meta['cpus']} CPUs  {meta['platform']}")
    say("  " + "  ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    say(f"  load average at start: {loadavg(meta['loadavg_start'])}"
        + ("   (HIGH: other work is running on this machine)" if _high(meta["loadavg_start"], meta["cpus"])
           else ""))
    say(f"  servers {', '.join(opts.servers)}; {opts.workers} worker(s); non-streaming chat, max_tokens "
        f"{opts.max_tokens}; auth + usage metering (embedded Postgres) + request ids on")
    if meta.get("pinned"):
        say(f"  pinned (--pin): gateway on CPU {meta['pinned']['gateway']}, load generator and fake engine on CPU "
            f"{meta['pinned']['load_and_engine']}, Postgres unpinned")
    say("  latency in ms from each request's scheduled send time (open loop, evenly spread arrivals);")
    say("  'added' = gateway percentile - direct percentile at the same rate, measured back to back")
    say("  CPU% = share of one CPU during the run: gw gateway processes, eng fake engine, pg Postgres, gen this")
    say("  load generator, oth everything else on the machine, stl hypervisor steal; gw us/req: gateway CPU/request")


def _high(values: Any, cpus: int | None) -> bool:
    return bool(values) and values[0] > 0.75 * (cpus or 1)


def fixed_table(title: str, runs: dict[str, Run]) -> None:
    say(f"\n{title}")
    say(_HEAD)
    direct = runs["direct"]
    say(run_row("direct", direct))
    for name, run in runs.items():
        if name != "direct":
            say(run_row(name, run))
            say(added_row(direct.latency(), run.latency(), f"  added {name}"))
            say(ratio_row(direct.latency(), run.latency(), f"  ratio {name}/dir"))


def stream_table(title: str, runs: dict[str, Run]) -> None:
    say(f"\n{title}: time to first byte (TTFB), then to the end of the stream")
    say(_HEAD)
    direct = runs["direct"]
    for label, dist_of in (("TTFB", Run.ttfb), ("total", Run.latency)):
        say(run_row(f"direct {label}", direct, dist_of(direct)))
        for name, run in runs.items():
            if name != "direct":
                say(run_row(f"{name} {label}", run, dist_of(run)))
                say(added_row(dist_of(direct), dist_of(run), f"  added {label}"))


def profile_table(server: str, prof: Profile, run: Run, top: int) -> None:
    say(f"\nprofile of the gateway worker(s) ({server}): py-spy record --nonblocking at {prof.rate_hz} Hz while "
        f"serving {run.rate:g} req/s for {run.wall_s:.1f} s")
    say(f"  {prof.samples} busy samples over {prof.seconds:g} s of recording; gateway CPU "
        f"{run.cpu_us_per_request('gateway'):.0f} us per request; errors {run.error_count}; other work on the "
        f"machine {run.cpu_percent('others') + run.cpu_percent('steal'):.0f}% of a CPU")
    say("  busy threads (share of the recording each was on CPU): "
        + ", ".join(f"{t} {p:.0f}%" for t, _, p in prof.threads() if p >= 0.5))
    if not prof.samples:
        say("  (no samples: is py-spy allowed to read the worker's memory?)")
        return
    say(f"  top {top} by self time (the function on top of the stack; <native: ...> is C/Rust code with no "
        "Python frame of its own: the event loop, socket I/O, the server's core, GC):")
    for func, file, _, pct in prof.top("self", top):
        say(f"    {pct:5.1f}%  {func}  ({file})")
    say(f"  top {top} of the gateway's own functions by total time (the function and what it calls):")
    for func, file, _, pct in prof.top("total", top):
        say(f"    {pct:5.1f}%  {func}  ({file})")
    say("  self time by package: " + ", ".join(f"{p} {s:.1f}%" for p, _, s in prof.packages(12)))


def step_header(opts: Options) -> None:
    say(f"\nmaximum rate search: {opts.step_seconds:g} s per step and target (after {opts.step_warmup:g} s "
        f"warm-up); a step passes while added p99 <= {opts.p99_limit_ms:g} ms, no errors, generator lag p99 "
        f"<= {opts.max_lag_ms:g} ms")
    say(_HEAD)


def step_block(direct: Run, direct_ok: bool, reason: str, verdicts: list[tuple[str, Run, bool, str]],
               attempt: int) -> None:
    again = f"  (attempt {attempt})" if attempt > 1 else ""
    say(run_row("direct", direct) + ("" if direct_ok else f"  direct FAIL: {reason}") + again)
    for name, run, ok, why in verdicts:
        say(run_row(name, run))
        verdict = ("PASS" if ok else f"FAIL ({why.removeprefix('gateway: ')})") if direct_ok else "no verdict"
        say(added_row(direct.latency(), run.latency(), f"  added {name}") + f"   {verdict}")


def soak_row(run: Run) -> None:
    say(_HEAD)
    say(run_row(f"{run.target} soak", run))


def memory_rows(result: ServerResult) -> None:
    m = result.memory
    say(f"\nmemory of the {m.get('workers', '?')} {result.server} worker process(es), RSS:")
    say(f"  after start {m.get('after_start_mib', math.nan):.1f} MiB; at rest after the warm-up "
        f"{m.get('at_rest_mib', math.nan):.1f} MiB")
    if "after_soak_mib" in m:
        say(f"  before the soak (after every other phase) {m['before_soak_mib']:.1f} MiB; after its "
            f"{m['soak_requests']:,} requests {m['after_soak_mib']:.1f} MiB "
            f"({m['after_soak_mib'] - m['before_soak_mib']:+.1f} MiB over the soak, "
            f"{m['after_soak_mib'] - m['at_rest_mib']:+.1f} MiB since at rest)")
        if result.soak is not None:
            say(f"  most requests in flight during the soak: {result.soak.max_in_flight} (a backlog, when the "
                "gateway falls behind, raises its RSS for good: Python keeps the memory it once needed)")


# -- summary ------------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _cell(value: str, width: int = 24) -> str:
    return f"{value:<{width}}"


def _fixed_added(r: ServerResult) -> tuple[float, float]:
    if r.fixed is None:
        return math.nan, math.nan
    d, g = r.fixed[0].latency(), r.fixed[1].latency()
    return g.p50 - d.p50, g.p99 - d.p99


def _rows(r: ServerResult, opts: Options) -> dict[str, str]:
    a50, a99 = _fixed_added(r)
    out: dict[str, str] = {
        "p50": f"{a50:.2f} ms  {_verdict(a50 <= TARGET_P50)}",
        "p99": f"{a99:.2f} ms  {_verdict(a99 <= TARGET_P99)}",
    }
    if opts.search:
        best = r.max_rate or 0.0
        out["rate"] = f"{best:.0f} req/s  {_verdict(best >= TARGET_RATE)}"
        direct = f"{r.max_rate_direct:.0f}" if r.max_rate_direct else "-"
        if r.max_rate_direct and not r.direct_limit:
            direct = ">=" + direct
        out["rate_direct"] = f"{direct} req/s"
        out["rate_ratio"] = f"{best / r.max_rate_direct:.2f}" if r.max_rate_direct and best else "-"
        if r.max_rate_direct and not r.direct_limit:
            out["rate_ratio"] = "<=" + out["rate_ratio"]
    if r.fixed is not None:
        d, g = r.fixed[0].latency(), r.fixed[1].latency()
        out["ratio"] = f"{g.p50 / d.p50:.2f}x / {g.p99 / d.p99:.2f}x"
        out["cpu"] = f"{r.fixed[1].cpu_us_per_request('gateway'):.0f} us"
    if r.stream is not None:
        d, g = r.stream[0].ttfb(), r.stream[1].ttfb()
        out["ttfb"] = f"+{g.p50 - d.p50:.2f} / +{g.p99 - d.p99:.2f} ms"
    m = r.memory
    out["rss"] = f"{m.get('after_start_mib', math.nan):.0f} / {m.get('at_rest_mib', math.nan):.0f} MiB"
    if "after_soak_mib" in m:
        out["rss_soak"] = f"{m['before_soak_mib']:.0f} -> {m['after_soak_mib']:.0f} MiB"
    return out


TARGET_P50 = 1.5
TARGET_P99 = 5.0
TARGET_RATE = 1000.0


def summary(results: list[ServerResult], opts: Options, meta: dict[str, Any]) -> None:
    if not results:
        return
    rows = [_rows(r, opts) for r in results]
    labels = [
        ("p50", f"added p50 @ {opts.fixed_rate:g} req/s (target <= {TARGET_P50:g} ms)"),
        ("p99", f"added p99 @ {opts.fixed_rate:g} req/s (target <= {TARGET_P99:g} ms)"),
        ("rate", f"max req/s, added p99 <= {opts.p99_limit_ms:g} ms (target >= {TARGET_RATE:.0f})"),
        ("rate_direct", "max req/s, direct to the engine"),
        ("rate_ratio", "max req/s ratio gateway / direct"),
        ("ratio", f"ratio gateway/direct p50 / p99 @ {opts.fixed_rate:g}"),
        ("cpu", f"gateway CPU per request @ {opts.fixed_rate:g} req/s"),
        ("ttfb", f"streaming added TTFB p50 / p99 @ {opts.stream_rate:g}"),
        ("rss", "workers RSS after start / at rest"),
        ("rss_soak", f"workers RSS before -> after a {opts.soak_requests:,}-request soak"),
    ]
    say("\n" + "=" * 100)
    say("SUMMARY")
    say(f"  load average: start {loadavg(meta['loadavg_start'])}, end {loadavg(meta['loadavg_end'])} on "
        f"{meta['cpus']} CPUs" + ("  (HIGH during the run: figures are pessimistic)"
                                  if _high(meta["loadavg_end"], meta["cpus"]) else ""))
    say(_cell("", 56) + "".join(_cell(f"{r.server} ({r.workers} worker{'s' if r.workers > 1 else ''})")
                                for r in results))
    for key, label in labels:
        if any(key in row for row in rows):
            say(_cell(label, 56) + "".join(_cell(row.get(key, "-")) for row in rows))
    for r in results:
        if r.gateway_limit:
            say(f"  {r.server}: search stopped for the gateway at: {r.gateway_limit}")
        if r.direct_limit:
            say(f"  {r.server}: direct limit: {r.direct_limit}")
    if len(results) > 1:
        say("  " + faster(results))
    say("=" * 100)


def _cpu_fixed(r: ServerResult) -> float:
    return r.fixed[1].cpu_us_per_request("gateway") if r.fixed else math.nan


def faster(results: list[ServerResult]) -> str:
    """Which server serves this gateway faster here, and on what evidence (differences within noise: none).

    First the maximum rate; at equal rates, gateway CPU per request at the fixed rate (if more than 10%
    apart); then added p50 + p99 at the fixed rate (if more than 0.5 ms apart).
    """
    a, b = results[0], results[1]
    ca, cb = _cpu_fixed(a), _cpu_fixed(b)
    (a50, a99), (b50, b99) = _fixed_added(a), _fixed_added(b)
    evidence = (f"CPU/request {ca:.0f} vs {cb:.0f} us; added p50 {a50:.2f} vs {b50:.2f} ms, "
                f"p99 {a99:.2f} vs {b99:.2f} ms")
    if a.steps or b.steps:
        evidence = f"max rate {a.max_rate or 0:.0f} vs {b.max_rate or 0:.0f} req/s; " + evidence
    winner: ServerResult | None = None
    if (a.max_rate or 0) != (b.max_rate or 0):
        winner = a if (a.max_rate or 0) > (b.max_rate or 0) else b
    elif abs(ca - cb) > 0.10 * max(ca, cb):
        winner = a if ca < cb else b
    elif abs((a50 + a99) - (b50 + b99)) > 0.5:
        winner = a if a50 + a99 < b50 + b99 else b
    head = f"{a.server} vs {b.server}: "
    if winner is None:
        return head + f"no clear difference here ({evidence})"
    loser = b if winner is a else a
    return head + f"{winner.server} is faster here than {loser.server} ({evidence})"


def server_dict(r: ServerResult, opts: Options) -> dict[str, Any]:
    a50, a99 = _fixed_added(r)

    def nan_none(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 3)

    return {
        "server": r.server, "workers": r.workers, "startup_s": round(r.startup_s, 2),
        "shutdown_s": round(r.shutdown_s, 2), "exit_code": r.exit_code,
        "loadavg_before": r.loadavg_before,
        "fixed": None if r.fixed is None else {"direct": r.fixed[0].as_dict(), "gateway": r.fixed[1].as_dict()},
        "stream": None if r.stream is None else {"direct": r.stream[0].as_dict(), "gateway": r.stream[1].as_dict()},
        "targets": {
            "added_p50_ms": nan_none(a50), "added_p50_pass": a50 <= TARGET_P50,
            "added_p99_ms": nan_none(a99), "added_p99_pass": a99 <= TARGET_P99,
            "max_rate": r.max_rate, "max_rate_pass": (r.max_rate or 0) >= TARGET_RATE if opts.search else None,
        },
        "search": [step_dict(s) for s in r.steps],
        "max_rate_direct": r.max_rate_direct, "gateway_limit": r.gateway_limit, "direct_limit": r.direct_limit,
        "soak": None if r.soak is None else {"rate": r.soak_rate, **r.soak.as_dict()},
        "memory": r.memory, "memory_timeline": r.memory_timeline,
        "profile": None if r.profile is None else r.profile.as_dict(opts.top),
    }



def step_dict(s: Step) -> dict[str, Any]:
    return {"rate": s.rate, "attempt": s.attempts, "direct": s.direct.as_dict(),
            "gateway": s.gateway.as_dict() if s.gateway else None, "direct_ok": s.direct_ok,
            "gateway_ok": s.gateway_ok, "reason": s.reason}
