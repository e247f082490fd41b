"""What a tenant may name: listing and routing ask the same grants, so what is not listed cannot be called.

vLLM lists every LoRA adapter loaded on it as a model of its own (``parent``: its base model). Until the
adapters work grants an adapter to the tenant that owns it, such a name is granted to nobody: it answers
404 ``model_not_found`` through the gateway, exactly as a name no engine serves, and is never listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import msgspec

from tests.fakes.vllm import FakeVLLM
from tests.integration.conftest import CHAT_MODEL, EMBED_MODEL, Gateway, TenantKeys

ADAPTER = "acme-support-lora"


@contextmanager
def adapter_listed(fake: FakeVLLM, adapter: str, base: str) -> Iterator[None]:
    """The fake lists (and serves) ``adapter`` as vLLM lists a loaded LoRA adapter: ``parent`` = ``base``."""
    fake.set_models((base, adapter))
    doc = msgspec.json.decode(fake._models_body)
    for card in doc["data"]:
        if card["id"] == adapter:
            card["parent"], card["root"] = base, f"/adapters/{adapter}"
    fake._models_body = msgspec.json.encode(doc)
    try:
        yield
    finally:
        fake.set_models((base,))


async def usage_rows(gw: Gateway, tenant_id: str) -> list[tuple[object, ...]]:
    await gw.services.meter.flush()
    async with gw.services.db.connection() as conn:
        cur = await conn.execute(
            "SELECT model, status_code, error_code FROM usage_events WHERE tenant_id = %s ORDER BY id", (tenant_id,)
        )
        return list(await cur.fetchall())


async def test_an_adapter_the_engine_lists_but_nobody_was_granted_is_neither_listed_nor_callable(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    with adapter_listed(gateway.chat, ADAPTER, CHAT_MODEL):
        await gateway.services.engines.refresh()
        assert gateway.services.engines.route(ADAPTER, "generate").card.parent == CHAT_MODEL  # the engine has it
        async with gateway.http(tenant.user_key) as http:
            listed = await http.get("/v1/models")
            one = await http.get(f"/v1/models/{ADAPTER}")
            base = await http.post("/v1/chat/completions", json={
                "model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            sent_before = gateway.chat.request_count
            for stream in (False, True):
                called = await http.post("/v1/chat/completions", json={
                    "model": ADAPTER, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
                assert called.status_code == 404
                assert called.json()["error"]["code"] == "model_not_found"
                assert ADAPTER in called.json()["error"]["message"]
            completion = await http.post("/v1/completions", json={"model": ADAPTER, "prompt": "hi"})
    assert [m["id"] for m in listed.json()["data"]] == sorted([CHAT_MODEL, EMBED_MODEL])
    assert one.status_code == 404 and one.json()["error"]["code"] == "model_not_found"
    assert base.status_code == 200  # the base model beside it is served as before
    assert completion.status_code == 404
    assert gateway.chat.request_count == sent_before  # the engine never saw a request for the adapter
    rows = await usage_rows(gateway, tenant.tenant_id)
    assert rows[1:] == [("unknown", 404, "model_not_found")] * 3  # not even its name reaches usage rows
