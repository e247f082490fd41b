"""Litestar's exceptions in the gateway's error model, through ``gateway.litestar_errors``."""

from __future__ import annotations

# The adapter's input is Litestar's own exceptions: this test alone outside gateway/ constructs them.
from litestar.exceptions import (  # noqa: TID251
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge  # noqa: TID251

from gateway.errors import OpenAIError, error_body_for
from gateway.litestar_errors import litestar_error


def _via_litestar(exc: HTTPException) -> OpenAIError:
    translated = litestar_error(exc, "GET", "/v1/nowhere")
    return translated if isinstance(translated, OpenAIError) else error_body_for(translated)


def test_litestar_not_found_is_an_unknown_url() -> None:
    error = _via_litestar(NotFoundException())
    assert (error.status, error.code) == (404, "unknown_url")
    assert "GET /v1/nowhere" in error.message


def test_litestar_method_not_allowed_keeps_its_allow_header() -> None:
    error = _via_litestar(MethodNotAllowedException(headers={"Allow": "GET, HEAD"}))
    assert (error.status, error.code, error.headers) == (405, "method_not_allowed", (("allow", "GET, HEAD"),))


def test_litestar_body_limit_is_a_413() -> None:
    assert _via_litestar(RequestEntityTooLarge()).code == "payload_too_large"


def test_litestar_validation_names_the_parameter() -> None:
    error = _via_litestar(ValidationException(detail="bad", extra=[{"key": "start", "message": "not a date"}]))
    assert (error.status, error.param, error.code) == (400, "start", "invalid_value")


def test_another_litestar_http_error_keeps_its_status_with_openais_type() -> None:
    error = _via_litestar(HTTPException(status_code=401, detail="who", headers={"WWW-Authenticate": "Bearer"}))
    assert (error.status, error.type, error.message, error.headers) == (
        401, "authentication_error", "who", (("www-authenticate", "Bearer"),)
    )
    assert _via_litestar(HTTPException(status_code=503)).headers == (("retry-after", "1"),)
