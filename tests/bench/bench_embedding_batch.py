"""Ingestion's embedding batch size against a real embedding engine: chunks per second for each batch size.

Chunks are full-size ones (about as many tokens as the engine takes, less its special tokens), cut from a
document of the retrieval quality set with the engine's own tokenizer, so the figures are what ingestion sees.

    python -m tests.bench.bench_embedding_batch --url http://127.0.0.1:8101 --tokenizer <model dir> [--chunks 256]

Prints, per batch size, the median of ``--runs`` runs (each embeds every chunk once, one request at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx

from retrieval.chunking import chunk_document
from retrieval.parsing import parse_document
from retrieval.tokens import Tokenizer

_DOCS = Path(__file__).resolve().parents[2] / "loadtests" / "data" / "pydocs"


def _chunks(tokenizer: Tokenizer, max_tokens: int, wanted: int) -> list[str]:
    texts: list[str] = []
    for path in sorted(p for p in _DOCS.rglob("*") if p.suffix in (".txt", ".html", ".md")):
        doc = parse_document(path.read_bytes())
        texts += [c.text for c in chunk_document(doc, tokenizer, max_tokens=max_tokens, overlap_tokens=0)]
        if len(texts) >= wanted:
            break
    return texts[:wanted]


async def _run(url: str, model: str, texts: list[str], batch: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        started = time.perf_counter()
        for start in range(0, len(texts), batch):
            body = {"model": model, "input": texts[start : start + batch], "encoding_format": "float"}
            reply = await client.post("/v1/embeddings", json=body)
            reply.raise_for_status()
        return len(texts) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json or model folder")
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batches", default="1,8,16,32,64,128")
    args = parser.parse_args()
    async with httpx.AsyncClient(base_url=args.url) as client:
        card = (await client.get("/v1/models")).json()["data"][0]
    tokenizer = Tokenizer.from_path(args.tokenizer)
    texts = _chunks(tokenizer, card["max_model_len"] - tokenizer.special_tokens, args.chunks)
    tokens = sum(tokenizer.count(t) for t in texts) / len(texts)
    print(f"{len(texts)} chunks, {tokens:.0f} tokens each on average, model {card['id']}")
    await _run(args.url, card["id"], texts[:16], 16)  # warm-up
    for batch in (int(b) for b in args.batches.split(",")):
        rates = [await _run(args.url, card["id"], texts, batch) for _ in range(args.runs)]
        runs = ", ".join(f"{r:.1f}" for r in rates)
        print(f"batch {batch:4d}: {statistics.median(rates):7.1f} chunks/s (runs: {runs})")


if __name__ == "__main__":
    asyncio.run(main())
