"""The ingestion queue as the vector store code sees it: a durable hand-off, implemented in retrieval/queue.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol


class IngestionQueue(Protocol):
    async def submit(self, tenant_id: uuid.UUID, vector_store_id: str, file_ids: Sequence[str]) -> None:
        """Ask for these attached files to be ingested. Their ``vector_store_files`` rows are already committed
        with status ``in_progress``; the rows, not the queue, are the truth (a file whose job is lost is found
        again by the queue's sweep)."""
