"""The fake vLLM answers in the shapes the OpenAI SDK and the gateway expect."""

from __future__ import annotations

import asyncio
import math
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import openai
import pytest

from tests.fakes.vllm import FakeVLLM

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def chat_fake() -> AsyncIterator[FakeVLLM]:
    async with FakeVLLM(models=("fake-chat", "other-chat")) as fake:
        yield fake


@pytest.fixture
async def embed_fake() -> AsyncIterator[FakeVLLM]:
    async with FakeVLLM(models=("fake-embed",), embedding_dim=16, purpose="embed") as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sdk(fake: FakeVLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0)


async def test_health_models_and_metrics(chat_fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    async with http.get(chat_fake.url + "/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    async with http.get(chat_fake.url + "/v1/models") as resp:
        doc = await resp.json()
    assert doc["object"] == "list"
    card = doc["data"][0]
    assert card["id"] == "fake-chat"
    assert (card["object"], card["owned_by"], card["parent"], card["max_model_len"]) == (
        "model",
        "vllm",
        None,
        2048,
    )
    assert card["permission"][0]["object"] == "model_permission"
    async with http.get(chat_fake.url + "/metrics") as resp:
        text = await resp.text()
    assert 'vllm:num_requests_running{model_name="fake-chat"} 0' in text


async def test_chat_through_the_openai_sdk(chat_fake: FakeVLLM) -> None:
    client = sdk(chat_fake)
    reply = await client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hello there"}], max_tokens=5
    )
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.content == " ".join(FakeVLLM.answer_words("hello there", 5))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (2, 5, 7)
    default = await client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "hello there"}]
    )
    assert default.choices[0].finish_reason == "stop"
    assert default.usage is not None
    assert default.usage.completion_tokens == 16
    await client.close()


async def test_chat_stream_with_usage(chat_fake: FakeVLLM) -> None:
    client = sdk(chat_fake)
    stream = await client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(FakeVLLM.answer_words("hi", 4))
    assert [c.choices[0].finish_reason for c in chunks[1:-1]] == [None, None, None, "length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert chat_fake.streams_finished == 1
    await client.close()


async def test_completions(chat_fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    client = sdk(chat_fake)
    reply = await client.completions.create(model="other-chat", prompt="once upon", max_tokens=3)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == " ".join(FakeVLLM.answer_words("once upon", 3))
    body = b'{"model": "fake-chat", "prompt": "x", "max_tokens": 2, "stream": true}'
    async with http.post(chat_fake.url + "/v1/completions", data=body) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
    events = [line[6:] for line in raw.split(b"\n\n") if line]
    assert events[-1] == b"[DONE]"
    first = msgspec.json.decode(events[0])
    assert first["object"] == "text_completion"
    assert "usage" not in msgspec.json.decode(events[-2])
    await client.close()


async def test_embeddings_float_and_base64(embed_fake: FakeVLLM) -> None:
    client = sdk(embed_fake)
    # The SDK asks for base64 by default and decodes it.
    reply = await client.embeddings.create(model="fake-embed", input=["a cat", "a dog", "a cat"])
    vectors = [d.embedding for d in reply.data]
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert len(vectors[0]) == 16
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, rel_tol=1e-5)
    assert vectors[0] == vectors[2] != vectors[1]
    floats = await client.embeddings.create(model="fake-embed", input="a cat", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
    assert floats.usage.prompt_tokens == 2
    await client.close()


async def test_embeddings_rejects_token_ids(embed_fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    body = b'{"model": "fake-embed", "input": [1, 2, 3]}'
    async with http.post(embed_fake.url + "/v1/embeddings", data=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "BadRequestError"


async def test_vllm_error_bodies(chat_fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    url = chat_fake.url + "/v1/chat/completions"
    body = b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}'
    async with http.post(url, data=body) as resp:
        assert resp.status == 404
        assert await resp.json() == {
            "error": {
                "message": "The model `nope` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }
    for bad in (b"{not json", b'{"model": "fake-chat"}', b"[]"):
        async with http.post(url, data=bad) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert (error["type"], error["code"]) == ("BadRequestError", 400)
    async with http.post(chat_fake.url + "/v1/embeddings", data=b"{}") as resp:
        assert resp.status == 404
        assert await resp.json() == {"detail": "Not Found"}
    client = sdk(chat_fake)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    await client.close()


async def test_error_event_inside_a_200_stream(chat_fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    chat_fake.faults.error_after_chunks = 2
    body = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "x"}], "stream": true}'
    async with http.post(chat_fake.url + "/v1/chat/completions", data=body) as resp:
        assert resp.status == 200
        events = [line[6:] for line in (await resp.read()).split(b"\n\n") if line]
    assert len(events) == 4
    assert msgspec.json.decode(events[2]) == {
        "error": {
            "message": "Internal server error",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    assert events[3] == b"[DONE]"


async def test_records_requests(chat_fake: FakeVLLM, http: aiohttp.ClientSession) -> None:
    body = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}'
    async with http.post(
        chat_fake.url + "/v1/chat/completions", data=body, headers={"traceparent": "00-abc-def-01"}
    ) as resp:
        await resp.read()
    assert chat_fake.request_count == 1
    assert chat_fake.last_body == body
    assert chat_fake.last_path == "/v1/chat/completions"
    assert chat_fake.last_headers["TraceParent"] == "00-abc-def-01"
    chat_fake.faults.status = 503
    chat_fake.faults.body = b"overloaded"
    async with http.post(chat_fake.url + "/v1/chat/completions", data=body) as resp:
        assert (resp.status, await resp.read()) == (503, b"overloaded")
    chat_fake.reset()
    assert chat_fake.request_count == 0
    assert chat_fake.faults.status is None


async def test_down_and_back_on_the_same_port(http: aiohttp.ClientSession) -> None:
    fake = FakeVLLM()
    await fake.start()
    url = fake.url
    await fake.stop()
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(url + "/health")
    await fake.start()
    assert fake.url == url
    async with http.get(url + "/health") as resp:
        assert resp.status == 200
    await fake.stop()


async def test_runs_as_a_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.vllm",
        "--port",
        "0",
        "--purpose",
        "embed",
        "--model",
        "e1",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            line = (await proc.stdout.readline()).decode().strip()
        assert line.startswith("READY http://127.0.0.1:")
        async with aiohttp.ClientSession() as http, http.get(line.split()[1] + "/v1/models") as resp:
            assert [m["id"] for m in (await resp.json())["data"]] == ["e1"]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_fake_refuses_more_tokens_than_its_context_like_vllm() -> None:
    """A fuzzer's max_tokens of 10^9 must be a 400, not a billion words in memory."""
    import aiohttp

    from tests.fakes.vllm import MAX_MODEL_LEN, FakeVLLM

    async with FakeVLLM(models=("m",)) as fake, aiohttp.ClientSession() as http:
        for limit in (MAX_MODEL_LEN, 10**9):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": limit}
            async with http.post(fake.url + "/v1/chat/completions", json=body) as resp:
                doc = await resp.json()
            assert resp.status == 400, doc
            assert doc["error"]["param"] == "max_tokens" and "maximum context length" in doc["error"]["message"]
