"""Retrieval through the gateway's own API: quality per search mode, and ingestion throughput vs the engine.

    python -m loadtests.bench_retrieval                                   # start the embedding engine + a gateway
    python -m loadtests.bench_retrieval --embed-url http://127.0.0.1:8101 # an embedding engine already running
    python -m loadtests.bench_retrieval --base-url http://127.0.0.1:8000 --api-key sk-tg-... \\
        [--embed-url http://127.0.0.1:8101]                               # a gateway already running
    python -m loadtests.bench_retrieval --fake        # the fake vLLM: checks the plumbing, its figures mean nothing
    python -m loadtests.bench_retrieval --json retrieval.json             # also JSON
    python -m loadtests.bench_retrieval --pages 12 --engine-sample 96     # a slow (AVX2-only) host: a subset

It drives the gateway with the official ``openai`` SDK, as a user would, and imports nothing of the gateway.
Without ``--base-url`` it starts the real embedding engine (all-MiniLM-L6-v2 on vLLM, through ``enginehost``,
as ``tenantgate up`` does; no chat engine: nothing here chats) unless ``--embed-url`` names one, then
``tenantgate serve`` (uvicorn, its own embedded Postgres, ingestion in the gateway process) in front of it,
a tenant and a tenant admin key; everything started is stopped at the end, on error and on Ctrl-C.

1. Ingestion: the 46 pages of ``loadtests/data/pydocs/pages`` are uploaded (``files.create``), then one file
   batch attaches them all to a new vector store (``vector_stores.file_batches.create_and_poll``, polled every
   ``--poll-ms``; the upload is timed apart, so the ingestion time is the batch's alone: from its creation to
   the poll that sees it ``completed``). Chunks are counted from each file's ``.../content`` (one part per chunk).
2. The engine's own rate, in the same run and from the same machine: the same chunk texts are POSTed straight
   to the engine's ``/v1/embeddings`` in batches of ``--batch-size`` (the gateway's ``embedding_batch_size``,
   passed to the gateway this script starts), one batch at a time and ``--engine-concurrency`` at a time; the
   better of the two is the engine's rate, and the ratio is gateway chunks/s over it. The content endpoint
   gives each chunk without the overlap it shares with the one before; the overlap is put back from the
   previous chunk's tail, ``chunk_overlap_tokens`` tokens of the model's own tokenizer (the strategy each file
   reports), so the engine embeds about what ingestion embedded (the chunker does not overlap across every
   seam, so the rebuilt texts run a few per cent long). The ratio is therefore also given in tokens/s, which
   needs no rebuilding: the gateway's side is the embedding tokens metered to the tenant during the batch
   (``GET /v1/usage`` before and after; nothing else uses the tenant meanwhile), the engine's side the
   ``usage.prompt_tokens`` it answered.
3. Quality: every question of ``loadtests/data/pydocs/questions.jsonl`` goes through
   ``vector_stores.search(max_num_results=5, extra_body={"search_mode": mode})`` for each mode. A result is a
   hit when its file is the labelled page and its text contains the labelled answer (whitespace ignored).
   recall@5: questions with a hit in the top 5; MRR@5: the mean of 1/rank of the first hit (0 if none);
   overall and per kind (``semantic``, ``identifier``). ``page@5`` is recall at the page level alone (a
   result from the right page, whatever its text), which tells a chunking miss from a ranking miss.
   Search latency (the query embedding included) is printed per mode too.

The issue's targets are checked at the end: hybrid at least as good as the better of vector and text on both
measures, hybrid recall@5 at least 0.9, ingestion at least 0.8 of the engine's rate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from loadtests._stack import Children, clean_env, free_port, start_gateway

DATA = Path(__file__).resolve().parent / "data" / "pydocs"
MODES = ("vector", "text", "hybrid")
KINDS = ("semantic", "identifier")
TOP_K = 5
_SPACE = re.compile(r"\s+")


def say(text: str = "") -> None:
    print(text, flush=True)


def squash(text: str) -> str:
    """Whitespace removed: an answer matches a chunk however the parser spaced inline markup."""
    return _SPACE.sub("", text)


@dataclass(frozen=True)
class Options:
    base_url: str | None
    api_key: str | None
    embed_url: str | None
    fake: bool
    modes: tuple[str, ...]
    batch_size: int
    engine_concurrency: int
    ingestion_concurrency: int | None
    poll_ms: int
    limit: int | None
    pages: int | None
    engine_sample: int | None
    tokenizer: Path | None
    timeout: float
    json_path: str | None
    keep_tmp: bool


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    file: str
    answer: str
    kind: str


@dataclass
class Ingestion:
    store_id: str = ""
    files: int = 0
    bytes: int = 0
    upload_s: float = 0.0
    ingest_s: float = 0.0
    chunks: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # filename -> last_error
    overlap_tokens: int = 0
    max_chunk_tokens: int = 0
    metered_requests: int = 0  # embedding requests and tokens metered to the tenant during ingestion
    metered_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.metered_tokens / self.ingest_s if self.ingest_s > 0 and self.metered_tokens else math.nan

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.ingest_s if self.ingest_s > 0 else math.nan


@dataclass
class EngineRate:
    model: str
    concurrency: int
    seconds: float
    chunks: int
    prompt_tokens: int

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.prompt_tokens / self.seconds if self.seconds > 0 and self.prompt_tokens else math.nan


@dataclass
class Outcome:
    """One question in one mode: the rank (1-based) of the first hit, or None."""

    id: str
    kind: str
    rank: int | None
    page_rank: int | None
    latency_ms: float


# -- data ---------------------------------------------------------------------------------------------


def load_questions(path: Path = DATA / "questions.jsonl") -> list[Question]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Question(**json.loads(line)) for line in lines]


def pages(directory: Path = DATA / "pages") -> list[Path]:
    return sorted(directory.glob("*.html"))


# -- the stack -----------------------------------------------------------------------------------------


def start_embedding_engine(tmp: Path, engines: contextlib.ExitStack) -> tuple[str, float]:
    """The real all-MiniLM-L6-v2 engine on a free port; its URL and start-up seconds."""
    from enginehost import (
        EngineProcess,
        embedding_engine_spec,
        embedding_model_path,
        engines_available,
        missing_engine_extra_message,
    )

    if not engines_available():
        raise RuntimeError(missing_engine_extra_message())
    engine = EngineProcess(embedding_engine_spec(embedding_model_path(), port=free_port()), tmp / "logs")
    engines.callback(engine.stop)
    seconds = engine.start(timeout=900, progress=say)
    return engine.url, seconds


def start_fake_engine(children: Children) -> str:
    """``tests/fakes/vllm.py`` serving one embedding model (a hashed bag of words), its own process."""
    proc = children.spawn(
        "fake engine",
        [sys.executable, "-m", "tests.fakes.vllm", "--port", "0", "--purpose", "embed", "--model", "fake-embed"],
        env=clean_env(), log=None, grace_s=3.0,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace").strip()
    if not line.startswith("READY "):
        raise RuntimeError(f"the fake engine did not start: {line!r}")
    return line.split(" ", 1)[1]


def default_tokenizer() -> Path | None:
    """all-MiniLM-L6-v2's tokenizer.json from its package, where installed."""
    with contextlib.suppress(Exception):
        from enginehost import embedding_model_path

        path = Path(embedding_model_path()) / "tokenizer.json"
        if path.is_file():
            return path
    return None


def wait_ready(url: str, proc_alive: Any, log_tail: Any, timeout_s: float = 180.0) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if not proc_alive():
            raise RuntimeError(f"the gateway exited:\n{log_tail()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready after {timeout_s:g} s:\n{log_tail()}")


def tenant_admin_key(base_url: str, key: str) -> str:
    """A new tenant and a key with the tenant admin role (tenant admins upload files), via the admin API."""
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=30) as admin:
        tenant = admin.post("/admin/tenants", json={"name": f"bench-retrieval-{os.getpid()}"})
        tenant.raise_for_status()
        created = admin.post(f"/admin/tenants/{tenant.json()['id']}/keys", json={"role": "admin"})
        created.raise_for_status()
        return str(created.json()["key"])


def start_stack(opts: Options, tmp: Path, children: Children, engines: contextlib.ExitStack,
                meta: dict[str, Any]) -> tuple[str, str, str | None]:
    """(gateway URL, tenant admin key, embedding engine URL or None), starting what is not given."""
    if opts.base_url:
        assert opts.api_key is not None
        return opts.base_url, opts.api_key, opts.embed_url
    extra = {"TENANTGATE_EMBEDDING_BATCH_SIZE": str(opts.batch_size), "TENANTGATE_LOG_FORMAT": "text",
             "TENANTGATE_USAGE_FLUSH_INTERVAL": "0.2"}
    if opts.ingestion_concurrency:
        extra["TENANTGATE_INGESTION_CONCURRENCY"] = str(opts.ingestion_concurrency)
    if opts.fake:
        embed_url = start_fake_engine(children)
        tokenizer = opts.tokenizer or default_tokenizer()
        if tokenizer is None:
            raise RuntimeError("--fake needs a tokenizer.json (--tokenizer): the fake engine has no model folder")
        extra["TENANTGATE_EMBEDDING_TOKENIZER"] = str(tokenizer)
    elif opts.embed_url:
        embed_url = opts.embed_url
    else:
        embed_url, meta["engine_startup_s"] = start_embedding_engine(tmp, engines)
    gateway = start_gateway(
        children, server="uvicorn", workers=1, engine_url="", data_dir=tmp / "gateway",
        extra_env={"TENANTGATE_EMBEDDING_URLS": embed_url, **extra},
    )  # fmt: skip
    meta["gateway_ready_s"] = wait_ready(gateway.url, lambda: gateway.proc.poll() is None, gateway.log_tail)
    say(f"gateway ready on {gateway.url} (embedding engine {embed_url})")
    return gateway.url, tenant_admin_key(gateway.url, gateway.admin_key), embed_url


# -- ingestion ---------------------------------------------------------------------------------------


def metered(client: openai.OpenAI) -> tuple[int, int]:
    """(requests, prompt tokens) metered to this tenant today and yesterday (``GET /v1/usage``, a tenant admin's).
    Nothing here chats, so these are the embedding calls: ingestion's, then the queries'."""
    start = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))
    doc = client.get("/usage", cast_to=httpx.Response, options={"params": {"start": start}}).json()
    rows = doc.get("data", [])
    return sum(int(r["requests"]) for r in rows), sum(int(r["prompt_tokens"]) for r in rows)


def settled_usage(client: openai.OpenAI, before: tuple[int, int], timeout_s: float = 15.0) -> tuple[int, int]:
    """The tenant's usage once the gateway's meter has flushed (two equal reads a second apart, past ``before``)."""
    deadline = time.monotonic() + timeout_s
    last = metered(client)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = metered(client)
        if now == last and now != before:
            return now
        last = now
    return last


def ingest(client: openai.OpenAI, files: Sequence[Path], opts: Options) -> tuple[Ingestion, dict[str, str]]:
    """Upload the pages, attach them in one batch, wait for it; the figures and {file id: page name}."""
    result = Ingestion(files=len(files))
    names: dict[str, str] = {}
    started = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        result.bytes += len(data)
        uploaded = client.files.create(file=(path.name, data, "text/html"), purpose="assistants")
        names[uploaded.id] = path.name
    result.upload_s = time.perf_counter() - started
    usage_before = metered(client)
    store = client.vector_stores.create(name="pydocs")
    result.store_id = store.id
    started = time.perf_counter()
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=store.id, file_ids=list(names), poll_interval_ms=opts.poll_ms
    )
    result.ingest_s = time.perf_counter() - started
    if batch.status != "completed":
        raise RuntimeError(f"the file batch ended {batch.status}: {batch.file_counts}")
    usage_after = settled_usage(client, usage_before)
    result.metered_requests = usage_after[0] - usage_before[0]
    result.metered_tokens = usage_after[1] - usage_before[1]
    for item in client.vector_stores.files.list(vector_store_id=store.id, limit=100):
        if item.status != "completed":
            error = item.last_error
            result.failed[names.get(item.id, item.id)] = f"{item.status}: {error.code if error else '-'}"
        strategy = item.chunking_strategy
        if strategy is not None and strategy.type == "static":
            result.overlap_tokens = strategy.static.chunk_overlap_tokens
            result.max_chunk_tokens = strategy.static.max_chunk_size_tokens
    return result, names


def chunk_pieces(client: openai.OpenAI, store_id: str, file_ids: Sequence[str]) -> list[list[str]]:
    """Each file's chunks as its content endpoint gives them (each without the overlap with the one before)."""
    return [
        [part.text or "" for part in client.vector_stores.files.content(file_id, vector_store_id=store_id)]
        for file_id in file_ids
    ]


def with_overlap(pieces: Sequence[str], overlap_tokens: int, max_tokens: int, tokenizer: Path | None) -> list[str]:
    """Chunk texts rebuilt from their pieces: each piece preceded by the tail of the pieces before it, at most
    ``overlap_tokens`` tokens and no more than keeps the chunk within ``max_tokens`` (the tokenizer's own spans),
    as ingestion chunked them up to the seams."""
    if overlap_tokens <= 0 or tokenizer is None:
        return list(pieces)
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(tokenizer))
    tok.no_truncation()
    tok.no_padding()
    counts = [len(e.ids) for e in tok.encode_batch(list(pieces), add_special_tokens=False)]
    texts: list[str] = []
    for i, piece in enumerate(pieces):
        room = min(overlap_tokens, max_tokens - counts[i])
        if i == 0 or room <= 0:
            texts.append(piece)
            continue
        previous = "".join(pieces[max(0, i - 4) : i])  # a piece may be shorter than the overlap
        offsets = tok.encode(previous, add_special_tokens=False).offsets
        text = piece
        while room > 0:  # tokens may merge differently across the seam: shrink until it fits
            text = previous[offsets[-room][0] if len(offsets) >= room else 0 :] + piece
            if len(tok.encode(text, add_special_tokens=False).ids) <= max_tokens:
                break
            room, text = room - 1, piece
        texts.append(text)
    return texts


def engine_model(embed_url: str) -> str:
    doc = httpx.get(embed_url + "/v1/models", timeout=10).json()
    return str(doc["data"][0]["id"])


def engine_rate(embed_url: str, model: str, texts: Sequence[str], batch_size: int, concurrency: int,
                timeout: float) -> EngineRate:
    """The same texts straight to the engine's /v1/embeddings, ``batch_size`` a request, ``concurrency`` at once."""
    batches = [list(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    with httpx.Client(base_url=embed_url, timeout=timeout, limits=httpx.Limits(max_connections=concurrency)) as http:

        def send(batch: list[str]) -> int:
            resp = http.post("/v1/embeddings", json={"model": model, "input": batch})
            resp.raise_for_status()
            return int(resp.json().get("usage", {}).get("prompt_tokens", 0))

        send(batches[0][:2])  # a warm connection; not counted
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            tokens = sum(pool.map(send, batches))
        seconds = time.perf_counter() - started
    return EngineRate(model, concurrency, seconds, len(texts), tokens)


# -- quality -----------------------------------------------------------------------------------------


def evaluate(client: openai.OpenAI, store_id: str, questions: Sequence[Question], mode: str,
             names: dict[str, str]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for q in questions:
        started = time.perf_counter()
        page = client.vector_stores.search(
            vector_store_id=store_id, query=q.question, max_num_results=TOP_K, extra_body={"search_mode": mode}
        )
        latency_ms = (time.perf_counter() - started) * 1000
        answer = squash(q.answer)
        rank = page_rank = None
        for i, result in enumerate(page.data[:TOP_K], 1):
            if names.get(result.file_id, result.filename) != q.file:
                continue
            page_rank = page_rank or i
            if answer in squash("".join(part.text for part in result.content)):
                rank = i
                break
        outcomes.append(Outcome(q.id, q.kind, rank, page_rank, latency_ms))
    return outcomes


def scores(outcomes: Sequence[Outcome]) -> dict[str, float]:
    n = len(outcomes)
    if n == 0:
        return {"n": 0, "recall@5": math.nan, "mrr@5": math.nan, "page@5": math.nan}
    return {
        "n": n,
        "recall@5": sum(o.rank is not None for o in outcomes) / n,
        "mrr@5": sum(1 / o.rank for o in outcomes if o.rank is not None) / n,
        "page@5": sum(o.page_rank is not None for o in outcomes) / n,
    }


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- report ------------------------------------------------------------------------------------------


def _f(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def report(ing: Ingestion, rates: list[EngineRate], quality: dict[str, list[Outcome]],
           meta: dict[str, Any]) -> dict[str, Any]:
    say()
    say(f"machine: {meta['cpus']} CPUs ({meta['cpu_model']}), load average at start {meta['loadavg_start']}")
    say(f"\ningestion: {ing.files} pages, {ing.bytes / 1e6:.2f} MB, uploaded in {ing.upload_s:.1f} s; "
        f"batch completed in {ing.ingest_s:.1f} s; {ing.chunks} chunks -> {_f(ing.chunks_per_s, 1)} chunks/s")
    if ing.failed:
        say(f"  files not completed: {ing.failed}")
    say(f"  metered to the tenant during ingestion: {ing.metered_requests} embedding requests, "
        f"{ing.metered_tokens} tokens -> {_f(ing.tokens_per_s, 0)} tokens/s")
    best = max(rates, key=lambda r: r.chunks_per_s, default=None)
    ratio = ing.chunks_per_s / best.chunks_per_s if best else math.nan
    token_ratio = ing.tokens_per_s / best.tokens_per_s if best else math.nan
    for r in rates:
        say(f"engine directly ({r.model}), {meta['batch_size']} a request, {r.concurrency} at once: "
            f"{r.chunks} chunks in {r.seconds:.1f} s -> {_f(r.chunks_per_s, 1)} chunks/s "
            f"({r.prompt_tokens} tokens, {_f(r.tokens_per_s, 0)} tokens/s)")
    if best:
        say(f"ingestion / engine rate: {_f(ratio)} in chunks/s, {_f(token_ratio)} in tokens/s (target >= 0.8)")
    else:
        say("engine rate: not measured (no --embed-url)")
    say(f"\nquality over {len(next(iter(quality.values()), []))} questions, top {TOP_K} "
        "(hit: the labelled page and a result text containing the answer)")
    header = (f"{'mode':<8} {'kind':<11} {'n':>3}  {'recall@5':>8} {'MRR@5':>6} {'page@5':>6}  "
              f"{'search p50':>10} {'p95':>8}")
    say(header)
    say("-" * len(header))
    table: dict[str, Any] = {}
    for mode, outcomes in quality.items():
        latencies = [o.latency_ms for o in outcomes]
        row: dict[str, Any] = {"all": scores(outcomes), "latency_ms": {"p50": pct(latencies, 0.5),
                                                                       "p95": pct(latencies, 0.95)}}
        for kind in KINDS:
            row[kind] = scores([o for o in outcomes if o.kind == kind])
        row["misses"] = [o.id for o in outcomes if o.rank is None]
        for i, kind in enumerate(("all", *KINDS)):
            s = row[kind]
            lat = f"{_f(row['latency_ms']['p50'], 1):>8} ms {_f(row['latency_ms']['p95'], 1):>5} ms" if i == 0 else ""
            say(f"{mode if i == 0 else '':<8} {kind:<11} {s['n']:>3}  {_f(s['recall@5']):>8} {_f(s['mrr@5']):>6} "
                f"{_f(s['page@5']):>6}  {lat}")
        table[mode] = row
    for mode, row in table.items():
        if row["misses"]:
            say(f"misses ({mode}): {' '.join(row['misses'])}")
    targets = check_targets(table, ratio)
    for line in targets:
        say(line)
    return {"meta": meta, "ingestion": {**asdict(ing), "chunks_per_s": ing.chunks_per_s},
            "engine": [{**asdict(r), "chunks_per_s": r.chunks_per_s} for r in rates],
            "ingestion_to_engine_ratio": ratio, "ingestion_to_engine_token_ratio": token_ratio, "quality": table,
            "targets": targets}


def check_targets(table: dict[str, Any], ratio: float) -> list[str]:
    lines: list[str] = []
    if all(m in table for m in MODES):
        hybrid, vector, text = (table[m]["all"] for m in ("hybrid", "vector", "text"))
        for measure in ("recall@5", "mrr@5"):
            better = max(vector[measure], text[measure])
            verdict = "met" if hybrid[measure] >= better else "NOT met"
            lines.append(f"target: hybrid {measure} {_f(hybrid[measure])} >= best single mode {_f(better)}: {verdict}")
        verdict = "met" if hybrid["recall@5"] >= 0.9 else "NOT met"
        lines.append(f"target: hybrid recall@5 {_f(hybrid['recall@5'])} >= 0.9: {verdict}")
    if not math.isnan(ratio):
        lines.append(f"target: ingestion/engine {_f(ratio)} >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}")
    return lines


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def environment(opts: Options) -> dict[str, Any]:
    model = "-"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "argv": sys.argv[1:], "python": platform.python_version(), "cpus": os.cpu_count(), "cpu_model": model,
        "loadavg_start": [round(v, 2) for v in os.getloadavg()], "fake_engine": opts.fake,
        "batch_size": opts.batch_size, "ingestion_concurrency": opts.ingestion_concurrency,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }  # fmt: skip


# -- the run -----------------------------------------------------------------------------------------


def run(opts: Options, tmp: Path, children: Children, engines: contextlib.ExitStack,
        meta: dict[str, Any]) -> dict[str, Any]:
    base_url, key, embed_url = start_stack(opts, tmp, children, engines, meta)
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=opts.timeout)
    files = pages()[: opts.pages]
    kept = {path.name for path in files}
    questions = [q for q in load_questions() if q.file in kept][: opts.limit]
    meta["pages"], meta["questions"] = len(files), len(questions)
    say(f"ingesting {len(files)} pages ...")
    ing, names = ingest(client, files, opts)
    pieces = chunk_pieces(client, ing.store_id, list(names))
    ing.chunks = sum(len(p) for p in pieces)
    say(f"ingested {ing.chunks} chunks in {ing.ingest_s:.1f} s")
    rates: list[EngineRate] = []
    if embed_url:
        tokenizer = opts.tokenizer or default_tokenizer()
        texts = [t for p in pieces for t in with_overlap(p, ing.overlap_tokens, ing.max_chunk_tokens, tokenizer)]
        texts = texts[: opts.engine_sample]
        meta["engine_texts_rebuilt_with_overlap"] = bool(ing.overlap_tokens and tokenizer)
        model = engine_model(embed_url)
        for concurrency in sorted({1, opts.engine_concurrency}):
            rates.append(engine_rate(embed_url, model, texts, opts.batch_size, concurrency, opts.timeout))
    quality: dict[str, list[Outcome]] = {}
    for mode in opts.modes:
        say(f"searching in mode {mode} ...")
        quality[mode] = evaluate(client, ing.store_id, questions, mode, names)
    return report(ing, rates, quality, meta)


def parse_options(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_retrieval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", help="a running gateway (then --api-key, a tenant admin key, is needed)")
    p.add_argument("--api-key", help="a tenant admin key of the gateway at --base-url")
    p.add_argument("--embed-url", help="a running embedding engine (its rate is measured; else one is started)")
    p.add_argument("--fake", action="store_true", help="the fake vLLM engine instead of a real one (plumbing only)")
    p.add_argument("--modes", default=",".join(MODES), help="search modes, comma-separated (default: all three)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="texts per embedding request, the gateway's and the direct run's (default 32)")
    p.add_argument("--engine-concurrency", type=int, default=4,
                   help="concurrent requests of the direct run besides one at a time (default 4)")
    p.add_argument("--ingestion-concurrency", type=int,
                   help="the gateway's ingestion jobs at once (files embedded in parallel; default: its setting)")
    p.add_argument("--poll-ms", type=int, default=200, help="file batch poll interval in ms (default 200)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--pages", type=int,
                   help="only the first N pages (by name) and their questions: for slow hosts (default: all 46)")
    p.add_argument("--engine-sample", type=int,
                   help="the direct run embeds only the first N chunks (a rate per chunk; default: all of them)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json of the embedding model (default: the package's)")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds (default 300)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (engine and gateway logs)")
    a = p.parse_args(argv)
    if a.base_url and not a.api_key:
        p.error("--base-url needs --api-key (a tenant admin key)")
    if a.fake and (a.base_url or a.embed_url):
        p.error("--fake starts its own engine and gateway")
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: a comma-separated subset of {','.join(MODES)}")
    if a.batch_size < 1 or a.engine_concurrency < 1 or a.poll_ms < 10:
        p.error("--batch-size and --engine-concurrency must be at least 1, --poll-ms at least 10")
    return Options(
        base_url=a.base_url.rstrip("/") if a.base_url else None, api_key=a.api_key,
        embed_url=a.embed_url.rstrip("/") if a.embed_url else None, fake=a.fake, modes=modes,
        batch_size=a.batch_size, engine_concurrency=a.engine_concurrency,
        ingestion_concurrency=a.ingestion_concurrency, poll_ms=a.poll_ms, limit=a.limit, pages=a.pages,
        engine_sample=a.engine_sample,
        tokenizer=a.tokenizer, timeout=a.timeout, json_path=a.json_path, keep_tmp=a.keep_tmp,
    )  # fmt: skip


def _interrupt(signum: int, frame: object) -> None:
    del signum, frame
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_options(argv)
    meta = environment(opts)
    tmp = Path(tempfile.mkdtemp(prefix="tenantgate-bench-retrieval-"))
    children = Children()
    engines = contextlib.ExitStack()
    status = 0
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends the run as Ctrl-C does: everything is stopped
    try:
        doc = _json_safe(run(opts, tmp, children, engines, meta))
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
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            children.stop_all()
            engines.close()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        if opts.keep_tmp:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
