"""One ingestion job: a file attached to a vector store becomes searchable chunks, or ends ``failed``.

The ``vector_store_files`` row is the truth, not the queue: a job does its work only while the row is
``in_progress``, counts itself in ``attempts`` first (so a file that kills its worker every time ends
``failed`` instead of looping), and writes everything it produced in ONE transaction that locks the row and
finds it still ``in_progress`` (a file cancelled or detached meanwhile leaves nothing behind).

Steps: read the bytes (``retrieval.files``), parse (``retrieval.parsing``), chunk with the embedding
model's own tokenizer (``retrieval.chunking``) at most what the engine takes, embed in batches, write.
The same bytes already ingested by this tenant with the same effective chunking are not embedded again:
their chunks are copied (``INSERT ... SELECT``), with this file's store, id and attributes.

Failures: a document that cannot be indexed ends ``failed`` with its ``last_error`` (``invalid_file`` or
``unsupported_file``); an engine that refuses the input, a missing tokenizer, a model whose vectors the store
cannot hold end ``failed`` with ``server_error``; an engine that is not reachable now raises
:class:`~retrieval.errors.EmbeddingUnavailable` for the queue to retry later.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from observability.context import reset_request_id, set_request_id
from retrieval.chunking import Chunk
from retrieval.embedding import Embedder, EmbeddingModel
from retrieval.errors import (
    DocumentRejected,
    EmbeddingFailed,
    FileNotFound,
    RetrievalError,
    TokenizerUnavailable,
)
from retrieval.files import get_file, read_content
from retrieval.preparing import DocumentPreparer
from retrieval.tenancy import tenant_transaction
from retrieval.tokens import Tokenizer

__all__ = [
    "AUTO_MAX_TOKENS",
    "AUTO_OVERLAP_TOKENS",
    "STORE_DIMENSIONS",
    "IngestOptions",
    "Outcome",
    "TokenizerSource",
    "effective_strategy",
    "fail_file",
    "give_up_if_spent",
    "ingest_file",
]

AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS = 800, 400  # OpenAI's `auto` strategy
STORE_DIMENSIONS = 384  # chunks.embedding is vector(384) (migration 0004)
_IN_THREAD = DocumentPreparer(processes=False)  # parsing and chunking when no preparer is given
_INSERT_ROWS = 1000  # chunks per INSERT statement

TokenizerSource = Callable[[EmbeddingModel], Awaitable[Tokenizer]]
"""The embedding model's tokenizer (raises :class:`TokenizerUnavailable` when none can be had)."""


@dataclass(frozen=True, slots=True)
class IngestOptions:
    batch_size: int = 32  # texts per embedding request
    max_pages: int = 2000  # a PDF with more pages fails
    max_attempts: int = 3  # a file whose job started this many times ends failed


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a job did: ``completed`` (``chunks`` written, ``copied`` from a file with the same bytes),
    ``failed``, ``skipped`` (the row was not in_progress, or gone), ``discarded`` (it stopped being
    in_progress while the job worked)."""

    status: Literal["completed", "failed", "skipped", "discarded"]
    chunks: int = 0
    copied: bool = False


@dataclass(frozen=True, slots=True)
class _Row:
    attempts: int
    strategy: dict[str, Any]
    key_id: uuid.UUID | None
    sha256: bytes | None


def effective_strategy(requested: dict[str, Any], max_input_tokens: int, special_tokens: int) -> dict[str, Any]:
    """The static strategy actually used: the requested one (``auto`` is 800/400), its size capped at what
    the engine takes (``max_input_tokens`` less the tokens it adds to every input), the overlap scaled down
    with it so their ratio holds (OpenAI's rule, overlap at most half the size, keeps holding)."""
    size, overlap = AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS
    static = requested.get("static") if requested.get("type") == "static" else None
    if isinstance(static, dict):
        size = int(static.get("max_chunk_size_tokens", size))
        overlap = int(static.get("chunk_overlap_tokens", overlap))
    cap = max(1, max_input_tokens - special_tokens)
    if size > cap:
        overlap = overlap * cap // size
        size = cap
    overlap = max(0, min(overlap, size // 2))
    return {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}


async def ingest_file(
    pool: AsyncConnectionPool[Any], embedder: Embedder, tokenizer: TokenizerSource, tenant_id: uuid.UUID,
    vector_store_id: str, file_id: str, *, options: IngestOptions = IngestOptions(),
    preparer: DocumentPreparer | None = None,
) -> Outcome:
    """Ingest one attached file (see the module docstring). Raises what the queue should retry:
    :class:`~retrieval.errors.EmbeddingUnavailable`, database errors."""
    row = await _start(pool, tenant_id, vector_store_id, file_id, options.max_attempts)
    if isinstance(row, Outcome):
        return row
    try:
        model = await embedder.model()
        if model.dimensions != STORE_DIMENSIONS:
            raise TokenizerUnavailable(
                f"The embedding model `{model.name}` gives {model.dimensions}-dimensional vectors; the store holds"
                f" {STORE_DIMENSIONS}."
            )
        tok = await tokenizer(model)
    except (TokenizerUnavailable, EmbeddingFailed) as exc:
        return await fail_file(pool, tenant_id, vector_store_id, file_id, "server_error", exc.message)
    strategy = effective_strategy(row.strategy, model.max_input_tokens, tok.special_tokens)
    if not await _set_strategy(pool, tenant_id, vector_store_id, file_id, strategy):
        return Outcome("discarded")
    if row.sha256 is not None:
        copied = await _copy_same_bytes(pool, tenant_id, vector_store_id, file_id, row, strategy)
        if copied is not None:
            return copied
    try:
        data = await _read_bytes(pool, tenant_id, file_id)
    except FileNotFound:
        return Outcome("discarded")
    size = strategy["static"]
    try:
        chunks = await (preparer or _IN_THREAD).prepare(
            data, tok, max_pages=options.max_pages, max_tokens=size["max_chunk_size_tokens"],
            overlap_tokens=size["chunk_overlap_tokens"],
        )
        del data
    except DocumentRejected as exc:
        return await fail_file(pool, tenant_id, vector_store_id, file_id, exc.code, exc.message)
    if not chunks:
        return await fail_file(pool, tenant_id, vector_store_id, file_id, "invalid_file", "The file has no text.")
    try:
        vectors = await _embed_all(embedder, [c.text for c in chunks], tenant_id, row.key_id, vector_store_id,
                                   file_id, options.batch_size)
    except EmbeddingFailed as exc:
        return await fail_file(pool, tenant_id, vector_store_id, file_id, "server_error", exc.message)
    return await _write(pool, tenant_id, vector_store_id, file_id, chunks, vectors)


# -- steps ---------------------------------------------------------------------------------------------


async def _start(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, vs_id: str, file_id: str, max_attempts: int
) -> _Row | Outcome:
    """Lock the row; skip it unless in_progress; fail it if its attempts are spent; else count this one."""
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            "SELECT vsf.status, vsf.attempts, vsf.chunking_strategy, vsf.key_id,"
            " coalesce(vsf.sha256, f.sha256)"
            " FROM vector_store_files vsf JOIN files f ON f.id = vsf.file_id AND f.tenant_id = vsf.tenant_id"
            " WHERE vsf.vector_store_id = %s AND vsf.file_id = %s AND vsf.tenant_id = %s FOR UPDATE OF vsf",
            (vs_id, file_id, tenant_id),
        )
        found = await cur.fetchone()
        if found is None or found[0] != "in_progress":
            return Outcome("skipped")
        _, attempts, strategy, key_id, sha256 = found
        if attempts >= max_attempts:
            await _mark_failed(conn, tenant_id, vs_id, file_id, "server_error", _spent(attempts))
            return Outcome("failed")
        await conn.execute(
            "UPDATE vector_store_files SET attempts = attempts + 1, sha256 = %s, updated_at = now()"
            " WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s",
            (sha256, vs_id, file_id, tenant_id),
        )
    return _Row(attempts + 1, strategy or {}, key_id, None if sha256 is None else bytes(sha256))


def _spent(attempts: int) -> str:
    return f"Ingestion was tried {attempts} times without success; attach the file again to retry."


async def _set_strategy(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, vs_id: str, file_id: str, strategy: dict[str, Any]
) -> bool:
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            "UPDATE vector_store_files SET chunking_strategy = %s, updated_at = now()"
            " WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s AND status = 'in_progress'",
            (Jsonb(strategy), vs_id, file_id, tenant_id),
        )
        return cur.rowcount == 1


async def _read_bytes(pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, file_id: str) -> bytes:
    file = await get_file(pool, tenant_id, file_id)
    parts = [piece async for piece in read_content(pool, tenant_id, file)]
    return b"".join(parts)


async def _embed_all(
    embedder: Embedder, texts: Sequence[str], tenant_id: uuid.UUID, key_id: uuid.UUID | None, vs_id: str,
    file_id: str, batch_size: int,
) -> list[str]:
    token = set_request_id(f"ingest-{vs_id}-{file_id}")  # the request id of the usage rows
    try:
        vectors: list[str] = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            result = await embedder.embed(batch, tenant_id=tenant_id, key_id=key_id, purpose="ingestion")
            if len(result.vectors) != len(batch):
                raise EmbeddingFailed(f"The embedding engine answered {len(result.vectors)} vectors for {len(batch)}.")
            vectors += result.vectors
        return vectors
    finally:
        reset_request_id(token)


async def _lock_in_progress(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, vs_id: str, file_id: str
) -> dict[str, Any] | None:
    """Lock the row; its attributes (as they are now: the chunks carry them) if it is still in_progress."""
    cur = await conn.execute(
        "SELECT status, attributes FROM vector_store_files"
        " WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s FOR UPDATE",
        (vs_id, file_id, tenant_id),
    )
    found = await cur.fetchone()
    if found is None or found[0] != "in_progress":
        return None
    return found[1] or {}


_COMPLETE = (
    "UPDATE vector_store_files SET status = 'completed', last_error = NULL, usage_bytes = %s, updated_at = now()"
    " WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s"
)


async def _copy_same_bytes(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, vs_id: str, file_id: str, row: _Row,
    strategy: dict[str, Any],
) -> Outcome | None:
    """Copy the chunks of a completed file of this tenant with the same bytes and chunking; None if none."""
    async with tenant_transaction(pool, tenant_id) as conn:
        attributes = await _lock_in_progress(conn, tenant_id, vs_id, file_id)
        if attributes is None:
            return Outcome("discarded")
        cur = await conn.execute(
            "SELECT vector_store_id, file_id, usage_bytes FROM vector_store_files"
            " WHERE tenant_id = %s AND sha256 = %s AND status = 'completed' AND chunking_strategy = %s"
            " AND (vector_store_id, file_id) <> (%s, %s) LIMIT 1 FOR SHARE",
            (tenant_id, row.sha256, Jsonb(strategy), vs_id, file_id),
        )
        source = await cur.fetchone()
        if source is None:
            return None
        await conn.execute(
            "DELETE FROM chunks WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s",
            (vs_id, file_id, tenant_id),
        )
        cur = await conn.execute(
            "INSERT INTO chunks (tenant_id, vector_store_id, file_id, chunk_index, text, tokens, page, heading,"
            " char_start, char_end, attributes, embedding)"
            " SELECT tenant_id, %s, %s, chunk_index, text, tokens, page, heading, char_start, char_end, %s, embedding"
            " FROM chunks WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s",
            (vs_id, file_id, Jsonb(attributes), source[0], source[1], tenant_id),
        )
        copied = cur.rowcount
        if copied <= 0:
            return None  # its chunks went away meanwhile: embed after all (the transaction rolls nothing back)
        await conn.execute(_COMPLETE, (source[2], vs_id, file_id, tenant_id))
    return Outcome("completed", chunks=copied, copied=True)


async def _write(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, vs_id: str, file_id: str, chunks: Sequence[Chunk],
    vectors: Sequence[str],
) -> Outcome:
    """Replace the file's chunks and complete the row, in one transaction, if it is still in_progress.

    Rows go in with ``INSERT ... SELECT FROM unnest(arrays)``, a thousand per statement: ``COPY FROM`` is
    refused on tables with row-level security, and one statement per row would be a round trip each."""
    usage = sum(len(c.text.encode()) for c in chunks) + 4 * STORE_DIMENSIONS * len(chunks)
    async with tenant_transaction(pool, tenant_id) as conn:
        attributes = await _lock_in_progress(conn, tenant_id, vs_id, file_id)
        if attributes is None:
            return Outcome("discarded")
        attrs = Jsonb(attributes)
        await conn.execute(
            "DELETE FROM chunks WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s",
            (vs_id, file_id, tenant_id),
        )
        for start in range(0, len(chunks), _INSERT_ROWS):
            part = chunks[start : start + _INSERT_ROWS]
            await conn.execute(
                "INSERT INTO chunks (tenant_id, vector_store_id, file_id, chunk_index, text, tokens, page, heading,"
                " char_start, char_end, attributes, embedding)"
                " SELECT %s, %s, %s, i, t, n, p, h, s, e, %s, v::vector"
                " FROM unnest(%s::int[], %s::text[], %s::int[], %s::int[], %s::text[], %s::int[], %s::int[],"
                " %s::text[]) AS u(i, t, n, p, h, s, e, v)",
                (
                    tenant_id, vs_id, file_id, attrs,
                    [c.index for c in part], [c.text for c in part], [c.tokens for c in part],
                    [c.page for c in part], [c.heading for c in part], [c.char_start for c in part],
                    [c.char_end for c in part], list(vectors[start : start + _INSERT_ROWS]),
                ),
            )
        await conn.execute(_COMPLETE, (usage, vs_id, file_id, tenant_id))
    return Outcome("completed", chunks=len(chunks))


# -- failure -------------------------------------------------------------------------------------------


async def _mark_failed(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, vs_id: str, file_id: str, code: str, message: str
) -> bool:
    await conn.execute(
        "DELETE FROM chunks WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s",
        (vs_id, file_id, tenant_id),
    )
    cur = await conn.execute(
        "UPDATE vector_store_files SET status = 'failed', last_error = %s, usage_bytes = 0, updated_at = now()"
        " WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s AND status = 'in_progress'",
        (Jsonb({"code": code, "message": message}), vs_id, file_id, tenant_id),
    )
    return cur.rowcount == 1


async def fail_file(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, vs_id: str, file_id: str, code: str, message: str
) -> Outcome:
    """End an in_progress file ``failed`` with OpenAI's ``last_error`` (``code``: server_error,
    unsupported_file or invalid_file), leaving no chunk of it."""
    async with tenant_transaction(pool, tenant_id) as conn:
        done = await _mark_failed(conn, tenant_id, vs_id, file_id, code, message)
    return Outcome("failed" if done else "discarded")


async def give_up_if_spent(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, vs_id: str, file_id: str, max_attempts: int,
    error: BaseException,
) -> bool:
    """After a job raised: end the file ``failed`` (server_error) if its attempts are spent. True if so."""
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            "SELECT attempts FROM vector_store_files WHERE vector_store_id = %s AND file_id = %s AND tenant_id = %s"
            " AND status = 'in_progress' FOR UPDATE",
            (vs_id, file_id, tenant_id),
        )
        found = await cur.fetchone()
        if found is None:
            return True  # nothing left to do for it
        if found[0] < max_attempts:
            return False
        reason = error.message if isinstance(error, RetrievalError) else "an internal error occurred"
        return await _mark_failed(
            conn, tenant_id, vs_id, file_id, "server_error", f"{_spent(found[0])} Last error: {reason}"
        )
