"""The database-free parts of search and grounding: filter parsing, fusion, rewriting, sources, body edits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from gateway.auth.principal import Principal
from gateway.services.call import Call
from gateway.services.grounding import SourcesAnswer, SourcesStream
from retrieval.errors import InvalidRequest
from retrieval.filters import MAX_DEPTH, Comparison, Compound, InvalidFilter, parse_filter, to_sql
from retrieval.grounding import INSTRUCTION, Source, fit_sources, parse_retrieval, sources_message
from retrieval.search import fuse_rrf, fuse_weighted, rewrite_query


def test_filters_parse_nested_and_compile_to_parameters_only() -> None:
    flt = parse_filter({"type": "and", "filters": [
        {"type": "in", "key": "k'; DROP TABLE chunks; --", "value": ["a", 1]},
        {"type": "or", "filters": [{"type": "ne", "key": "b", "value": True}, {"type": "lt", "key": "n", "value": 3}]},
    ]})
    assert isinstance(flt, Compound) and isinstance(flt.filters[0], Comparison)
    condition, params = to_sql(flt)
    text = condition.as_string(None)
    assert "DROP" not in text and text.count("%s") == len(params)
    assert "k'; DROP TABLE chunks; --" in params and '["a",1]' in params


@pytest.mark.parametrize(
    ("flt", "param"),
    [
        ([], "filters"),
        ({"type": "eq", "key": "", "value": 1}, "filters.key"),
        ({"type": "eq", "key": "x" * 65, "value": 1}, "filters.key"),
        ({"type": "eq", "key": "a"}, "filters.value"),
        ({"type": "eq", "key": "a", "value": None}, "filters.value"),
        ({"type": "eq", "key": "a", "value": {"x": 1}}, "filters.value"),
        ({"type": "gt", "key": "a", "value": True}, "filters.value"),
        ({"type": "in", "key": "a", "value": []}, "filters.value"),
        ({"type": "nin", "key": "a", "value": [True]}, "filters.value[0]"),
        ({"type": "eq", "key": "a", "value": "x" * 513}, "filters.value"),
        ({"type": "eq", "key": "a", "value": "nul\x00"}, "filters.value"),
        ({"type": "eq", "key": "a\x00", "value": 1}, "filters.key"),
        ({"type": "eq", "key": "a", "value": 1, "extra": 2}, "filters"),
        ({"type": "xor", "filters": []}, "filters.type"),
        ({"type": "or", "filters": []}, "filters.filters"),
        ({"type": "or", "filters": [{"type": "eq", "key": "a", "value": 1}, 3]}, "filters.filters[1]"),
    ],
)
def test_bad_filters_name_their_part(flt: Any, param: str) -> None:
    with pytest.raises(InvalidFilter) as info:
        parse_filter(flt)
    assert info.value.param == param


def test_filters_nest_only_so_deep() -> None:
    flt: dict[str, Any] = {"type": "eq", "key": "a", "value": 1}
    for _ in range(MAX_DEPTH):
        flt = {"type": "and", "filters": [flt]}
    parse_filter(flt)
    with pytest.raises(InvalidFilter):
        parse_filter({"type": "and", "filters": [flt]})


def test_fusions_score_in_0_1_best_first() -> None:
    vector = [(1, 0.9), (2, 0.6), (3, 0.3)]
    text = [(3, 0.5), (4, 0.25)]
    weighted = fuse_weighted([vector], [text], 0.5)
    assert dict(weighted)[1] == 0.5 and dict(weighted)[3] == pytest.approx(0.5 * 0.3 / 0.9 + 0.5)
    assert [cid for cid, _ in weighted][:2] == [3, 1]  # top of text and a vector hit beats the vector's best alone
    rrf = fuse_rrf([vector, text], 60)
    assert rrf[0][0] == 3 and all(0 < s <= 1 for _, s in rrf)
    assert fuse_rrf([[(7, 0.1)], [(7, 0.2)]], 60) == [(7, 1.0)]
    assert fuse_weighted([], [], 0.5) == [] and fuse_rrf([[], []], 60) == []


def test_rewrite_keeps_identifiers_and_content_words() -> None:
    assert rewrite_query("What is the default port of the HTTP server?") == "default port HTTP server"
    assert rewrite_query("How do I fix ERR-4012 in v2.3.1?") == "fix ERR-4012 v2.3.1"
    assert rewrite_query("What is it?") == "What is it?"


def _sources(n: int, words: int = 10) -> list[Source]:
    return [Source(index=i, file_id=f"file-{i}", filename=f"f{i}.md", vector_store_id="vs_a", chunk_index=0,
                   score=1.0 - i / 100, text=" ".join(["w"] * words)) for i in range(1, n + 1)]


def test_sources_message_numbers_sources() -> None:
    text = sources_message(_sources(2, 2))
    assert text.startswith(INSTRUCTION) and text.endswith("[1] f1.md: w w\n[2] f2.md: w w")
    assert "none were found" in sources_message([])


async def test_fit_sources_keeps_the_best_that_fit() -> None:
    counted: list[int] = []

    async def count(kept: Sequence[Source]) -> int:
        counted.append(len(kept))
        return len(sources_message(kept).split())

    sources = _sources(10, 50)
    kept, tokens = await fit_sources(sources, 200, count)
    assert kept == sources[: len(kept)] and 1 <= len(kept) < 10 and tokens <= 200
    assert (await fit_sources(sources, 10_000, count))[0] == sources
    assert (await fit_sources(sources, 5, count))[0] == []
    assert len(counted) < 30


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{}", "retrieval.vector_store_ids"),
        (b'{"vector_store_ids": 1}', "retrieval.vector_store_ids"),
        (b'{"vector_store_ids": ["vs_a"], "score_threshold": 2}', "retrieval.score_threshold"),
        (b'{"vector_store_ids": ["vs_a"], "filters": {"type": "in", "key": "a", "value": 1}}',
         "retrieval.filters.value"),
        (b"[1]", "retrieval"),
    ],
)
def test_bad_retrieval_options(raw: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:  # InvalidRetrieval, or InvalidFilter for the filter
        parse_retrieval(raw)
    assert info.value.param == param


def test_sources_answer_and_stream_filters() -> None:
    sources = msgspec.json.encode(_sources(1, 1))
    answer = SourcesAnswer(sources).answer(b'{"id": "x", "choices": []}\n')
    assert msgspec.json.decode(answer)["sources"][0]["file_id"] == "file-1"
    assert msgspec.json.decode(SourcesAnswer(sources).answer(b"{}"))["sources"][0]["index"] == 1
    stream = SourcesStream(sources)
    event = b'data: {"id":"c1","object":"chat.completion.chunk","created":5,"model":"m","choices":[]}\n\n'
    assert stream.event(event) == event
    last = stream.before_done()
    assert last.startswith(b"data: ") and last.endswith(b"}\n\n")
    decoded = msgspec.json.decode(last[6:])
    assert (decoded["id"], decoded["object"], decoded["created"], decoded["model"], decoded["choices"]) == (
        "c1", "chat.completion.chunk", 5, "m", []
    )


def test_call_drops_a_field_and_keeps_the_rest() -> None:
    call = Call(Principal(uuid.uuid4(), "t", uuid.uuid4(), "user"), "chat.completions", "r", 0.0, datetime.now(UTC))
    call.body = b'{"model":"m","retrieval":{"vector_store_ids":["vs_a"]},"temperature":1e999,"messages":[]}'
    call.set_field("messages", b'[{"role":"user","content":"hi"}]')
    call.drop_field("retrieval")
    body = call.engine_body()
    assert b"retrieval" not in body and b"1e999" in body and b'"content":"hi"' in body


def test_hybrid_results_keep_each_arms_best_chunk() -> None:
    from retrieval.search import keep_leaders

    fused = [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6), (9, 0.3)]  # 9: the text arm's best, found by nothing else
    assert keep_leaders(fused[:3], fused, [1, 9], 3, 0.0) == [(1, 0.9), (2, 0.8), (9, 0.7)]
    assert keep_leaders(fused[:3], fused, [1, 2], 3, 0.0) == fused[:3]  # leaders already in: unchanged
    assert keep_leaders(fused[:2], fused, [1, 9], 3, 0.0) == [(1, 0.9), (2, 0.8), (9, 0.3)]  # room: its own score
    assert keep_leaders(fused[:3], fused, [1, 9], 3, 0.5) == fused[:3]  # under the threshold: not forced in
    assert keep_leaders(fused[:1], fused, [1, 9], 1, 0.0) == [(1, 0.9)]  # no place that is not a leader's
