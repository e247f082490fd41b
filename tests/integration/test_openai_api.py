"""The OpenAI API through the gateway, driven by the official ``openai`` SDK, unmodified."""

from __future__ import annotations

import asyncio

import msgspec
import openai
import pytest

from tests.integration.conftest import CHAT_MODEL, EMBED_MODEL, Gateway, TenantKeys


async def usage_rows(gw: Gateway, tenant_id: str) -> list[tuple[object, ...]]:
    await gw.services.meter.flush()
    async with gw.services.db.connection() as conn:
        cur = await conn.execute(
            "SELECT endpoint, model, stream, status_code, error_code, prompt_tokens, completion_tokens,"
            " request_id FROM usage_events WHERE tenant_id = %s ORDER BY id",
            (tenant_id,),
        )
        return list(await cur.fetchall())


async def test_models_lists_chat_and_embedding_models_without_engine_details(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    client = gateway.openai(tenant.user_key)
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert ids == sorted([CHAT_MODEL, EMBED_MODEL])
    dumped = models.data[0].model_dump()
    assert "root" not in dumped and dumped["owned_by"] == "tenantgate"
    one = await client.models.retrieve(CHAT_MODEL)
    assert one.id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_chat_completion_non_streaming_passes_engine_answer_and_meters_it(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    client = gateway.openai(tenant.user_key)
    raw = await client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=5
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    assert raw.headers["content-type"] == "application/json"
    assert int(raw.headers["content-length"]) == len(raw.content)
    # the body reached the engine byte for byte
    sent = msgspec.json.decode(gateway.chat.last_body or b"{}")
    assert sent["messages"] == [{"role": "user", "content": "Say hi"}] and sent["max_tokens"] == 5
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert rows == [("chat.completions", CHAT_MODEL, False, 200, None, completion.usage.prompt_tokens, 5,
                     request_id)]


async def test_streaming_chat_without_usage_request_still_meters_and_hides_usage_chunk(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    client = gateway.openai(tenant.user_key)
    stream = await client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=4, stream=True
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 4
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    forwarded = msgspec.json.decode(gateway.chat.last_body or b"{}")
    assert forwarded["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[0], r[2], r[3], r[6]) for r in rows] == [("chat.completions", True, 200, 4)]


async def test_streaming_chat_with_include_usage_gets_usage_chunk(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.user_key)
    raw = await client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    stream = raw.parse()
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


async def test_streaming_passes_chunks_as_they_arrive(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.chunk_delay = 0.3
    client = gateway.openai(tenant.user_key)
    loop = asyncio.get_running_loop()
    start = loop.time()
    stream = await client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=5, stream=True
    )
    first_at = None
    async for _chunk in stream:
        if first_at is None:
            first_at = loop.time() - start
    total = loop.time() - start
    assert first_at is not None
    # five chunks 0.3 s apart: the first must arrive long before the last (nothing buffered whole)
    assert total - first_at > 0.9


async def test_completions_and_streaming_completions(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.user_key)
    done = await client.completions.create(model=CHAT_MODEL, prompt="Once upon", max_tokens=3)
    assert done.object == "text_completion" and done.choices[0].text
    stream = await client.completions.create(model=CHAT_MODEL, prompt="Once upon", max_tokens=3, stream=True)
    texts = [c.choices[0].text async for c in stream if c.choices]
    assert len("".join(texts).split()) == 3


async def test_embeddings(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.user_key)
    result = await client.embeddings.create(model=EMBED_MODEL, input=["a cat", "a dog"])
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.usage.prompt_tokens > 0
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert [(r[0], r[3]) for r in rows] == [("embeddings", 200)]


async def test_bad_key_missing_key_and_unknown_model_raise_typed_sdk_errors(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    bad = gateway.openai("sk-tg-AAAAAAAAAAAA-" + "B" * 40)
    with pytest.raises(openai.AuthenticationError) as exc:
        await bad.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}])
    assert exc.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await gateway.openai("not-a-key").models.list()
    client = gateway.openai(tenant.user_key)
    with pytest.raises(openai.NotFoundError) as nf:
        await client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        await client.chat.completions.create(model=CHAT_MODEL, messages=[])
    assert br.value.param == "messages"
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model=CHAT_MODEL, input="chat models do not embed")


async def test_engine_error_body_is_normalized_to_openai_shape(gateway: Gateway, tenant: TenantKeys) -> None:
    gateway.chat.faults.status = 400
    gateway.chat.faults.body = (
        b'{"error": {"message": "max_tokens is too large", "type": "BadRequestError", "param": "max_tokens",'
        b' "code": 400}}'
    )
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": [
            {"role": "user", "content": "x"}]})
    assert resp.status_code == 400
    assert resp.json() == {"error": {"message": "max_tokens is too large", "type": "invalid_request_error",
                                     "param": "max_tokens", "code": None}}


async def test_hostile_and_unknown_model_names_are_metered_under_one_label(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    """A client's model name becomes a usage row only once an engine serves it: rows stay bounded."""
    async with gateway.http(tenant.user_key) as http:
        for model in ("bad\x00model", "x" * 5000, "'; DROP TABLE usage_events; --", "gpt-nope"):
            resp = await http.post("/v1/chat/completions", json={"model": model, "messages": [
                {"role": "user", "content": "x"}]})
            assert resp.status_code == 404
    rows = await usage_rows(gateway, tenant.tenant_id)  # flushes: must not raise
    assert [(r[1], r[3], r[4]) for r in rows] == [("unknown", 404, "model_not_found")] * 4


async def test_direct_and_litestar_routed_paths_serve_the_same_endpoint(gateway: Gateway, tenant: TenantKeys) -> None:
    """An exact POST path skips Litestar; a spelling only Litestar matches (trailing slash) gets the same app."""
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with gateway.http(tenant.user_key) as http:
        direct = await http.post("/v1/chat/completions", json=body)
        routed = await http.post("/v1/chat/completions/", json=body)
        unauthenticated = await http.post("/v1/chat/completions/", json=body, headers={"authorization": "Bearer x"})
        wrong_method = await http.get("/v1/chat/completions")
    assert direct.status_code == routed.status_code == 200
    assert direct.json()["choices"] == routed.json()["choices"]
    assert routed.headers["x-request-id"] != direct.headers["x-request-id"]
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["type"] == "authentication_error"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


async def test_only_a_well_formed_traceparent_is_passed_to_the_engine(gateway: Gateway, tenant: TenantKeys) -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with gateway.http(tenant.user_key) as http:
        resp = await http.post("/v1/chat/completions", json=body, headers={"traceparent": good})
        assert resp.status_code == 200
        assert gateway.chat.last_headers["traceparent"] == good
        assert gateway.chat.last_headers["x-request-id"] == resp.headers["x-request-id"]
        resp = await http.post("/v1/chat/completions", json=body, headers={"traceparent": "00-not-a-trace-01"})
        assert resp.status_code == 200
        assert "traceparent" not in gateway.chat.last_headers
