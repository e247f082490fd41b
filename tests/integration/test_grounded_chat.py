"""Grounded chat and completions (``retrieval``) through the gateway and the fake engines."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.services.grounding import GroundingStep
from gateway.services.inference import InferenceService
from gateway.services.metering import MeterUsage
from gateway.services.pipeline import Pipeline
from retrieval.grounding import INSTRUCTION
from tests.fakes.vllm import MAX_MODEL_LEN
from tests.integration.conftest import CHAT_MODEL, Gateway, TenantKeys, make_tenant
from tests.integration.search_fixtures import WordsEmbedder, add_file, add_store

DOCS = {
    "ports.md": "The server listens on port 8443 by default; change it with the listen setting.",
    "backup.md": "Backups run every night and keep thirty days of snapshots in cold storage.",
    "billing.md": "Invoices are emailed on the first day of each month to the billing contact.",
}


@pytest.fixture
async def grounded(gateway: Gateway) -> AsyncIterator[WordsEmbedder]:
    """The gateway's inference service with the grounding step (as the app wires it), over a words embedder."""
    services = gateway.services
    saved = services.inference
    embedder = WordsEmbedder()
    pipeline = Pipeline(steps=(GroundingStep(services.db, embedder, services.client).step(),),
                        observers=(MeterUsage(services.meter),))
    services.inference = InferenceService(services.client, services.catalog, pipeline, shutdown=services.shutdown)
    yield embedder
    services.inference = saved


async def _seed(gateway: Gateway, tenant: TenantKeys, docs: dict[str, str] = DOCS) -> tuple[str, dict[str, str]]:
    tenant_id = uuid.UUID(tenant.tenant_id)
    async with gateway.services.db.connection() as conn:
        store = await add_store(conn, tenant_id)
        ids = {name: await add_file(conn, tenant_id, store, name, [text]) for name, text in docs.items()}
    return store, ids


def _chat(store: str, question: str = "Which port does the server listen on?", **extra: Any) -> dict[str, Any]:
    return {
        "model": CHAT_MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        "retrieval": {"vector_store_ids": [store], "max_num_results": 2},
        **extra,
    }


async def test_chat_answer_carries_sources_and_the_engine_sees_them(
    gateway: Gateway, tenant: TenantKeys, grounded: WordsEmbedder
) -> None:
    store, ids = await _seed(gateway, tenant)
    async with gateway.http(tenant.user_key) as http:
        answer = await http.post("/v1/chat/completions", json=_chat(store))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
    sources = body["sources"]
    assert [s["index"] for s in sources] == [1, 2]
    first = sources[0]
    assert (first["file_id"], first["filename"], first["vector_store_id"], first["chunk_index"]) == (
        ids["ports.md"], "ports.md", store, 0
    )
    assert first["text"] == DOCS["ports.md"] and 0 < first["score"] <= 1
    assert set(first) == {"index", "file_id", "filename", "vector_store_id", "chunk_index", "score", "text"}

    sent = msgspec.json.decode(gateway.chat.last_body or b"")
    assert "retrieval" not in sent
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "system", "user"]  # ours after the client's system message
    grounding = sent["messages"][1]["content"]
    assert grounding.startswith(INSTRUCTION)
    assert f"[1] ports.md: {DOCS['ports.md']}" in grounding
    assert sent["messages"][2]["content"] == "Which port does the server listen on?"
    # the question was embedded once, for the tenant and its key, as chat
    assert [c[0] for c in grounded.calls] == [["Which port does the server listen on?"]]
    assert grounded.calls[0][1] == uuid.UUID(tenant.tenant_id) and grounded.calls[0][3] == "chat"


async def test_stream_ends_with_a_sources_chunk_before_done(
    gateway: Gateway, tenant: TenantKeys, grounded: WordsEmbedder
) -> None:
    store, ids = await _seed(gateway, tenant)
    async with gateway.http(tenant.user_key) as http:
        answer = await http.post("/v1/chat/completions", json=_chat(store, stream=True))
    assert answer.status_code == 200
    events = [line[6:] for line in answer.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [msgspec.json.decode(e) for e in events[:-1]]
    last = chunks[-1]
    assert last["choices"] == [] and last["sources"][0]["file_id"] == ids["ports.md"]
    assert all("sources" not in c for c in chunks[:-1])
    assert {(c["id"], c["object"], c["created"], c["model"]) for c in chunks} == {
        (chunks[0]["id"], "chat.completion.chunk", chunks[0]["created"], CHAT_MODEL)
    }


async def test_sdk_extra_body_and_completions(gateway: Gateway, tenant: TenantKeys, grounded: WordsEmbedder) -> None:
    store, ids = await _seed(gateway, tenant)
    client = gateway.openai(tenant.user_key)
    completion = await client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "when do backups run"}],
        extra_body={"retrieval": {"vector_store_ids": [store], "max_num_results": 1}},
    )
    extra = completion.model_extra or {}
    assert [s["file_id"] for s in extra["sources"]] == [ids["backup.md"]]

    text = await client.completions.create(
        model=CHAT_MODEL, prompt="when are invoices emailed", max_tokens=5,
        extra_body={"retrieval": {"vector_store_ids": [store], "max_num_results": 1, "search_mode": "text"}},
    )
    assert [s["file_id"] for s in (text.model_extra or {})["sources"]] == [ids["billing.md"]]
    sent = msgspec.json.decode(gateway.chat.last_body or b"")
    assert sent["prompt"].startswith(INSTRUCTION) and sent["prompt"].endswith("\n\nwhen are invoices emailed")
    assert f"[1] billing.md: {DOCS['billing.md']}" in sent["prompt"] and "retrieval" not in sent


async def test_sources_are_trimmed_to_the_context_with_room_for_the_answer(
    gateway: Gateway, tenant: TenantKeys, grounded: WordsEmbedder
) -> None:
    # Five long sources of 300 words; the fake counts a word as a token and has a context of MAX_MODEL_LEN.
    docs = {f"long{i}.md": " ".join(["shared topic words"] * 100) + f" part {i}" for i in range(5)}
    store, _ = await _seed(gateway, tenant, docs)
    room = MAX_MODEL_LEN - 1000
    body = _chat(store, "shared topic words", max_tokens=room)
    body["retrieval"]["max_num_results"] = 5
    async with gateway.http(tenant.user_key) as http:
        answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    sources = answer.json()["sources"]
    assert 1 <= len(sources) < 5 and [s["index"] for s in sources] == list(range(1, len(sources) + 1))
    sent = msgspec.json.decode(gateway.chat.last_body or b"")
    prompt_words = sum(len(m["content"].split()) for m in sent["messages"])
    assert prompt_words <= MAX_MODEL_LEN - room
    assert all(f"[{s['index']}] {s['filename']}:" in sent["messages"][1]["content"] for s in sources)
    assert f"[{len(sources) + 1}]" not in sent["messages"][1]["content"]
    assert gateway.chat.path_counts["/tokenize"] >= 2  # counted exactly by the engine, then again after trimming


async def test_another_tenants_store_is_404_and_the_engine_is_not_called(
    gateway: Gateway, tenant: TenantKeys, grounded: WordsEmbedder
) -> None:
    store, _ = await _seed(gateway, tenant)
    other = await make_tenant(gateway)
    before = gateway.chat.request_count
    async with gateway.http(other.user_key) as http:
        for store_id in (store, "vs_nope", "nonsense"):
            answer = await http.post("/v1/chat/completions", json=_chat(store_id))
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["param"] == "retrieval.vector_store_ids"
    assert gateway.chat.request_count == before and grounded.calls == []


@pytest.mark.parametrize(
    ("retrieval", "param"),
    [
        ({}, "retrieval.vector_store_ids"),
        ({"vector_store_ids": []}, "retrieval.vector_store_ids"),
        ({"vector_store_ids": "vs_x"}, "retrieval.vector_store_ids"),
        ({"vector_store_ids": ["vs_x"], "max_num_results": 0}, "retrieval.max_num_results"),
        ({"vector_store_ids": ["vs_x"], "max_num_results": 51}, "retrieval.max_num_results"),
        ({"vector_store_ids": ["vs_x"], "filters": {"type": "eq"}}, "retrieval.filters.key"),
        ({"vector_store_ids": ["vs_x"], "search_mode": "magic"}, "retrieval.search_mode"),
        ({"vector_store_ids": ["vs_x"], "unknown": 1}, "retrieval"),
        ("vs_x", "retrieval"),
    ],
)
async def test_bad_retrieval_is_400(
    gateway: Gateway, tenant: TenantKeys, grounded: WordsEmbedder, retrieval: Any, param: str
) -> None:
    body = _chat("vs_x")
    body["retrieval"] = retrieval
    async with gateway.http(tenant.user_key) as http:
        answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_without_retrieval_the_body_goes_as_it_came(
    gateway: Gateway, tenant: TenantKeys, grounded: WordsEmbedder
) -> None:
    raw = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "hi", "name": "x"}], "max_tokens": 3}'
    async with gateway.http(tenant.user_key) as http:
        answer = await http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 200 and "sources" not in answer.json()
    assert gateway.chat.last_body == raw
    assert grounded.calls == [] and gateway.chat.path_counts["/tokenize"] == 0


async def test_the_app_wires_the_step_with_its_embedder(gateway: Gateway, tenant: TenantKeys) -> None:
    """No test double: the gateway's own pipeline, embedder (the fake embedding engine) and /tokenize."""
    store, ids = await _seed(gateway, tenant)  # the fake engine's vectors are the same hashed bag of words
    async with gateway.http(tenant.user_key) as http:
        answer = await http.post("/v1/chat/completions", json=_chat(store, "when do backups run at night"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["sources"][0]["file_id"] == ids["backup.md"]
    assert gateway.embed.path_counts["/v1/embeddings"] >= 1 and gateway.chat.path_counts["/tokenize"] >= 1
