"""What retrieval needs from an embedding engine: a small protocol the gateway implements over its engine pool.

Vectors travel in pgvector's text form (``"[0.1,-0.2,...]"``), which is also how an OpenAI-compatible engine
writes them in JSON: the gateway can hand the engine's bytes to Postgres without turning them into floats.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

Vector = str  # pgvector's text form: "[x1,x2,...]"
EmbeddingPurpose = Literal["ingestion", "search", "chat"]


class EmbeddingModel(msgspec.Struct, frozen=True, kw_only=True):
    """The embedding model the engine serves: its public name, vector size and the most tokens it takes in
    one input (``max_model_len`` from the engine's ``/v1/models``, special tokens included)."""

    name: str
    dimensions: int
    max_input_tokens: int


class Embeddings(msgspec.Struct, frozen=True, kw_only=True):
    vectors: list[Vector]  # one per input, in input order
    prompt_tokens: int  # as the engine counted them (metered to the tenant)


class Embedder(Protocol):
    async def model(self) -> EmbeddingModel:
        """The model :meth:`embed` uses (raises :class:`~retrieval.errors.EmbeddingUnavailable` if none is up)."""

    async def embed(
        self, texts: Sequence[str], *, tenant_id: uuid.UUID, key_id: uuid.UUID | None, purpose: EmbeddingPurpose
    ) -> Embeddings:
        """Embed ``texts`` (at most a few hundred per call) and meter the tokens to ``tenant_id``.

        Raises :class:`~retrieval.errors.EmbeddingUnavailable` (no engine now: retry later) or
        :class:`~retrieval.errors.EmbeddingFailed` (the engine refused this input).
        """
