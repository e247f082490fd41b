"""The one error model: every exception becomes one OpenAIError whose status, type, code and headers are
decided in gateway.errors, and whose body is OpenAI's error shape (Litestar's side: test_litestar_errors.py)."""

from __future__ import annotations

import msgspec
import pytest

from gateway.auth.errors import InvalidKeyError, MissingKeyError, TenantNameTakenError
from gateway.db.errors import DatabaseUnavailableError
from gateway.engines.errors import EngineStreamBrokenError, EngineTimeoutError, ModelNotServedError
from gateway.errors import (
    ApiError,
    ClientDisconnectedError,
    ErrorResponse,
    HeaderFieldsTooLargeError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OpenAIError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServerShuttingDownError,
    UnsupportedMediaTypeError,
    encode_error,
    error_body_for,
    error_for_status,
)
from policies.errors import PolicyError


def _decoded(error: OpenAIError) -> ErrorResponse:
    return msgspec.json.decode(error.to_bytes(), type=ErrorResponse)


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code"),
    [
        (InvalidRequestError("bad", param="model", code="invalid_value"), 400, "invalid_request_error",
         "invalid_value"),
        (NotFoundError("no such URL"), 404, "invalid_request_error", "unknown_url"),
        (MethodNotAllowedError("no", allow="GET"), 405, "invalid_request_error", "method_not_allowed"),
        (RequestTimeoutError("slow"), 408, "invalid_request_error", "request_timeout"),
        (PayloadTooLargeError("big"), 413, "invalid_request_error", "payload_too_large"),
        (UnsupportedMediaTypeError("xml"), 415, "invalid_request_error", "unsupported_media_type"),
        (HeaderFieldsTooLargeError("huge head"), 431, "invalid_request_error", "request_header_fields_too_large"),
        (ClientDisconnectedError("gone"), 499, "invalid_request_error", "client_disconnected"),
        (ServerShuttingDownError("stopping"), 503, "server_error", "server_shutting_down"),
        (MissingKeyError("no key"), 401, "authentication_error", "missing_api_key"),
        (InvalidKeyError("bad key"), 401, "authentication_error", "invalid_api_key"),
        (TenantNameTakenError("taken"), 409, "invalid_request_error", "tenant_exists"),
        (ModelNotServedError("m"), 404, "invalid_request_error", "model_not_found"),
        (EngineTimeoutError("late"), 504, "server_error", "engine_timeout"),
        (EngineStreamBrokenError("cut"), 502, "server_error", "engine_disconnected"),
        (DatabaseUnavailableError(), 503, "server_error", "database_unavailable"),
    ],
)
def test_each_error_has_its_status_type_and_code(exc: Exception, status: int, type_: str, code: str) -> None:
    error = error_body_for(exc)
    assert (error.status, error.type, error.code) == (status, type_, code)
    body = _decoded(error)
    assert (body.error.message, body.error.type, body.error.code) == (str(exc), type_, code)


def test_param_reaches_the_body() -> None:
    assert _decoded(error_body_for(InvalidRequestError("bad", param="messages"))).error.param == "messages"
    assert error_body_for(TenantNameTakenError("taken")).param == "name"


def test_the_body_is_openais_shape_byte_for_byte() -> None:
    expected = msgspec.json.encode({"error": {"message": "m", "type": "t", "param": None, "code": "c"}})
    assert encode_error("m", "t", None, "c") == expected
    assert OpenAIError(400, "m", "t", None, "c").to_bytes() == expected


def test_every_503_says_when_to_retry_once() -> None:
    for exc in (DatabaseUnavailableError(), ServerShuttingDownError("stopping")):
        assert error_body_for(exc).headers == (("retry-after", "1"),)
    own = ServerShuttingDownError("stopping", headers=(("retry-after", "30"),))
    assert error_body_for(own).headers == (("retry-after", "30"),)
    assert error_for_status(503, "down").headers == (("retry-after", "1"),)
    assert error_body_for(InvalidRequestError("bad")).headers == ()


def test_a_405_names_what_is_allowed() -> None:
    assert error_body_for(MethodNotAllowedError("no", allow="GET, HEAD")).headers == (("allow", "GET, HEAD"),)


def test_a_domain_error_brings_its_own_headers() -> None:
    class QuotaExceededError(PolicyError):
        code = "quota_exceeded"

        def __init__(self) -> None:
            super().__init__("Over quota", param=None)
            self.headers = (("x-ratelimit-remaining-tokens", "0"),)

    error = error_body_for(QuotaExceededError())
    assert (error.status, error.code) == (400, "quota_exceeded")
    assert error.headers == (("x-ratelimit-remaining-tokens", "0"),)


def test_an_unknown_exception_is_a_500_that_reveals_nothing() -> None:
    error = error_body_for(RuntimeError("password=hunter2 at /srv/secret.py"))
    assert (error.status, error.type, error.code) == (500, "server_error", None)
    assert "hunter2" not in error.message and "secret" not in error.message


def test_a_stream_error_event_is_the_error_then_done() -> None:
    event = error_body_for(ServerShuttingDownError("stopping")).stream_event()
    first, second, rest = event.split(b"\n\n")
    assert first.startswith(b"data: ") and second == b"data: [DONE]" and rest == b""
    assert msgspec.json.decode(first.removeprefix(b"data: "), type=ErrorResponse).error.code == "server_shutting_down"


def test_api_errors_are_one_family() -> None:
    assert all(issubclass(cls, ApiError) for cls in (InvalidRequestError, NotFoundError, ServerShuttingDownError))
