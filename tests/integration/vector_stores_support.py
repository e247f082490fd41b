"""Helpers of the vector store tests: an ingestion queue that records hand-offs (and may play ingestion), and
direct SQL for what ingestion would do (statuses, chunks)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from tests.integration.conftest import Gateway

DIMENSIONS = 384


def unit_vector(i: int = 0) -> str:
    return "[" + ",".join("1" if d == i % DIMENSIONS else "0" for d in range(DIMENSIONS)) + "]"


@dataclass
class RecordingQueue:
    """``IngestionQueue`` for the tests: records each hand-off; with ``gateway`` set, "ingests" a little later
    (one chunk per file, then ``completed``) as the real worker would, only while the row is ``in_progress``."""

    gateway: Gateway | None = None
    submitted: list[tuple[uuid.UUID, str, list[str]]] = field(default_factory=list)
    fail: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def submit(self, tenant_id: uuid.UUID, vector_store_id: str, file_ids: Sequence[str]) -> None:
        if self.fail:
            raise RuntimeError("queue down")
        self.submitted.append((tenant_id, vector_store_id, list(file_ids)))
        if self.gateway is not None:
            self.tasks.append(asyncio.create_task(self._ingest(tenant_id, vector_store_id, list(file_ids))))

    async def _ingest(self, tenant_id: uuid.UUID, vector_store_id: str, file_ids: list[str]) -> None:
        assert self.gateway is not None
        await asyncio.sleep(0.3)
        for file_id in file_ids:
            await complete(self.gateway, tenant_id, vector_store_id, file_id, [f"text of {file_id}"])

    def files(self) -> list[str]:
        return [f for _, _, ids in self.submitted for f in ids]


@pytest.fixture(name="queue")
async def fx_queue(gateway: Gateway) -> AsyncIterator[RecordingQueue]:
    recording = RecordingQueue()
    real = gateway.services.ingestion
    gateway.services.ingestion = recording
    yield recording
    gateway.services.ingestion = real
    for task in recording.tasks:
        await task


async def complete(
    gw: Gateway, tenant_id: uuid.UUID | str, store_id: str, file_id: str, texts: Sequence[str],
    *, attributes: str | None = None, spans: Sequence[tuple[int, int]] | None = None,
) -> bool:
    """What ingestion does when it finishes a file: its chunks and ``completed``, if still ``in_progress``."""
    async with gw.services.db.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE vector_store_files SET status = 'completed', usage_bytes = %s, updated_at = now()"
            " WHERE vector_store_id = %s AND file_id = %s AND status = 'in_progress' RETURNING attributes",
            (sum(len(t) for t in texts) + 1536 * len(texts), store_id, file_id),
        )
        row = await cur.fetchone()
        if row is None:
            return False
        for i, text in enumerate(texts):
            start, end = spans[i] if spans else (0, len(text))
            await conn.execute(
                "INSERT INTO chunks (tenant_id, vector_store_id, file_id, chunk_index, text, tokens, char_start,"
                " char_end, attributes, embedding) VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s::jsonb, %s)",
                (str(tenant_id), store_id, file_id, i, text, start, end, attributes or _json(row[0]),
                 unit_vector(i)),
            )
    return True


def _json(value: object) -> str:
    import json

    return json.dumps(value)


async def set_status(gw: Gateway, store_id: str, file_id: str, status: str, last_error: str | None = None) -> None:
    async with gw.services.db.connection() as conn:
        await conn.execute(
            "UPDATE vector_store_files SET status = %s, last_error = %s::jsonb"
            " WHERE vector_store_id = %s AND file_id = %s",
            (status, last_error, store_id, file_id),
        )


async def chunk_rows(gw: Gateway, store_id: str, file_id: str | None = None) -> list[tuple[str, dict[str, object]]]:
    async with gw.services.db.connection() as conn:
        cur = await conn.execute(
            "SELECT file_id, attributes FROM chunks WHERE vector_store_id = %s"
            " AND (%s::text IS NULL OR file_id = %s) ORDER BY file_id, chunk_index",
            (store_id, file_id, file_id),
        )
        return [(r[0], r[1]) for r in await cur.fetchall()]


async def upload(gw: Gateway, key: str, n: int = 1, prefix: str = "doc") -> list[str]:
    client = gw.openai(key)
    ids = []
    for i in range(n):
        content = f"{prefix} {i} text".encode()
        created = await client.files.create(file=(f"{prefix}{i}.txt", content), purpose="assistants")
        ids.append(created.id)
    return ids
