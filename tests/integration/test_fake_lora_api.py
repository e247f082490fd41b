"""The fake vLLM's runtime LoRA API answers as vLLM 0.32's does (see ../shared/ENGINE_NOTES.md), over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.vllm import FakeVLLM


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeVLLM]:
    async with FakeVLLM(models=("base-chat",), lora=True, lora_slots=2) as server:
        yield server


def adapter_folder(root: Path, name: str) -> str:
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    return str(folder)


async def post(http: aiohttp.ClientSession, url: str, doc: dict[str, Any]) -> tuple[int, str, str]:
    async with http.post(url, json=doc) as resp:
        return resp.status, resp.content_type, await resp.text()


async def models(http: aiohttp.ClientSession, fake: FakeVLLM) -> dict[str, dict[str, Any]]:
    async with http.get(fake.url + "/v1/models") as resp:
        doc = await resp.json()
    return {card["id"]: card for card in doc["data"]}


async def test_load_lists_serves_and_unloads_an_adapter(
    fake: FakeVLLM, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = adapter_folder(tmp_path, "a")
    load = {"lora_name": "tga-a", "lora_path": path}
    status, ctype, text = await post(http, fake.url + "/v1/load_lora_adapter", load)
    assert (status, ctype, text) == (200, "text/plain", "Success: LoRA adapter 'tga-a' added successfully.")
    cards = await models(http, fake)
    assert (cards["tga-a"]["root"], cards["tga-a"]["parent"]) == (path, "base-chat")
    assert cards["base-chat"]["parent"] is None

    client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "hello"}]
    adapter = await client.chat.completions.create(model="tga-a", messages=messages)
    base = await client.chat.completions.create(model="base-chat", messages=messages)
    assert adapter.model == "tga-a"
    assert adapter.choices[0].message.content is not None
    assert adapter.choices[0].message.content.startswith("[lora:tga-a] ")
    assert base.choices[0].message.content is not None
    assert not base.choices[0].message.content.startswith("[lora:")
    assert adapter.usage is not None and base.usage is not None
    assert adapter.usage.completion_tokens == base.usage.completion_tokens
    stream = await client.chat.completions.create(model="tga-a", messages=messages, stream=True)
    text_parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(text_parts).startswith("[lora:tga-a] ")
    assert fake.lora_requests["tga-a"] == 2

    status, _, text = await post(http, fake.url + "/v1/unload_lora_adapter", {"lora_name": "tga-a"})
    assert (status, text) == (200, "Success: LoRA adapter 'tga-a' removed successfully.")
    assert "tga-a" not in await models(http, fake)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="tga-a", messages=messages)
    assert caught.value.body == {
        "message": "The model `tga-a` does not exist.", "type": "NotFoundError", "param": "model", "code": 404,
    }  # fmt: skip
    assert (fake.lora_loads, fake.lora_unloads) == (1, 1)


async def test_loading_a_name_twice_is_vllms_400(fake: FakeVLLM, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    body = {"lora_name": "tga-a", "lora_path": adapter_folder(tmp_path, "a")}
    assert (await post(http, fake.url + "/v1/load_lora_adapter", body))[0] == 200
    async with http.post(fake.url + "/v1/load_lora_adapter", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "InvalidUserInput"
    assert error["code"] == 400
    assert "has already been loaded" in error["message"]
    assert fake.lora_loads == 1


@pytest.mark.parametrize("case", ["missing", "no_config"])
async def test_a_path_without_an_adapter_is_vllms_404(
    fake: FakeVLLM, http: aiohttp.ClientSession, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "nothing-here"
    if case == "no_config":
        path.mkdir()
        (path / "adapter_model.safetensors").write_bytes(b"")
    async with http.post(fake.url + "/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(path)}) as resp:
        assert resp.status == 404
        doc = await resp.json()
    assert doc == {
        "error": {
            "message": f"Loading lora bad failed: No adapter found for {path}", "type": "NotFoundError", "param": None,
            "code": 404,
        }
    }  # fmt: skip
    assert "bad" not in await models(http, fake)


async def test_unloading_what_is_not_loaded_is_a_404_and_bad_bodies_are_400s(
    fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    async with http.post(fake.url + "/v1/unload_lora_adapter", json={"lora_name": "ghost"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["message"] == "The lora adapter 'ghost' cannot be found."
    for route, body in (("/v1/load_lora_adapter", {"lora_name": "x"}), ("/v1/unload_lora_adapter", {})):
        async with http.post(fake.url + route, json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "InvalidUserInput"
    async with http.post(fake.url + "/v1/load_lora_adapter", data=b"{not json") as resp:
        assert resp.status == 400
    assert (fake.lora_loads, fake.lora_unloads) == (0, 0)


async def test_without_runtime_lora_the_routes_are_absent(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with FakeVLLM(models=("base-chat",)) as plain:
        body = {"lora_name": "tga-a", "lora_path": adapter_folder(tmp_path, "a")}
        for route in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            async with http.post(plain.url + route, json=body) as resp:
                assert resp.status == 404
                assert await resp.json() == {"detail": "Not Found"}


async def test_more_adapters_than_slots_are_accepted_and_counted(
    fake: FakeVLLM, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        body = {"lora_name": f"tga-{name}", "lora_path": adapter_folder(tmp_path, name)}
        assert (await post(http, fake.url + "/v1/load_lora_adapter", body))[0] == 200
    assert (fake.lora_loads, fake.lora_evictions, fake.lora_peak) == (3, 1, 3)
    assert {"tga-a", "tga-b", "tga-c"} <= set(await models(http, fake))


async def test_a_load_delay_holds_the_answer_and_a_second_concurrent_load_finds_it_loaded(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with FakeVLLM(models=("base-chat",), lora=True, lora_load_delay=0.05) as slow:
        body = {"lora_name": "tga-a", "lora_path": adapter_folder(tmp_path, "a")}
        first, second = await asyncio.gather(
            post(http, slow.url + "/v1/load_lora_adapter", body), post(http, slow.url + "/v1/load_lora_adapter", body)
        )
        assert sorted([first[0], second[0]]) == [200, 400]
        assert slow.lora_loads == 1


async def test_a_restarted_engine_has_forgotten_its_adapters(
    fake: FakeVLLM, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    body = {"lora_name": "tga-a", "lora_path": adapter_folder(tmp_path, "a")}
    assert (await post(http, fake.url + "/v1/load_lora_adapter", body))[0] == 200
    await fake.stop()
    await fake.start()
    assert set(await models(http, fake)) == {"base-chat"}


async def test_an_injected_status_fails_loads_and_unloads(fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    fake.faults.lora_status = 500
    async with http.post(fake.url + "/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/x"}) as resp:
        assert resp.status == 500
        assert (await resp.json())["error"]["code"] == 500
    async with http.post(fake.url + "/v1/unload_lora_adapter", json={"lora_name": "a"}) as resp:
        assert resp.status == 500
