"""The OpenAI API through the gateway process to real vLLM engines, driven by the official SDK."""

from __future__ import annotations

import math
import secrets

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import CHAT_MODEL, EMBED_MODEL, GatewayProcess, Tenant, usage_row

pytestmark = pytest.mark.e2e

CAPITAL: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


def request_id() -> str:
    return f"e2e-{secrets.token_hex(8)}"


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_models_lists_both_served_models(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {CHAT_MODEL, EMBED_MODEL} <= ids
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL


def test_greedy_chat_answers_paris(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    rid = request_id()
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=CAPITAL, temperature=0, max_tokens=30,
        extra_headers={"x-request-id": rid},
    )
    answer = reply.choices[0].message.content or ""
    assert "Paris" in answer, answer
    assert reply.model == CHAT_MODEL
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    row = usage_row(gateway.database_url, rid)
    assert row["endpoint"] == "chat.completions" and row["status_code"] == 200 and row["stream"] is False
    assert row["prompt_tokens"] == reply.usage.prompt_tokens
    assert row["completion_tokens"] == reply.usage.completion_tokens


def test_streaming_chat_with_usage(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    rid = request_id()
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=CAPITAL, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-request-id": rid},
    )
    assert raw.status_code == 200  # as OpenAI and vLLM answer
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-request-id"] == rid
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # token by token
    assert "Paris" in text, text
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    row = usage_row(gateway.database_url, rid)
    assert row["stream"] is True and row["status_code"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"]) == (last.usage.prompt_tokens, last.usage.completion_tokens)
    assert row["ttft_ms"] is not None and 0 < float(str(row["ttft_ms"])) < 30_000


def test_streaming_chat_without_usage_is_still_metered(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    rid = request_id()
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=CAPITAL, temperature=0, max_tokens=30, stream=True,
        extra_headers={"x-request-id": rid},
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # the usage chunk the gateway asked for is held back
    assert all(c.choices for c in chunks)
    tokens = sum(1 for c in chunks if c.choices[0].delta.content)
    assert tokens > 1
    row = usage_row(gateway.database_url, rid)
    assert row["endpoint"] == "chat.completions" and row["stream"] is True and row["status_code"] == 200
    assert int(str(row["prompt_tokens"])) > 0
    # One chunk per token; the end-of-turn token that stops generation is counted but not shown.
    assert tokens <= int(str(row["completion_tokens"])) <= tokens + 1


def test_completions(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    rid = request_id()
    reply = client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", temperature=0, max_tokens=8,
        extra_headers={"x-request-id": rid},
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text.strip()
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
    streamed = client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text  # greedy: same text
    row = usage_row(gateway.database_url, rid)
    assert row["endpoint"] == "completions" and row["completion_tokens"] == reply.usage.completion_tokens


def test_embeddings(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    rid = request_id()
    texts = ["How do I bake bread at home?", "What is a good recipe for homemade bread?", "The stock market fell."]
    reply = client.embeddings.create(model=EMBED_MODEL, input=texts, extra_headers={"x-request-id": rid})
    vectors = [item.embedding for item in sorted(reply.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(abs(math.fsum(x * x for x in v) - 1.0) < 1e-3 for v in vectors)  # unit length
    paraphrases, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    assert paraphrases > unrelated + 0.3, (paraphrases, unrelated)
    as_floats = client.embeddings.create(model=EMBED_MODEL, input=texts[0], encoding_format="float")
    assert cosine(as_floats.data[0].embedding, vectors[0]) > 0.999  # base64 (the SDK's default) and floats agree
    row = usage_row(gateway.database_url, rid)
    assert row["endpoint"] == "embeddings" and int(str(row["prompt_tokens"])) > 0


def test_bad_key_is_401(gateway: GatewayProcess, tenant: Tenant) -> None:
    bad = gateway.client("sk-tg-" + "x" * 40)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model=CHAT_MODEL, messages=CAPITAL, max_tokens=5)
    assert caught.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=CAPITAL, max_tokens=5)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model=CHAT_MODEL, input="a chat model is not an embedding model")
    assert caught.value.code == "model_not_found"
