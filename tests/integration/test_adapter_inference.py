"""Adapters on the inference path, on a real gateway and Postgres, against two fake vLLM replicas that serve
the runtime LoRA API: placement on a miss (one load for concurrent first requests), warm hits, the opaque engine
name never seen by the client, eviction when a replica is full, a replica that lost the adapter, files an engine
refuses, delete unloading everywhere, another tenant's adapter, base traffic through the identity adapter, and
the tenant's cache_salt on every engine request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.vllm import FakeVLLM
from tests.integration.adapters_support import make_adapter, upload, write_base_model
from tests.integration.conftest import (
    CHAT_MODEL,
    Gateway,
    TenantKeys,
    free_port,
    gateway_settings,
    make_tenant,
    start_gateway,
    stop_gateway,
)

SLOTS = 3  # the identity adapter and two tenant adapters per replica


@dataclass
class Env:
    gw: Gateway
    replicas: tuple[FakeVLLM, FakeVLLM]
    store: Path

    @property
    def loads(self) -> int:
        return sum(fake.lora_loads for fake in self.replicas)

    def holders(self, engine_name: str) -> list[FakeVLLM]:
        return [fake for fake in self.replicas if engine_name in fake.loras]


@pytest.fixture(scope="module")
async def env(database_url: str, fakes: tuple[FakeVLLM, FakeVLLM]) -> AsyncIterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="tenantgate-adapter-inference-"))
    base = write_base_model(root / "base")
    one, two = FakeVLLM(models=(CHAT_MODEL,), lora=True), FakeVLLM(models=(CHAT_MODEL,), lora=True)
    await one.start()
    await two.start()
    settings = gateway_settings(
        database_url, one.url, fakes[1].url, engine_urls=(one.url, two.url), port=free_port(),
        adapter_dir=str(root / "store"), adapter_base_model_dirs={CHAT_MODEL: str(base)}, adapter_slots=SLOTS,
    )
    app, server, task = await start_gateway(settings)
    try:
        yield Env(Gateway(f"http://127.0.0.1:{settings.port}", app, one, fakes[1]), (one, two), root / "store")
    finally:
        await stop_gateway(server, task)
        await one.stop()
        await two.stop()
        shutil.rmtree(root, ignore_errors=True)


async def new_adapter(env: Env, tenant: TenantKeys, name: str, seed: int) -> dict[str, Any]:
    async with env.gw.http(tenant.admin_key) as admin:
        # Seeds apart from the other adapter modules': rows of every module share the database, and files are
        # kept while any row names their bytes.
        resp = await upload(admin, name, CHAT_MODEL, adapter=make_adapter(seed=10_000 + seed))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def engine_name_of(env: Env, tenant: TenantKeys, name: str) -> str:
    entry = env.gw.services.adapters.lookup(uuid.UUID(tenant.tenant_id), name)
    assert entry is not None
    return entry.engine_name


async def chat(env: Env, key: str, model: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
    if stream:
        body["stream"] = True
    async with env.gw.http(key) as http:
        return await http.post("/v1/chat/completions", json=body)


def test_each_replica_holds_the_identity_adapter_and_takes_adapters(env: Env) -> None:
    identities = [[n for n in fake.loras if n.startswith("tg-identity-")] for fake in env.replicas]
    assert all(len(names) == 1 for names in identities) and identities[0] == identities[1]
    assert all(replica.lora for replica in env.gw.services.engines.replicas if replica.purpose == "generate")


async def test_base_traffic_runs_through_the_identity_adapter_and_answers_as_the_base(env: Env) -> None:
    tenant = await make_tenant(env.gw, "base")
    identity = next(n for n in env.replicas[0].loras if n.startswith("tg-identity-"))
    before = sum(fake.lora_requests[identity] for fake in env.replicas)
    resp = await chat(env, tenant.user_key, CHAT_MODEL)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == CHAT_MODEL
    assert sum(fake.lora_requests[identity] for fake in env.replicas) == before + 1


async def test_an_adapter_is_loaded_once_for_concurrent_first_requests_and_answers_under_its_name(env: Env) -> None:
    tenant = await make_tenant(env.gw, "first")
    await new_adapter(env, tenant, "support", seed=1)
    engine_name = engine_name_of(env, tenant, "support")
    loads = env.loads
    answers = await asyncio.gather(*(chat(env, tenant.user_key, "support") for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert env.loads == loads + 1  # one load, however many first requests
    assert len(env.holders(engine_name)) == 1
    for answer in answers:
        body = answer.json()
        assert body["model"] == "support"
        assert f"[lora:{engine_name}]" in body["choices"][0]["message"]["content"]  # the fake ran the adapter
    stream = await chat(env, tenant.user_key, "support", stream=True)
    assert stream.status_code == 200
    assert engine_name not in stream.text.replace(f"[lora:{engine_name}]", "")
    assert '"model":"support"' in stream.text
    # Warm now: no more loads.
    await chat(env, tenant.user_key, "support")
    assert env.loads == loads + 1


async def test_models_lists_the_tenants_adapters_with_their_parent_and_nobody_elses(env: Env) -> None:
    owner, other = await make_tenant(env.gw, "owner"), await make_tenant(env.gw, "other")
    await new_adapter(env, owner, "voice", seed=2)
    async with env.gw.http(owner.user_key) as http:
        listed = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
    assert listed["voice"]["parent"] == CHAT_MODEL and "parent" not in listed[CHAT_MODEL]
    assert not any(m.startswith(("tga-", "tg-identity-")) for m in listed)
    async with env.gw.http(other.user_key) as http:
        assert "voice" not in {m["id"] for m in (await http.get("/v1/models")).json()["data"]}
        assert (await http.get("/v1/models/voice")).status_code == 404
    resp = await chat(env, other.user_key, "voice")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    # Nor can anyone call it by its engine name.
    resp = await chat(env, other.user_key, engine_name_of(env, owner, "voice"))
    assert resp.status_code == 404


async def test_a_full_replica_evicts_its_least_recently_used_idle_adapter(env: Env) -> None:
    tenant = await make_tenant(env.gw, "many")
    names = [f"a{i}" for i in range(5)]
    for i, name in enumerate(names):
        await new_adapter(env, tenant, name, seed=100 + i)
    for name in names:
        resp = await chat(env, tenant.user_key, name)
        assert resp.status_code == 200, resp.text
        engine_name = engine_name_of(env, tenant, name)
        assert f"[lora:{engine_name}]" in resp.json()["choices"][0]["message"]["content"]
    for fake in env.replicas:
        assert len(fake.loras) <= SLOTS  # the gateway never registers more than the slots
    held = sum(1 for name in names if env.holders(engine_name_of(env, tenant, name)))
    assert held <= 2 * (SLOTS - 1)
    # The first one was evicted somewhere along the way, and is loaded again on demand.
    resp = await chat(env, tenant.user_key, names[0])
    assert resp.status_code == 200


async def test_an_adapter_a_replica_lost_is_loaded_again_and_the_request_still_answers(env: Env) -> None:
    tenant = await make_tenant(env.gw, "lost")
    await new_adapter(env, tenant, "fragile", seed=3)
    assert (await chat(env, tenant.user_key, "fragile")).status_code == 200
    engine_name = engine_name_of(env, tenant, "fragile")
    for fake in env.holders(engine_name):  # as if the engine restarted, or another gateway unloaded it
        del fake.loras[engine_name]
        fake._render_models()
    resp = await chat(env, tenant.user_key, "fragile")
    assert resp.status_code == 200, resp.text
    assert env.holders(engine_name)


async def test_files_an_engine_refuses_fail_the_request_and_mark_the_adapter_failed(env: Env) -> None:
    tenant = await make_tenant(env.gw, "broken")
    created = await new_adapter(env, tenant, "gone", seed=4)
    digest = created["checksum"].removeprefix("sha256:")
    shutil.rmtree(env.store / "sha256" / digest[:2] / digest)  # the shared volume lost it
    resp = await chat(env, tenant.user_key, "gone")
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "adapter_load_failed"
    async with env.gw.http(tenant.user_key) as http:
        for _ in range(100):
            adapter = (await http.get("/v1/adapters/gone")).json()
            if adapter["status"] == "failed":
                break
            await asyncio.sleep(0.02)
    assert adapter["status"] == "failed"
    assert adapter["last_error"]["code"] == "adapter_load_failed"
    assert "No adapter found" in adapter["last_error"]["message"]
    assert (await chat(env, tenant.user_key, "gone")).status_code == 404  # no longer served


async def test_delete_unloads_the_adapter_everywhere(env: Env) -> None:
    tenant = await make_tenant(env.gw, "bye")
    await new_adapter(env, tenant, "short-lived", seed=5)
    assert (await chat(env, tenant.user_key, "short-lived")).status_code == 200
    engine_name = engine_name_of(env, tenant, "short-lived")
    assert env.holders(engine_name)
    async with env.gw.http(tenant.admin_key) as admin:
        assert (await admin.delete("/v1/adapters/short-lived")).status_code == 200
    assert env.holders(engine_name) == []
    assert (await chat(env, tenant.user_key, "short-lived")).status_code == 404


async def test_every_engine_request_carries_the_tenants_own_cache_salt(env: Env) -> None:
    a, b = await make_tenant(env.gw, "salt-a"), await make_tenant(env.gw, "salt-b")
    seen = []
    for tenant in (a, a, b):
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "cache_salt": "chosen-by-client"}
        for fake in env.replicas:
            fake.last_body = None
        async with env.gw.http(tenant.user_key) as http:
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
        (sent,) = [json.loads(fake.last_body) for fake in env.replicas if fake.last_body is not None]
        seen.append(sent["cache_salt"])
    async with env.gw.services.db.connection() as conn:
        row = await (await conn.execute("SELECT cache_salt_key FROM platform_secrets")).fetchone()
    assert row is not None
    key = bytes(row[0])
    salt_a = hmac.new(key, uuid.UUID(a.tenant_id).bytes, hashlib.sha256).hexdigest()[:32]
    salt_b = hmac.new(key, uuid.UUID(b.tenant_id).bytes, hashlib.sha256).hexdigest()[:32]
    assert seen == [salt_a, salt_a, salt_b]


async def test_the_gateways_own_embeddings_for_a_tenant_carry_its_salt(env: Env) -> None:
    tenant = await make_tenant(env.gw, "salt-embed")
    tenant_id = uuid.UUID(tenant.tenant_id)
    await env.gw.services.embedder.embed(["a chunk of the tenant's document"], tenant_id=tenant_id, key_id=None,
                                         purpose="ingestion")
    sent = json.loads(env.gw.embed.last_body or b"{}")
    async with env.gw.services.db.connection() as conn:
        row = await (await conn.execute("SELECT cache_salt_key FROM platform_secrets")).fetchone()
    assert row is not None
    assert sent["cache_salt"] == hmac.new(bytes(row[0]), tenant_id.bytes, hashlib.sha256).hexdigest()[:32]
