"""The built-in body edits of every call: the tenant's ``cache_salt`` (replacing the client's), and the model
name an adapter route gives the engine, with the public name restored in answers, streams and errors."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from typing import Any

import msgspec
import pytest

from gateway.auth.principal import Principal
from gateway.engines.client import EngineReply
from gateway.engines.models import ModelCard
from gateway.engines.replica import Purpose
from gateway.engines.routes import Route
from gateway.services.inference import InferenceService
from gateway.services.pipeline import Pipeline
from gateway.services.salts import CacheSalts
from tests.unit.test_inference_service import (
    DONE,
    MODEL,
    REPLICA,
    ROUTE,
    FakeEngines,
    FakeStream,
    OneModel,
    Seen,
    answer,
    chat,
    chat_call,
    read,
)

KEY = bytes(range(32))


def sent_body(engines: FakeEngines) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.json.decode(engines.sent[-1][2])
    return body


def salted_service(engines: FakeEngines, models: Any = None) -> InferenceService:
    return InferenceService(
        engines, models or OneModel(), Pipeline(observers=(Seen(),)), salts=CacheSalts(KEY)
    )


def call_of(tenant: uuid.UUID, body: dict[str, Any] | bytes) -> Any:
    call = chat_call(body)
    call.principal = Principal(tenant, "t", uuid.uuid4(), "user")
    return call


async def test_every_engine_request_carries_the_tenants_salt_which_reveals_nothing() -> None:
    engines = FakeEngines()
    svc = salted_service(engines)
    a, b = uuid.uuid4(), uuid.uuid4()
    salts = []
    for tenant in (a, a, b):
        await svc.run(call_of(tenant, chat()))
        salts.append(sent_body(engines)["cache_salt"])
    assert salts[0] == salts[1] != salts[2]
    expected = hmac.new(KEY, a.bytes, hashlib.sha256).hexdigest()[:32]
    assert salts[0] == expected
    assert re.fullmatch(r"[0-9a-f]{32}", salts[2])  # vLLM: non-empty, <= 128 chars, no @ / \ NUL
    assert str(a) not in salts[0] and a.hex not in salts[0]
    # An absent field is spliced in: the client's bytes follow unchanged.
    assert engines.sent[-1][2].endswith(msgspec.json.encode(chat())[1:])


@pytest.mark.parametrize("client_salt", ['"victim-tenant-salt"', '""', "null", "42", '{"a": 1}'])
async def test_a_salt_the_client_sent_is_replaced_whatever_it_was(client_salt: str) -> None:
    engines = FakeEngines()
    svc = salted_service(engines)
    tenant = uuid.uuid4()
    raw = msgspec.json.encode(chat())[:-1] + b',"cache_salt":' + client_salt.encode() + b"}"
    await svc.run(call_of(tenant, raw))
    body = sent_body(engines)
    assert body["cache_salt"] == hmac.new(KEY, tenant.bytes, hashlib.sha256).hexdigest()[:32]
    assert body["messages"] == chat()["messages"]


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 random bytes"):
        CacheSalts(b"short")


ENGINE_NAME = "tga-" + "ab" * 16
PUBLIC = "support-bot"


class AdapterModels:
    """Resolves the public adapter name to a route whose engine model is the opaque name."""

    route = Route(
        ENGINE_NAME, "generate", (REPLICA,), ModelCard(id=PUBLIC, parent=MODEL),
    )

    def resolve(self, principal: Any, model: str, purpose: Purpose) -> Route:
        return self.route if model == PUBLIC else ROUTE


async def test_an_adapter_route_sends_the_engine_name_and_answers_with_the_public_one() -> None:
    engine_answer = answer().replace(b'"object"', b'"model":"' + ENGINE_NAME.encode() + b'","object"')
    engines = FakeEngines(reply=EngineReply(200, engine_answer, REPLICA))
    svc = InferenceService(engines, AdapterModels(), Pipeline())
    reply = await svc.run(call_of(uuid.uuid4(), chat(model=PUBLIC)))
    assert sent_body(engines)["model"] == ENGINE_NAME
    body = msgspec.json.decode(reply.body)  # type: ignore[union-attr]
    assert body["model"] == PUBLIC
    assert ENGINE_NAME.encode() not in reply.body  # type: ignore[union-attr]


async def test_an_adapter_stream_names_the_public_model_in_every_chunk() -> None:
    def event(word: str, n: int) -> bytes:
        return (
            b'data: {"id":"c1","model":"' + ENGINE_NAME.encode() + b'","choices":[{"index":0,"delta":{"content":"'
            + word.encode() + b'"}}],"usage":{"prompt_tokens":2,"total_tokens":' + str(2 + n).encode()
            + b',"completion_tokens":' + str(n).encode() + b"}}\n\n"
        )

    engines = FakeEngines(stream=FakeStream([event("a", 1), event("b", 2), DONE]))
    svc = InferenceService(engines, AdapterModels(), Pipeline())
    out = await read(await svc.run(call_of(uuid.uuid4(), chat(stream=True, model=PUBLIC))))
    assert ENGINE_NAME.encode() not in out
    assert out.count(b'"model":"' + PUBLIC.encode() + b'"') == 2


async def test_an_engine_error_about_the_adapter_names_the_public_model() -> None:
    error = msgspec.json.encode({"error": {
        "message": f"The model `{ENGINE_NAME}` does not exist.", "type": "NotFoundError", "param": None, "code": 404,
    }})
    engines = FakeEngines(reply=EngineReply(404, error, REPLICA))
    svc = InferenceService(engines, AdapterModels(), Pipeline())
    reply = await svc.run(call_of(uuid.uuid4(), chat(model=PUBLIC)))
    assert reply.status == 404  # type: ignore[union-attr]
    assert ENGINE_NAME.encode() not in reply.body  # type: ignore[union-attr]
    assert PUBLIC.encode() in reply.body  # type: ignore[union-attr]


async def test_a_base_route_keeps_the_body_and_answer_as_they_were() -> None:
    engines = FakeEngines()
    svc = InferenceService(engines, AdapterModels(), Pipeline())
    call = call_of(uuid.uuid4(), chat())
    await svc.run(call)
    assert engines.sent[-1][2] == call.body
