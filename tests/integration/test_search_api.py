"""POST /v1/vector_stores/{id}/search through the gateway: the SDK's call, OpenAI's shapes, errors, isolation."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.integration.conftest import Gateway, TenantKeys, make_tenant
from tests.integration.search_fixtures import WordsEmbedder, add_file, add_store, as_pgvector, random_unit

DOCS = {
    "ports.md": "The server listens on port 8443 by default; change it with the listen setting.",
    "backup.md": "Backups run every night and keep thirty days of snapshots in cold storage.",
    "errors.md": "ERR-7731 means the upload token expired before the upload finished.",
}


@pytest.fixture
async def embedder(gateway: Gateway) -> AsyncIterator[WordsEmbedder]:
    """The gateway's query embedder for the test: a bag of words agreeing with the seeded chunks' vectors."""
    services = gateway.services
    saved = services.embedder
    services.embedder = words = WordsEmbedder()
    yield words
    services.embedder = saved


async def _seed(gateway: Gateway, tenant: TenantKeys) -> tuple[str, dict[str, str]]:
    tenant_id = uuid.UUID(tenant.tenant_id)
    async with gateway.services.db.connection() as conn:
        store = await add_store(conn, tenant_id)
        ids = {}
        for i, (name, text) in enumerate(DOCS.items()):
            vectors = [as_pgvector(random_unit(random.Random(i)))] if name == "errors.md" else None
            ids[name] = await add_file(conn, tenant_id, store, name, [text], {"kind": name.split(".")[0], "n": i},
                                       vectors=vectors)
    return store, ids


async def test_sdk_search_answers_openais_page(gateway: Gateway, tenant: TenantKeys, embedder: WordsEmbedder) -> None:
    store, ids = await _seed(gateway, tenant)
    client = gateway.openai(tenant.user_key)  # any tenant key may search
    page = await client.vector_stores.search(store, query="which port does the server listen on", max_num_results=2)
    results = page.data
    assert results[0].file_id == ids["ports.md"] and results[0].filename == "ports.md"
    assert results[0].attributes == {"kind": "ports", "n": 0}
    assert results[0].content[0].type == "text" and "8443" in results[0].content[0].text
    assert 0 < results[0].score <= 1 and len(results) <= 2
    # the query embedding is metered to the tenant and the key that searched
    assert embedder.calls[-1][1] == uuid.UUID(tenant.tenant_id) and embedder.calls[-1][3] == "search"

    async with gateway.http(tenant.user_key) as http:
        raw = (await http.post(f"/v1/vector_stores/{store}/search", json={"query": "ERR-7731"})).json()
    assert raw["object"] == "vector_store.search_results.page"
    assert raw["search_query"] == ["ERR-7731"] and raw["has_more"] is False and raw["next_page"] is None
    # hybrid by default: the code only full text finds comes back (text's best always has a place)
    assert ids["errors.md"] in [item["file_id"] for item in raw["data"]]


async def test_filters_threshold_modes_and_rewrite(
    gateway: Gateway, tenant: TenantKeys, embedder: WordsEmbedder
) -> None:
    store, ids = await _seed(gateway, tenant)
    async with gateway.http(tenant.user_key) as http:
        async def files(**body: Any) -> list[str]:
            answer = await http.post(f"/v1/vector_stores/{store}/search", json={"query": "server backups", **body})
            assert answer.status_code == 200, answer.text
            return [item["file_id"] for item in answer.json()["data"]]

        flt = {"type": "or", "filters": [{"type": "in", "key": "kind", "value": ["backup"]},
                                         {"type": "gte", "key": "n", "value": 2}]}
        assert set(await files(filters=flt)) <= {ids["backup.md"], ids["errors.md"]}
        assert ids["ports.md"] not in await files(filters={"type": "nin", "key": "kind", "value": ["ports"]})
        assert await files(ranking_options={"score_threshold": 1.0, "ranker": "none"}, search_mode="vector") == []
        assert set(await files(search_mode="text")) == {ids["backup.md"], ids["ports.md"]}  # words in common only
        answer = await http.post(f"/v1/vector_stores/{store}/search",
                                 json={"query": "What is the port of the server?", "rewrite_query": True})
        assert answer.json()["search_query"] == ["port server"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "query"),
        ({"query": 3}, "query"),
        ({"query": ""}, "query"),
        ({"query": "nul\u0000"}, "query"),
        ({"query": "x", "filters": {"type": "eq", "key": "k", "value": "\u0000"}}, "filters.value"),
        ({"query": "x", "max_num_results": 0}, "max_num_results"),
        ({"query": "x", "max_num_results": 51}, "max_num_results"),
        ({"query": "x", "ranking_options": {"score_threshold": 2}}, "ranking_options.score_threshold"),
        ({"query": "x", "filters": {"type": "eq", "key": "k"}}, "filters.value"),
        ({"query": "x", "filters": {"type": "like", "key": "k", "value": 1}}, "filters.type"),
        ({"query": "x", "filters": {"type": "and", "filters": [{"type": "in", "key": "k", "value": "a"}]}},
         "filters.filters[0].value"),
        ({"query": "x", "search_mode": "fuzzy"}, "search_mode"),
        ({"query": "x", "surprise": 1}, None),
    ],
)
async def test_bad_bodies_are_400_in_openais_shape(
    gateway: Gateway, tenant: TenantKeys, embedder: WordsEmbedder, body: dict[str, Any], param: str | None
) -> None:
    store, _ = await _seed(gateway, tenant)
    async with gateway.http(tenant.user_key) as http:
        answer = await http.post(f"/v1/vector_stores/{store}/search", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


async def test_another_tenants_store_is_404_for_every_id_form(
    gateway: Gateway, tenant: TenantKeys, embedder: WordsEmbedder
) -> None:
    store, _ = await _seed(gateway, tenant)
    other = await make_tenant(gateway)
    async with gateway.http(other.user_key) as http:
        for store_id in (store, "vs_missing", "file-abc", "x" * 300, "%00"):
            answer = await http.post(f"/v1/vector_stores/{store_id}/search", json={"query": "port"})
            assert answer.status_code == 404, (store_id, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"
    assert embedder.calls == []
    with pytest.raises(openai.NotFoundError):
        await gateway.openai(other.admin_key).vector_stores.search(store, query="port")
    async with gateway.http() as anonymous:
        assert (await anonymous.post(f"/v1/vector_stores/{store}/search", json={"query": "port"})).status_code == 401
