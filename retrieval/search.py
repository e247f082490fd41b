"""Search over a tenant's chunks: by meaning (pgvector HNSW), by words (Postgres full text), or both fused.

One search (:func:`search`):

1. The stores are checked in a tenant transaction (a malformed, unknown or other tenant's id is a
   :class:`~retrieval.errors.VectorStoreNotFound`) and, at most once a minute, marked active
   (``last_active_at`` and so ``expires_at`` move on).
2. The query is embedded (vector and hybrid modes), outside any transaction.
3. In one tenant transaction: each arm fetches its candidates (ids and scores only), scoped by
   ``tenant_id`` and the store ids, with the attribute filter (``retrieval.filters``) in the same WHERE;
   the arms' lists are fused; the best ``max_num_results`` above the threshold are read whole, with their
   file names.

The vector arm orders by cosine distance. A scope (the stores asked for) the planner estimates at fewer
than ``exact_below`` chunks, or at less than ``index_min_share`` of the table, is searched exactly (the
``(tenant_id, vector_store_id)`` index, then a sort): a small store inside a big table gets its true k
best. A bigger scope walks the HNSW index with pgvector 0.8's iterative scan
(``hnsw.iterative_scan = relaxed_order``: when the filter removes most rows the index returns, the scan
goes on until it has enough, up to ``hnsw.max_scan_tuples``), forced, because the planner prices an
attribute filter at 1% of rows and would otherwise sort the whole scope.

The text arm ranks by cover density (``ts_rank_cd`` over the query's lexemes, divided by 1 + log of the chunk's
length) times the summed inverse document frequency (BM25's idf) of the query's lexemes the chunk holds, mapped
into 0..1 by ``r / (1 + r)``: cover density alone weighs every word alike, so a question's common words ("use",
"return") outranked the one rare word that names the answer. Lexemes are of the ``english`` configuration, the
one ``chunks.tsv`` is built with; how many chunks of the stores hold each (and how many chunks the stores have)
comes from ``store_lexemes`` (migration 0007, kept by triggers on ``chunks``), one indexed read instead of
counting chunks at search time. The candidates are the chunks holding the query's rarest lexemes (held by fewer
than ``COMMON_LEXEME`` chunks of the stores, the rarest first while their chunks add up to at most
``text_candidates``), or all of its lexemes when every one is common: a word in most chunks says little about any
of them, and ranking most of a store is what a text search costs. Words that hold digits or punctuation (error
codes, version numbers, file names) are not stemmed by that configuration, so identifiers match exactly. Inside a
tenant transaction Postgres applies a condition before the row-level security policy only if it is leakproof;
migration 0005 marks ``@@`` (``ts_match_vq``) so, which lets the GIN index on ``tsv`` find the matching rows
first (where the database role may not do that, text search scans the stores' rows instead: correct, slower).
Attribute filters sit in the same WHERE and, not being leakproof, are checked after the policy, on the rows an
index returns. In hybrid mode the two arms run at once on two connections when the pool has one idle.

Scores are in 0..1. Vector: the cosine similarity (negative ones as 0). Text: the rank above. Hybrid,
``minmax`` fusion (the default): each arm's scores mapped onto 0..1 between its worst and best candidate, then
``vector_weight * v + (1 - vector_weight) * t`` (0.5 : 0.5); ``weighted``: the same with each arm's scores
divided by its best; ``rrf``: the sum of ``1 / (rrf_k + rank)`` over the lists, divided by the most a chunk can
get. Whatever the fusion, each arm's best chunk keeps a place in the results (``keep_leaders``), so an exact
identifier only full text finds comes back. Measured on the labelled Python-docs set (77 questions, passages,
``python -m tests.bench.eval_fusion``), recall@5 / MRR@5: vector 0.857 / 0.665, text 0.870 / 0.685 (cover
density alone: 0.701 / 0.464), minmax 0.5 0.909 / 0.737 (0.6: 0.896 / 0.715), weighted 0.5 0.896 / 0.740.
The weight was chosen on the even questions (0.923 / 0.752 there); on the odd ones it gives 0.895 / 0.722, where
vector gives 0.842 / 0.652 and text 0.868 / 0.675. A dotted name (``errno.EAGAIN``) is indexed with its last part
too (migration 0008), so the bare identifier finds it: that took text from 0.844 / 0.677 and the hybrid from
0.883 / 0.723.
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from retrieval.embedding import Embedder, EmbeddingPurpose, Vector
from retrieval.errors import InvalidRequest, VectorStoreNotFound
from retrieval.filters import Filter, to_sql
from retrieval.store_files import touch_stores
from retrieval.tenancy import tenant_transaction

__all__ = [
    "MAX_NUM_RESULTS", "MAX_QUERIES", "MAX_QUERY_CHARS", "MAX_STORES", "Fusion", "SearchHit", "SearchMode",
    "SearchOptions", "SearchResult", "is_vector_store_id", "keep_leaders", "rewrite_query", "search", "search_chunks",
]

SearchMode = Literal["hybrid", "vector", "text"]
Fusion = Literal["minmax", "weighted", "rrf"]
SEARCH_MODES: tuple[SearchMode, ...] = ("hybrid", "vector", "text")

MAX_NUM_RESULTS = 50
MAX_QUERIES = 8  # strings in one query list
MAX_QUERY_CHARS = 4096  # per query string
MAX_STORES = 16  # stores one search may name (grounded chat: `retrieval.vector_store_ids`)
TOUCH_AFTER_S = 60  # a store's last_active_at moves at most this often

_STORE_ID = re.compile(r"vs_[A-Za-z0-9_-]{1,64}")


class VectorStoreExpired(InvalidRequest):
    """The store's ``expires_after`` passed: it keeps its files until the sweep removes it, but answers no search."""

    code = "vector_store_expired"


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    vector_store_id: str
    file_id: str
    filename: str
    chunk_index: int
    text: str
    attributes: dict[str, Any]
    score: float


class SearchResult(msgspec.Struct, frozen=True, kw_only=True):
    search_query: list[str]  # the queries as searched (rewritten, if asked)
    hits: list[SearchHit]


@dataclass(frozen=True, slots=True)
class SearchOptions:
    """How search works, from the settings: mode, fusion and the index's knobs."""

    mode: SearchMode = "hybrid"
    fusion: Fusion = "minmax"  # measured best on the labelled set (tests/bench/eval_fusion.py)
    vector_weight: float = 0.5  # minmax and weighted fusion: the vector arm's share
    rrf_k: int = 60
    candidates: int = 40  # each arm's list: at least this many, and twice max_num_results
    ef_search: int = 100  # hnsw.ef_search: candidates the index keeps while it walks
    exact_below: int = 2_000  # a scope of fewer chunks (estimated) is searched exactly, not by the index
    index_min_share: float = 0.01  # ... and so is a scope of less than this share of all chunks
    text_candidates: int = 1_000  # the text arm ranks about this many chunks at most (its rarest lexemes' chunks)
    parallel_arms: bool = True  # hybrid: the text arm on a second connection, when one is idle


DEFAULT_OPTIONS = SearchOptions()


def is_vector_store_id(value: str) -> bool:
    return _STORE_ID.fullmatch(value) is not None


# -- the query ---------------------------------------------------------------------------------------------

_FILLER = (
    "a an the is are was were be been do does did can could should would will shall may might must i me my we "
    "our you your please tell explain show find give what which who whom whose when where why how about of "
    "for to in on at by with from into there this that these those it its"
)
_QUESTION_WORDS = frozenset(_FILLER.split())
_TOKEN = re.compile(r"\S+")
_EDGE_PUNCT = "?!.,;:\"'()[]{}"


def rewrite_query(query: str) -> str:
    """A deterministic rewrite for search (``rewrite_query: true``): the question's filler words and edge
    punctuation dropped, identifiers and content words kept in order. ``"What is the default port of
    the HTTP server?"`` -> ``"default port HTTP server"``. A query of filler words alone is kept as it is."""
    kept = []
    for token in _TOKEN.findall(query):
        word = token.strip(_EDGE_PUNCT)
        if word and word.lower() not in _QUESTION_WORDS:
            kept.append(word)
    return " ".join(kept) if kept else query.strip()


def check_queries(query: str | Sequence[str], param: str = "query") -> list[str]:
    """The query strings of a request: a string or a list of 1..MAX_QUERIES strings, none blank or too long."""
    queries = [query] if isinstance(query, str) else list(query)
    if not queries or len(queries) > MAX_QUERIES:
        raise InvalidRequest(f"'{param}' is a string or a list of 1 to {MAX_QUERIES} strings.", param=param)
    for i, text in enumerate(queries):
        where = param if isinstance(query, str) else f"{param}[{i}]"
        if not text.strip():
            raise InvalidRequest(f"'{where}' must not be empty.", param=where)
        if "\x00" in text:  # Postgres text holds no NUL
            raise InvalidRequest(f"'{where}' must not contain NUL characters.", param=where)
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidRequest(f"'{where}' is longer than {MAX_QUERY_CHARS} characters.", param=where)
    return queries


# -- the stores --------------------------------------------------------------------------------------------

_STORES = """
SELECT id, expires_at IS NOT NULL AND expires_at <= now(), last_active_at < now() - make_interval(secs => %s)
FROM vector_stores WHERE tenant_id = %s AND id = ANY(%s)
"""



async def check_stores(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, store_ids: Sequence[str], param: str = "vector_store_id"
) -> None:
    """Raise unless every store is the tenant's and live; mark the ones idle for a minute active."""
    if not store_ids or len(store_ids) > MAX_STORES:
        raise InvalidRequest(f"Name 1 to {MAX_STORES} vector stores.", param=param)
    for store_id in store_ids:
        if not is_vector_store_id(store_id):
            raise _not_found(store_id, param)
    wanted = list(dict.fromkeys(store_ids))
    async with tenant_transaction(pool, tenant_id, pipelined=True) as conn:
        cur = await conn.execute(_STORES, (TOUCH_AFTER_S, tenant_id, wanted))
        rows = await cur.fetchall()
        found = {row[0]: row for row in rows}
        for store_id in wanted:
            if store_id not in found:
                raise _not_found(store_id, param)
            if found[store_id][1]:
                raise VectorStoreExpired(f"Vector store {store_id} has expired.", param=param)
        stale = [row[0] for row in rows if row[2]]
        if stale:
            await touch_stores(conn, tenant_id, stale)


def _not_found(store_id: str, param: str) -> VectorStoreNotFound:
    return VectorStoreNotFound(f"No vector store found with id '{store_id[:80]}'.", param=param)


# -- the arms ----------------------------------------------------------------------------------------------

# The index path: pgvector's iterative scan, and no plan that sorts (so the planner cannot fall back to a
# sequential scan and sort on its misestimate of an attribute filter, which it prices at 1% of rows).
_INDEX_PATH = (
    "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.ef_search', %s, true),"
    " set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true)"
)
_RESET_PATH = "SELECT set_config('enable_sort', 'on', true), set_config('enable_seqscan', 'on', true)"

_SCOPE_ESTIMATE = "EXPLAIN (FORMAT JSON) SELECT 1 FROM chunks WHERE tenant_id = %s AND vector_store_id = ANY(%s)"
_TABLE_ESTIMATE = "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'chunks'::regclass"

_VECTOR = """
SELECT id, 1 - (embedding <=> %s::vector) AS similarity FROM chunks
WHERE tenant_id = %s AND vector_store_id = ANY(%s){filter}
ORDER BY embedding <=> %s::vector LIMIT %s
"""

# The text arm, in two statements so that each tsquery reaches the planner as a value (the GIN index serves
# `@@` inside a tenant transaction since migration 0005 made it leakproof). First the query's lexemes (english
# configuration: stemmed, stop words gone) with how many chunks of the stores hold each, and the stores' chunk
# count (lexeme ''), all from `store_lexemes` (migration 0007, kept by triggers on chunks); then the candidates,
# which must hold one of the rarer lexemes (a word in most chunks tells little and would make most chunks
# candidates: ranking them is what costs), or all of the query's lexemes when every one is common, ranked by
# cover density over every lexeme (ts_rank_cd, divided by 1 + log of the chunk's length) times the summed
# inverse document frequency of the lexemes the chunk holds, mapped into 0..1 by r / (1 + r).
_LEXEME_STATS = """
SELECT l.lexeme, coalesce(sum(s.chunks), 0)::bigint
FROM (SELECT lexeme FROM (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', %s)) LIMIT 64) AS q
      UNION ALL SELECT '') AS l
LEFT JOIN store_lexemes s ON s.lexeme = l.lexeme AND s.vector_store_id = ANY(%s) AND s.tenant_id = %s
GROUP BY l.lexeme
"""
_COVERAGE_TERM = "CASE WHEN tsv @@ %s::tsquery THEN %s ELSE 0 END"
_TEXT = """
SELECT id, ts_rank_cd(tsv, %s::tsquery, 1) * ({coverage}) AS rank FROM chunks
WHERE tsv @@ %s::tsquery AND tenant_id = %s AND vector_store_id = ANY(%s){filter}
ORDER BY rank DESC, id LIMIT %s
"""
COMMON_LEXEME = 500  # a lexeme held by this many chunks of the stores searched, or more, is common


def _operand(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


_DETAILS = """
SELECT c.id, c.vector_store_id, c.file_id, f.filename, c.chunk_index, c.text, c.attributes
FROM chunks c JOIN files f ON f.id = c.file_id AND f.tenant_id = c.tenant_id
WHERE c.tenant_id = %s AND c.id = ANY(%s)
"""

_Ranked = list[tuple[int, float]]  # (chunk id, score), best first


async def _use_index(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_ids: list[str], options: SearchOptions
) -> bool:
    """Whether the vector arm walks the HNSW index rather than scanning the stores' chunks exactly.

    Exact is right for a scope of a few thousand chunks (the planner's estimate, from the statistics of
    ``tenant_id`` and ``vector_store_id``), and for any scope so small a share of the table that the index
    would walk past ``hnsw.max_scan_tuples`` before it met enough of its chunks. Else the index, forced
    (see ``_INDEX_PATH``)."""
    scope_cur = await conn.execute(_SCOPE_ESTIMATE, (tenant_id, store_ids))
    table_cur = await conn.execute(_TABLE_ESTIMATE)  # in one round trip with the scope's, in a pipeline
    row = await scope_cur.fetchone()
    scope = float(row[0][0]["Plan"]["Plan Rows"]) if row else 0.0
    if scope <= options.exact_below:
        return False
    total = await table_cur.fetchone()
    return not total or scope >= options.index_min_share * float(total[0])


def _vector_ranked(rows: Sequence[tuple[Any, ...]]) -> _Ranked:
    ranked = [(int(row[0]), max(0.0, min(1.0, float(row[1])))) for row in rows]
    ranked.sort(key=lambda item: -item[1])  # relaxed_order: the index may hand them slightly out of order
    return ranked


async def _text_arm(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, store_ids: list[str], text: str,
    where: tuple[sql.Composable, list[Any]], limit: int, options: SearchOptions,
) -> _Ranked:
    cur = await conn.execute(_LEXEME_STATS, (text, store_ids, tenant_id))
    held = {row[0]: int(row[1]) for row in await cur.fetchall()}
    total = max(held.pop("", 0), 1)
    if not held:
        return []
    operands = {lexeme: _operand(lexeme) for lexeme in held}
    # The candidates: chunks holding one of the rarest lexemes, the rarest first while their chunks add up to
    # at most `text_candidates` (one at least); all the lexemes at once when every one is common.
    rare: list[str] = []
    budget = 0
    for lexeme, n in sorted(held.items(), key=lambda item: (item[1], item[0])):
        if n >= COMMON_LEXEME or (rare and budget + n > options.text_candidates):
            break
        rare.append(operands[lexeme])
        budget += n
    candidates = " | ".join(rare) if rare else " & ".join(operands.values())
    weights: list[str | float] = []  # (operand, idf) as BM25 weighs a term: rarer in the stores, more telling
    for lexeme, n in held.items():
        weights.extend((operands[lexeme], math.log(1.0 + (total - n + 0.5) / (n + 0.5))))
    coverage = sql.SQL(" + ").join([sql.SQL(_COVERAGE_TERM)] * len(held))
    condition, params = where
    query = sql.SQL(_TEXT).format(coverage=coverage, filter=condition)
    cur = await conn.execute(
        query, (" | ".join(operands.values()), *weights, candidates, tenant_id, store_ids, *params, limit)
    )
    return [(int(r[0]), float(r[1]) / (1.0 + float(r[1]))) for r in await cur.fetchall()]


def _where(filters: Filter | None) -> tuple[sql.Composable, list[Any]]:
    if filters is None:
        return sql.SQL(""), []
    condition, params = to_sql(filters, "attributes")
    return sql.SQL(" AND {}").format(condition), params


# -- fusion ------------------------------------------------------------------------------------------------


def _best_scores(lists: Sequence[_Ranked]) -> dict[int, float]:
    """Each chunk's best score over the lists of one arm (one list per query)."""
    best: dict[int, float] = {}
    for ranked in lists:
        for chunk_id, score in ranked:
            if score > best.get(chunk_id, -1.0):
                best[chunk_id] = score
    return best


def fuse_weighted(vector_lists: Sequence[_Ranked], text_lists: Sequence[_Ranked], vector_weight: float) -> _Ranked:
    """Normalised-score fusion: each arm's best score per chunk over its lists, divided by the arm's best
    score (its theoretical least is 0), then mixed ``vector_weight : 1 - vector_weight``."""
    fused: dict[int, float] = {}
    for weight, lists in ((vector_weight, vector_lists), (1.0 - vector_weight, text_lists)):
        best = _best_scores(lists)
        top = max(best.values(), default=0.0)
        if top <= 0.0:
            continue
        for chunk_id, score in best.items():
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight * score / top
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def fuse_minmax(vector_lists: Sequence[_Ranked], text_lists: Sequence[_Ranked], vector_weight: float) -> _Ranked:
    """Min-max fusion: each arm's best score per chunk over its lists, mapped onto 0..1 between the arm's worst
    and best candidate, then mixed ``vector_weight : 1 - vector_weight``; a chunk an arm did not find gets 0
    from it. Cosine similarities of one query bunch together (0.4-0.7 for this model); spread out, they weigh
    as much as the text arm's ranks, which vary far more."""
    fused: dict[int, float] = {}
    for weight, lists in ((vector_weight, vector_lists), (1.0 - vector_weight, text_lists)):
        best = _best_scores(lists)
        if not best:
            continue
        top, low = max(best.values()), min(best.values())
        span = top - low
        for chunk_id, score in best.items():
            share = (score - low) / span if span > 0 else 1.0
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight * share
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def fuse_rrf(lists: Sequence[_Ranked], k: int) -> _Ranked:
    """Reciprocal rank fusion: ``sum(1 / (k + rank))`` over the lists (rank from 1), divided by its most."""
    lists = [ranked for ranked in lists if ranked]
    if not lists:
        return []
    fused: dict[int, float] = {}
    for ranked in lists:
        for rank, (chunk_id, _) in enumerate(ranked, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (k + rank)
    most = len(lists) / (k + 1)
    return sorted(((cid, score / most) for cid, score in fused.items()), key=lambda item: (-item[1], item[0]))


def fuse(
    mode: SearchMode, vector_lists: Sequence[_Ranked], text_lists: Sequence[_Ranked], options: SearchOptions
) -> _Ranked:
    if mode == "vector":
        return fuse_weighted(vector_lists, (), 1.0) if len(vector_lists) > 1 else _scores_as_they_are(vector_lists)
    if mode == "text":
        return _scores_as_they_are(text_lists) if len(text_lists) == 1 else _best_of(text_lists)
    if options.fusion == "rrf":
        return fuse_rrf([*vector_lists, *text_lists], options.rrf_k)
    if options.fusion == "minmax":
        return fuse_minmax(vector_lists, text_lists, options.vector_weight)
    return fuse_weighted(vector_lists, text_lists, options.vector_weight)


def keep_leaders(
    ranked: _Ranked, fused: _Ranked, leaders: Sequence[int], limit: int, score_threshold: float
) -> _Ranked:
    """Hybrid results always hold each arm's best chunk (above the threshold): a chunk only full text finds (an
    exact identifier, an error code) must come back even when the vector arm's many near misses outscore it.
    A missing leader takes the place of the last chunk that is not a leader, at that chunk's score."""
    scores = dict(fused)
    result = list(ranked)
    for leader in dict.fromkeys(leaders):
        if any(cid == leader for cid, _ in result) or scores.get(leader, 0.0) < score_threshold:
            continue
        if len(result) < limit:
            result.append((leader, scores[leader]))
        else:
            place = next((i for i in range(len(result) - 1, -1, -1) if result[i][0] not in leaders), None)
            if place is None:
                continue
            result[place] = (leader, result[place][1])
        result.sort(key=lambda item: (-item[1], item[0]))
    return result


def _scores_as_they_are(lists: Sequence[_Ranked]) -> _Ranked:
    return list(lists[0]) if lists else []


def _best_of(lists: Sequence[_Ranked]) -> _Ranked:
    return sorted(_best_scores(lists).items(), key=lambda item: (-item[1], item[0]))


# -- search ------------------------------------------------------------------------------------------------


async def _vector_lists(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, stores: list[str], vectors: Sequence[Vector],
    where: tuple[sql.Composable, list[Any]], limit: int, options: SearchOptions,
) -> list[_Ranked]:
    index = await _use_index(conn, tenant_id, stores, options)
    if index:
        await conn.execute(_INDEX_PATH, (str(options.ef_search),))
    condition, params = where
    query = sql.SQL(_VECTOR).format(filter=condition)
    # Every query is sent before any answer is read: in a pipelined transaction, the settings, the searches and
    # the reset travel in one round trip.
    cursors = [await conn.execute(query, (vector, tenant_id, stores, *params, vector, limit)) for vector in vectors]
    if index:
        await conn.execute(_RESET_PATH)
    return [_vector_ranked(await cur.fetchall()) for cur in cursors]


async def _text_lists(
    conn: AsyncConnection[Any], tenant_id: uuid.UUID, stores: list[str], queries: Sequence[str],
    where: tuple[sql.Composable, list[Any]], limit: int, options: SearchOptions,
) -> list[_Ranked]:
    return [await _text_arm(conn, tenant_id, stores, text, where, limit, options) for text in queries]


async def _text_lists_apart(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, stores: list[str], queries: Sequence[str],
    where: tuple[sql.Composable, list[Any]], limit: int, options: SearchOptions,
) -> list[_Ranked]:
    """The text arm in a tenant transaction of its own, to run while the vector arm runs on another."""
    async with tenant_transaction(pool, tenant_id, pipelined=True) as conn:
        return await _text_lists(conn, tenant_id, stores, queries, where, limit, options)


def _idle_connection(pool: AsyncConnectionPool[Any]) -> bool:
    """Whether ``pool`` has a connection idle now and nobody waiting for one: a second connection for the text
    arm then waits on nothing (requests that each held one connection and waited for another could starve the
    pool)."""
    stats = pool.get_stats()
    return stats.get("pool_available", 0) > 0 and stats.get("requests_waiting", 0) == 0


def _rank(
    mode: SearchMode, vector_lists: list[_Ranked], text_lists: list[_Ranked], max_num_results: int,
    score_threshold: float, options: SearchOptions,
) -> _Ranked:
    fused = [(cid, round(score, 6)) for cid, score in fuse(mode, vector_lists, text_lists, options)]
    ranked = [(cid, score) for cid, score in fused if score >= score_threshold][:max_num_results]
    if mode == "hybrid":
        leaders = [ranked_list[0][0] for ranked_list in (*vector_lists, *text_lists) if ranked_list]
        ranked = keep_leaders(ranked, fused, leaders, max_num_results, score_threshold)
    return ranked


async def search_chunks(
    pool: AsyncConnectionPool[Any], tenant_id: uuid.UUID, store_ids: Sequence[str], *, queries: Sequence[str],
    vectors: Sequence[Vector], filters: Filter | None = None, max_num_results: int = 10,
    score_threshold: float = 0.0, mode: SearchMode = "hybrid", options: SearchOptions = DEFAULT_OPTIONS,
) -> list[SearchHit]:
    """The best chunks of the tenant's ``store_ids`` (already checked) for ``queries`` (text arm) and their
    ``vectors`` (vector arm; empty in text mode), best first, none scoring under ``score_threshold``.

    In hybrid mode the text arm runs on a second connection, in a tenant transaction of its own, while the
    vector arm runs on the first, when the pool has one idle (else after it, on the first)."""
    stores = list(dict.fromkeys(store_ids))
    limit = max(options.candidates, 2 * max_num_results)
    where = _where(filters)
    arms = (tenant_id, stores)
    vector_lists: list[_Ranked] = []
    text_lists: list[_Ranked] = []
    async with tenant_transaction(pool, tenant_id, pipelined=True) as conn:
        apart = None
        if mode == "hybrid" and options.parallel_arms and _idle_connection(pool):
            apart = asyncio.ensure_future(_text_lists_apart(pool, *arms, queries, where, limit, options))
        try:
            if mode != "text":
                vector_lists = await _vector_lists(conn, *arms, vectors, where, limit, options)
        except BaseException:
            if apart is not None:
                apart.cancel()
            raise
        if apart is not None:
            text_lists = await apart
        elif mode != "vector":
            text_lists = await _text_lists(conn, *arms, queries, where, limit, options)
        ranked = _rank(mode, vector_lists, text_lists, max_num_results, score_threshold, options)
        if not ranked:
            return []
        cur = await conn.execute(_DETAILS, (tenant_id, [cid for cid, _ in ranked]))
        rows = {row[0]: row for row in await cur.fetchall()}
    hits = []
    for chunk_id, score in ranked:
        row = rows.get(chunk_id)
        if row is None:  # removed between the two reads (a detach): not a result any more
            continue
        hits.append(SearchHit(
            vector_store_id=row[1], file_id=row[2], filename=row[3], chunk_index=row[4], text=row[5],
            attributes=row[6], score=score,
        ))
    return hits


async def search(
    pool: AsyncConnectionPool[Any], embedder: Embedder, tenant_id: uuid.UUID, store_ids: Sequence[str],
    query: str | Sequence[str], *, key_id: uuid.UUID | None, filters: Filter | None = None,
    max_num_results: int = 10, score_threshold: float = 0.0, rewrite: bool = False, mode: SearchMode | None = None,
    options: SearchOptions = DEFAULT_OPTIONS, purpose: EmbeddingPurpose = "search",
    store_param: str = "vector_store_id", query_param: str = "query",
) -> SearchResult:
    """Check the stores, embed the query (unless ``mode`` is ``text``) metered to the tenant, and search."""
    if not 1 <= max_num_results <= MAX_NUM_RESULTS:
        raise InvalidRequest(f"max_num_results must be between 1 and {MAX_NUM_RESULTS}.", param="max_num_results")
    if not 0.0 <= score_threshold <= 1.0:
        raise InvalidRequest("score_threshold must be between 0 and 1.", param="ranking_options.score_threshold")
    queries = check_queries(query, query_param)
    if rewrite:
        queries = [rewrite_query(text) for text in queries]
    mode = mode or options.mode
    await check_stores(pool, tenant_id, store_ids, store_param)
    vectors: list[Vector] = []
    if mode != "text":
        vectors = (await embedder.embed(queries, tenant_id=tenant_id, key_id=key_id, purpose=purpose)).vectors
    hits = await search_chunks(
        pool, tenant_id, store_ids, queries=queries, vectors=vectors, filters=filters,
        max_num_results=max_num_results, score_threshold=score_threshold, mode=mode, options=options,
    )
    return SearchResult(search_query=queries, hits=hits)
