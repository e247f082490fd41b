"""Rows for search tests, written straight into Postgres (no ingestion): tenants, files, stores, chunks.

Chunks get their vectors from :class:`WordsEmbedder`, a hashed bag of words (texts sharing words are near),
which also serves as the query embedder (``retrieval.embedding.Embedder``) so queries and chunks agree.
Bulk chunks (``copy_random_chunks``) get random unit vectors, loaded with COPY.
"""

from __future__ import annotations

import array
import hashlib
import math
import random
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from psycopg import AsyncConnection

from retrieval.embedding import EmbeddingModel, EmbeddingPurpose, Embeddings

DIM = 384
_WORD = re.compile(r"\w+")


def words_vector(text: str) -> list[float]:
    total = [0.0] * DIM
    for word in _WORD.findall(text.lower()) or [text]:
        raw = array.array("h", hashlib.shake_256(word.encode()).digest(2 * DIM))
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        for i, x in enumerate(raw):
            total[i] += x / norm
    norm = math.sqrt(sum(x * x for x in total)) or 1.0
    return [x / norm for x in total]


def as_pgvector(vec: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in vec) + "]"


@dataclass
class WordsEmbedder:
    """An in-test embedder: hashed bag of words; records what it was asked to embed."""

    calls: list[tuple[list[str], uuid.UUID, uuid.UUID | None, str]] = field(default_factory=list)

    async def model(self) -> EmbeddingModel:
        return EmbeddingModel(name="words", dimensions=DIM, max_input_tokens=256)

    async def embed(
        self, texts: Sequence[str], *, tenant_id: uuid.UUID, key_id: uuid.UUID | None, purpose: EmbeddingPurpose
    ) -> Embeddings:
        self.calls.append((list(texts), tenant_id, key_id, purpose))
        return Embeddings(vectors=[as_pgvector(words_vector(t)) for t in texts], prompt_tokens=len(texts))


def new_store_id() -> str:
    return "vs_" + secrets.token_urlsafe(18)


def new_file_id() -> str:
    return "file-" + secrets.token_urlsafe(18)


async def add_tenant(conn: AsyncConnection[Any], tenant_id: uuid.UUID | None = None) -> uuid.UUID:
    tenant_id = tenant_id or uuid.uuid4()
    await conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                       (tenant_id, "t-" + secrets.token_hex(6)))
    return tenant_id


async def add_store(conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_id: str | None = None,
                    **columns: Any) -> str:
    store_id = store_id or new_store_id()
    names = ["id", "tenant_id", "name", *columns]
    values = [store_id, tenant_id, "store", *columns.values()]
    await conn.execute(
        f"INSERT INTO vector_stores ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})", values
    )
    return store_id


_STATIC = msgspec.json.encode(
    {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}
).decode()


async def add_file(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_id: str, filename: str, texts: Sequence[str],
    attributes: dict[str, Any] | None = None, vectors: Sequence[str] | None = None,
) -> str:
    """A completed file in ``store_id`` whose chunks are ``texts`` (vectors: bag of words unless given)."""
    file_id = new_file_id()
    attrs = msgspec.json.encode(attributes or {}).decode()
    await conn.execute(
        "INSERT INTO files (id, tenant_id, filename, purpose, bytes) VALUES (%s, %s, %s, 'assistants', %s)",
        (file_id, tenant_id, filename, sum(len(t) for t in texts)),
    )
    await conn.execute(
        "INSERT INTO vector_store_files (vector_store_id, file_id, tenant_id, status, attributes, chunking_strategy)"
        " VALUES (%s, %s, %s, 'completed', %s::jsonb, %s::jsonb)",
        (store_id, file_id, tenant_id, attrs, _STATIC),
    )
    async with conn.cursor() as cur, cur.copy(
        "COPY chunks (tenant_id, vector_store_id, file_id, chunk_index, text, tokens, char_start, char_end,"
        " attributes, embedding) FROM STDIN"
    ) as copy:
        for i, text in enumerate(texts):
            vector = vectors[i] if vectors is not None else as_pgvector(words_vector(text))
            await copy.write_row(
                (tenant_id, store_id, file_id, i, text, max(1, len(text.split())), 0, len(text), attrs, vector)
            )
    return file_id


def random_unit(rng: random.Random) -> list[float]:
    vec = [rng.gauss(0.0, 1.0) for _ in range(DIM)]
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec]


def random_unit_texts(seed: int, count: int) -> list[str]:
    """``count`` random unit vectors in pgvector's text form (numpy: fast enough for 100k)."""
    gen = np.random.default_rng(seed)
    vecs = gen.standard_normal((count, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return ["[" + ",".join(row) + "]" for row in np.char.mod("%.5f", vecs).tolist()]


async def copy_random_chunks(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_id: str, count: int, *, seed: int = 0,
    words: Sequence[str] = ("alpha", "beta", "gamma", "delta"), attributes: dict[str, Any] | None = None,
    per_file: int = 1000,
) -> list[str]:
    """``count`` chunks with random unit vectors in ``store_id``, ``per_file`` to a file, via COPY."""
    rng = random.Random(seed)
    vectors = random_unit_texts(seed, count)
    attrs = msgspec.json.encode(attributes or {}).decode()
    file_ids = []
    done = 0
    while done < count:
        n = min(per_file, count - done)
        file_id = await add_file(conn, tenant_id, store_id, f"bulk-{done}.txt", [], attributes)
        file_ids.append(file_id)
        async with conn.cursor() as cur, cur.copy(
            "COPY chunks (tenant_id, vector_store_id, file_id, chunk_index, text, tokens, char_start, char_end,"
            " attributes, embedding) FROM STDIN"
        ) as copy:
            for i in range(n):
                text = " ".join(rng.choice(words) for _ in range(12)) + f" row{done + i}"
                await copy.write_row(
                    (tenant_id, store_id, file_id, i, text, 13, 0, len(text), attrs, vectors[done + i])
                )
        done += n
    return file_ids
