"""A vLLM engine killed under the gateway: 503 ``engine_unavailable`` while it is down, service once it is back.

Runs after every other user of the session's shared engines (see tests/realengines.py): it kills the
shared chat engine and restarts it through the supervisor.
"""

from __future__ import annotations

import threading
import time

import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.e2e.conftest import CHAT_MODEL, EMBED_MODEL, GatewayProcess
from tests.realengines import EngineStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAPITAL: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
LONG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write a long story about a lighthouse."}]


def ask(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=CAPITAL, temperature=0, max_tokens=30)
    return reply.choices[0].message.content or ""


def test_killed_engine_gives_503_and_the_gateway_recovers(
    engines: EngineStack, gateway: GatewayProcess, client: openai.OpenAI
) -> None:
    assert "Paris" in ask(client)

    # A stream in flight when the engine dies ends with an error event, not a hang.
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=LONG, max_tokens=1000, stream=True, extra_body={"ignore_eos": True}
    )
    received: list[ChatCompletionChunk] = []
    outcome: list[BaseException | None] = []

    def consume() -> None:
        try:
            for chunk in stream:
                received.append(chunk)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while len(received) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(received) >= 3, "the stream did not start"

    killed = engines.kill("chat")
    assert len(killed) >= 3  # API server, engine core, worker
    reader.join(30)
    assert not reader.is_alive(), "the stream hung after its engine died"
    assert outcome and isinstance(outcome[0], openai.APIError), outcome

    with pytest.raises(openai.InternalServerError) as caught:
        ask(client)
    assert caught.value.status_code == 503
    assert caught.value.code == "engine_unavailable"
    assert caught.value.response.headers.get("retry-after")
    deadline = time.monotonic() + 10
    while gateway.readyz() != 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gateway.readyz() == 503
    # The other engine is unaffected.
    assert len(client.embeddings.create(model=EMBED_MODEL, input="still here").data[0].embedding) == 384

    restarted = time.monotonic()
    engines.ensure_started()  # the supervisor brings the chat engine back on the same port
    deadline = time.monotonic() + 60
    answer: str | None = None
    while answer is None:
        try:
            answer = ask(client)
        except openai.InternalServerError as exc:
            if exc.status_code != 503 or time.monotonic() >= deadline:
                raise
            time.sleep(0.25)
    assert "Paris" in answer
    assert gateway.readyz() == 200
    print(f"chat engine restarted and served again after {time.monotonic() - restarted:.0f} s")
