"""Parsing and chunking a document in a process of its own, so ingestion never stalls the gateway it runs in.

Ingestion runs inside every gateway process by default. Parsing and chunking are CPU work that holds
Python's GIL for long stretches: in a thread of the gateway's process, chunking half a megabyte of text
made the event loop answer 55-75 ms late at p99 (220-260 ms at worst) on this 2-core machine, against
6-13 ms from a separate process (``python -m tests.bench.bench_chunking --stall``). And a parser that
crashes on a hostile file (PDFium is C) takes down only that process: the file ends ``failed``
(``invalid_file``), the gateway goes on.

:class:`DocumentPreparer` keeps one worker process (started on first use with ``spawn``: nothing of the
gateway's sockets, threads or event loop is inherited), which keeps each tokenizer it was sent, with its
cache of word counts, across jobs. ``processes=False`` prepares in a thread instead (tests, tools).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import tokenizers

from retrieval.chunking import Chunk, chunk_document
from retrieval.errors import CorruptDocument
from retrieval.parsing import parse_document
from retrieval.tokens import Tokenizer

__all__ = ["DocumentPreparer", "prepare_document"]

log = logging.getLogger(__name__)

_CHILD_TOKENIZERS: dict[str, Tokenizer] = {}  # in the worker process: tokenizers by the digest of their JSON


def prepare_document(
    data: bytes, tokenizer: Tokenizer, *, max_pages: int, max_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    """Parse ``data`` and cut it into chunks (raises :class:`~retrieval.errors.DocumentRejected`)."""
    document = parse_document(data, max_pages=max_pages)
    del data
    return chunk_document(document, tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens)


def _prepare_in_child(
    data: bytes, tokenizer_key: str, tokenizer_json: str, max_pages: int, max_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    tokenizer = _CHILD_TOKENIZERS.get(tokenizer_key)
    if tokenizer is None:
        tokenizer = _CHILD_TOKENIZERS[tokenizer_key] = Tokenizer(tokenizers.Tokenizer.from_str(tokenizer_json))
    return prepare_document(data, tokenizer, max_pages=max_pages, max_tokens=max_tokens, overlap_tokens=overlap_tokens)


class DocumentPreparer:
    """Runs :func:`prepare_document` in a worker process (or a thread, ``processes=False``)."""

    def __init__(self, *, processes: bool = True) -> None:
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._serialized: dict[int, tuple[Tokenizer, str, str]] = {}  # id(tokenizer) -> (it, digest, JSON)

    async def prepare(
        self, data: bytes, tokenizer: Tokenizer, *, max_pages: int, max_tokens: int, overlap_tokens: int
    ) -> list[Chunk]:
        if not self._processes:
            return await asyncio.to_thread(
                prepare_document, data, tokenizer, max_pages=max_pages, max_tokens=max_tokens,
                overlap_tokens=overlap_tokens,
            )
        key, serialized = self._serialize(tokenizer)
        args = (data, key, serialized, max_pages, max_tokens, overlap_tokens)
        loop = asyncio.get_running_loop()
        pool = self._pool_now()
        try:
            work = loop.run_in_executor(pool, _prepare_in_child, *args)
        except BrokenProcessPool:  # the worker died between documents: not this one's fault
            self._discard(pool)
            pool = self._pool_now()
            work = loop.run_in_executor(pool, _prepare_in_child, *args)
        try:
            return await work
        except BrokenProcessPool:
            # The worker died under this document (a parser crash, or the kernel's OOM killer): the next
            # document gets a fresh one, and this one is not retried.
            log.warning("the document preparation process died; starting a new one for the next file")
            self._discard(pool)
            raise CorruptDocument("The file could not be read: its parser failed on it.") from None

    def close(self) -> None:
        if self._pool is not None:
            self._discard(self._pool)

    def _pool_now(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def _serialize(self, tokenizer: Tokenizer) -> tuple[str, str]:
        found = self._serialized.get(id(tokenizer))
        if found is None:
            text = tokenizer.to_json()
            found = self._serialized[id(tokenizer)] = (tokenizer, hashlib.sha256(text.encode()).hexdigest(), text)
        return found[1], found[2]
