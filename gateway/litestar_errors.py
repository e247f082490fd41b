"""Litestar's side of the error model: its exceptions in the gateway's terms, and its exception handler.

Litestar raises its own ``HTTPException`` family for what it decides before a handler runs (no route,
wrong method, a body over ``request_max_body_size``, a path or query parameter that does not parse). They
are translated here into the gateway's errors, whose statuses, types and headers ``gateway.errors``
decides, so that module stays free of Litestar and the framework-free packages can import it.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from gateway.errors import (
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OpenAIError,
    PayloadTooLargeError,
    answer_error,
    error_for_status,
    log_answer,
)

__all__ = ["EXCEPTION_HANDLERS", "exception_to_response", "litestar_error"]


def litestar_error(exc: HTTPException, method: str, path: str) -> BaseException | OpenAIError:
    """The gateway error for one of Litestar's; an HTTP error it has no name for keeps Litestar's status."""
    where = f"{method} {path}"
    if isinstance(exc, NotFoundException):
        return NotFoundError(f"Invalid URL ({where})")
    if isinstance(exc, MethodNotAllowedException):  # Litestar names the route's methods in its Allow header
        allow = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        return MethodNotAllowedError(f"Method not allowed ({where})", allow=allow)
    if isinstance(exc, RequestEntityTooLarge):
        return PayloadTooLargeError("Request body is larger than the configured limit")
    if isinstance(exc, ValidationException):
        param = _validation_param(exc.extra)
        message = (str(exc.detail) or "Invalid request") if param is None else f"Invalid value for '{param}'"
        return InvalidRequestError(message, param=param, code="invalid_value")
    headers = tuple((k.lower(), v) for k, v in (exc.headers or {}).items())
    return error_for_status(exc.status_code, str(exc.detail), headers=headers)


def _validation_param(extra: Any) -> str | None:
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        key = extra[0].get("key")
        return str(key) if key else None
    return None


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar's exception handler for everything."""
    method, path = request.method, request.url.path
    if isinstance(exc, HTTPException):
        translated = litestar_error(exc, method, path)
        error = (
            log_answer(translated, exc, method, path) if isinstance(translated, OpenAIError)
            else answer_error(translated, method, path)
        )
    else:
        error = answer_error(exc, method, path)
    return Response(content=error.to_bytes(), status_code=error.status, media_type=MediaType.JSON,
                    headers=dict(error.headers) or None)


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {Exception: exception_to_response}
