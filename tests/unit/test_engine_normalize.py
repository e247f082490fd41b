"""normalize_error_body and the in-stream error helpers."""

from __future__ import annotations

import pytest

from gateway.engines.normalize import (
    MAX_MESSAGE_CHARS,
    ErrorInfo,
    normalize_error_body,
    parse_stream_error,
    redact,
    stream_error_info,
)


def test_vllm_nested_error_with_numeric_code() -> None:
    body = (
        b'{"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError",'
        b' "param": "model", "code": 404}}'
    )
    info = normalize_error_body(404, body)
    assert info == ErrorInfo(
        message="The model `nope` does not exist.",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def test_vllm_bad_request_code_is_never_an_int() -> None:
    body = b'{"error": {"message": "bad temperature", "type": "BadRequestError", "param": null, "code": 400}}'
    info = normalize_error_body(400, body)
    assert info.type == "invalid_request_error"
    assert info.code is None
    assert info.param is None
    assert info.to_openai() == {
        "error": {"message": "bad temperature", "type": "invalid_request_error", "param": None, "code": None}
    }


def test_old_flat_vllm_shape() -> None:
    body = b'{"object": "error", "message": "too long", "type": "BadRequestError", "param": null, "code": 400}'
    info = normalize_error_body(400, body)
    assert (info.message, info.type, info.code) == ("too long", "invalid_request_error", None)


def test_context_length_gets_openai_code() -> None:
    body = (
        b'{"error": {"message": "This model\'s maximum context length is 2048 tokens. However, ...",'
        b' "type": "BadRequestError", "param": "input_tokens", "code": 400}}'
    )
    info = normalize_error_body(400, body)
    assert info.code == "context_length_exceeded"
    assert info.param == "input_tokens"


def test_string_code_and_openai_type_are_kept() -> None:
    body = b'{"error": {"message": "slow down", "type": "rate_limit_error", "code": "too_many"}}'
    assert normalize_error_body(429, body) == ErrorInfo("slow down", "rate_limit_error", None, "too_many")


def test_fastapi_detail_string_and_list() -> None:
    assert normalize_error_body(404, b'{"detail": "Not Found"}').message == "Not Found"
    body = b'{"detail": [{"loc": ["body", "messages"], "msg": "Field required", "type": "missing"}]}'
    info = normalize_error_body(422, body)
    assert info.message == "messages: Field required"
    assert info.type == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "expected_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "invalid_request_error"),
        (409, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
    ],
)
def test_type_follows_status(status: int, expected_type: str) -> None:
    assert normalize_error_body(status, b"oops").type == expected_type


def test_plain_text_and_html() -> None:
    assert normalize_error_body(502, b"Bad gateway\n  upstream  down").message == "Bad gateway upstream down"
    html = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
    assert normalize_error_body(503, html).message == "503 Service Unavailable"


def test_empty_and_garbage_bodies_get_a_message() -> None:
    empty = normalize_error_body(503, b"")
    assert empty.message.startswith("The engine answered HTTP 503 (Service Unavailable)")
    assert empty.type == "server_error"
    assert empty.code is None
    garbage = normalize_error_body(500, b"\x00\xff\xfe\x01")
    assert garbage.message.startswith("The engine answered HTTP 500")
    assert normalize_error_body(500, b"[1, 2]").message == "[1, 2]"
    assert normalize_error_body(500, b'{"error": null}').message == '{"error": null}'


def test_message_truncated_and_credentials_dropped() -> None:
    long = b'{"error": {"message": "' + b"x" * 5000 + b'", "code": 400}}'
    assert len(normalize_error_body(400, long).message) == MAX_MESSAGE_CHARS
    info = normalize_error_body(502, b"cannot reach http://admin:s3cret@10.0.0.5:8000/v1 (refused)")
    assert "s3cret" not in info.message
    assert "admin" not in info.message
    assert "http://10.0.0.5:8000/v1" in info.message
    assert redact("a  b\n c") == "a b c"


def test_error_inside_a_stream() -> None:
    event = (
        b'{"error": {"message": "Internal server error", "type": "InternalServerError", "param": null, "code": 500}}'
    )
    info = parse_stream_error(event)
    assert info == ErrorInfo("Internal server error", "server_error", None, None)
    bad = stream_error_info({"error": {"message": "bad logits", "type": "BadRequestError", "code": 400}})
    assert bad is not None
    assert bad.type == "invalid_request_error"
    assert stream_error_info({"error": "boom"}) == ErrorInfo("boom", "server_error")


def test_normal_stream_events_are_not_errors() -> None:
    chunk = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"delta":{"content":"hi"}}]}'
    assert parse_stream_error(chunk) is None
    assert parse_stream_error(b"[DONE]") is None
    assert parse_stream_error(b'{"error" broken') is None
    assert stream_error_info({"choices": []}) is None
