"""Grounded generation: the ``retrieval`` option of a chat or completion request, and the sources it adds.

A request carries ``"retrieval": {"vector_store_ids": [...], "max_num_results": 5, "filters": {...},
"search_mode": "hybrid", "score_threshold": 0.0}``. The chunks found become numbered sources: for chat, a
system message (:func:`sources_message`) telling the model to answer from them and cite them as ``[n]``;
for a completion, the same text before the prompt. :func:`fit_sources` keeps the best sources that fit
the model's context, with room left for the answer. The answer then carries the sources as a top-level
``sources`` list (:class:`Source`, ``index`` the number the prompt gave it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from retrieval.errors import InvalidRequest
from retrieval.filters import Filter, parse_filter
from retrieval.search import MAX_NUM_RESULTS, MAX_STORES, SearchHit, SearchMode

__all__ = [
    "INSTRUCTION", "RetrievalOptions", "Source", "fit_sources", "parse_retrieval", "sources_message", "to_sources",
]

INSTRUCTION = (
    "Answer the user's question using only the numbered sources below. Cite the sources you use by their "
    "number in square brackets, like [1] or [2][3]. If the sources do not contain the answer, say that you "
    "do not know."
)
DEFAULT_MAX_RESULTS = 5


class InvalidRetrieval(InvalidRequest):
    """A ``retrieval`` option that is not as documented (400, ``param`` under ``retrieval``)."""

    code = "invalid_retrieval"


class _Options(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    vector_store_ids: list[str]
    max_num_results: int = DEFAULT_MAX_RESULTS
    filters: dict[str, Any] | None = None
    search_mode: SearchMode | None = None
    score_threshold: float = 0.0


class RetrievalOptions(msgspec.Struct, frozen=True, kw_only=True):
    vector_store_ids: list[str]
    max_num_results: int
    filters: Filter | None
    search_mode: SearchMode | None
    score_threshold: float


class Source(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    file_id: str
    filename: str
    vector_store_id: str
    chunk_index: int
    score: float
    text: str


_decode_options = msgspec.json.Decoder(_Options).decode


def parse_retrieval(raw: bytes) -> RetrievalOptions:
    """The ``retrieval`` option from its raw JSON; raises :class:`InvalidRetrieval` naming the field."""
    try:
        options = _decode_options(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rsplit("`$", 1)[-1].rstrip("`").lstrip(".") if "`$" in text else ""
        missing = text.split("`")[1] if text.startswith("Object missing required field") else ""
        field = ".".join(part for part in ("retrieval", path, missing) if part)
        raise InvalidRetrieval(f"Invalid 'retrieval': {text.split(' - at ')[0]}.", param=field) from None
    except msgspec.DecodeError:
        raise InvalidRetrieval("'retrieval' is not valid JSON.", param="retrieval") from None
    stores = options.vector_store_ids
    if not stores or len(stores) > MAX_STORES:
        raise InvalidRetrieval(
            f"'retrieval.vector_store_ids' lists 1 to {MAX_STORES} vector stores.", param="retrieval.vector_store_ids"
        )
    if not 1 <= options.max_num_results <= MAX_NUM_RESULTS:
        raise InvalidRetrieval(
            f"'retrieval.max_num_results' must be between 1 and {MAX_NUM_RESULTS}.",
            param="retrieval.max_num_results",
        )
    if not 0.0 <= options.score_threshold <= 1.0:
        raise InvalidRetrieval(
            "'retrieval.score_threshold' must be between 0 and 1.", param="retrieval.score_threshold"
        )
    flt = parse_filter(options.filters, "retrieval.filters") if options.filters is not None else None
    return RetrievalOptions(
        vector_store_ids=stores, max_num_results=options.max_num_results, filters=flt,
        search_mode=options.search_mode, score_threshold=options.score_threshold,
    )


def to_sources(hits: Sequence[SearchHit]) -> list[Source]:
    """Number the hits from 1, best first."""
    return [
        Source(index=i, file_id=h.file_id, filename=h.filename, vector_store_id=h.vector_store_id,
               chunk_index=h.chunk_index, score=h.score, text=h.text)
        for i, h in enumerate(hits, start=1)
    ]


def sources_message(sources: Sequence[Source]) -> str:
    """The instruction and the numbered sources, as the model reads them."""
    if not sources:
        return INSTRUCTION + "\n\nSources: none were found."
    lines = [INSTRUCTION, "", "Sources:"]
    lines += [f"[{s.index}] {s.filename}: {s.text.strip()}" for s in sources]
    return "\n".join(lines)


async def fit_sources(
    sources: Sequence[Source], budget: int, count: Callable[[Sequence[Source]], Awaitable[int]], *, tries: int = 4
) -> tuple[list[Source], int]:
    """The best sources (a prefix of ``sources``) whose prompt ``count`` says is at most ``budget`` tokens,
    and that count. ``count`` is exact (the engine's tokenizer); a prompt over budget drops sources in
    proportion to the excess (each source's share estimated from its length) and is counted again, at most
    ``tries`` times, then sources go one at a time, down to none."""
    kept = list(sources)
    tokens = await count(kept)
    for _ in range(tries):
        if tokens <= budget or not kept:
            return kept, tokens
        sizes = [len(sources_message([s])) - len(INSTRUCTION) for s in kept]
        per_char = tokens / max(1, len(sources_message(kept)))
        excess = tokens - budget
        while kept and excess > 0:
            excess -= int(sizes.pop() * per_char) + 1
            kept.pop()
        tokens = await count(kept)
    while kept and tokens > budget:
        kept.pop()
        tokens = await count(kept)
    return kept, tokens
