"""The OpenAPI document says what the API answers: 200 with OpenAI's objects on the inference routes (and
server-sent events where they stream), and OpenAI's error shape for every error status. The live answers
are checked against it by the schemathesis run (tests/integration/test_fuzz_openapi.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import create_litestar
from gateway.settings import Settings

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    doc: dict[str, Any] = create_litestar(Settings()).openapi_schema.to_schema()
    return doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "responses" in op
    ]


@pytest.mark.parametrize(
    ("path", "schema", "streams"),
    [
        ("/v1/chat/completions", "ChatCompletion", True),
        ("/v1/completions", "TextCompletion", True),
        ("/v1/embeddings", "EmbeddingList", False),
    ],
)
def test_inference_routes_answer_200_with_openais_objects(
    document: dict[str, Any], path: str, schema: str, streams: bool
) -> None:
    responses = document["paths"][path]["post"]["responses"]
    assert "201" not in responses
    content = responses["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{schema}"}
    assert ("text/event-stream" in content) is streams
    assert {"400", "401", "403", "404", "408", "413", "415", "431", "502", "503", "504"} <= set(responses)


def test_openai_objects_declare_their_top_level_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert set(schemas["ChatCompletion"]["required"]) == {"id", "object", "created", "model", "choices"}
    assert set(schemas["TextCompletion"]["required"]) == {"id", "object", "created", "model", "choices"}
    assert set(schemas["EmbeddingList"]["required"]) == {"object", "data", "model", "usage"}
    assert "usage" in schemas["ChatCompletion"]["properties"]


def test_every_error_status_is_in_openais_shape(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["ErrorObject"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    for method, path, op in _operations(document):
        for status, response in op["responses"].items():
            if int(status) < 400 or (path == "/readyz" and status == "503"):
                continue
            assert response["content"] == {"application/json": {"schema": ERROR_REF}}, (method, path, status)


def test_every_operation_declares_the_errors_any_request_can_get(document: dict[str, Any]) -> None:
    for method, path, op in _operations(document):
        assert {"400", "431"} <= set(op["responses"]), (method, path)


def test_a_503_error_declares_retry_after(document: dict[str, Any]) -> None:
    for method, path, op in _operations(document):
        unavailable = op["responses"].get("503")
        if unavailable is not None and path != "/readyz":
            assert unavailable["headers"]["Retry-After"]["required"] is True, (method, path)


def test_readiness_documents_its_own_body_on_503(document: dict[str, Any]) -> None:
    responses = document["paths"]["/readyz"]["get"]["responses"]
    assert responses["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}
    assert "headers" not in responses["503"] or "Retry-After" not in responses["503"]["headers"]
