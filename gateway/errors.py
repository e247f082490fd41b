"""Every error the gateway answers, in OpenAI's shape, mapped in this one module.

Shape: ``{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}``.

Hierarchy of the gateway's own request errors (domain packages raise their own; see ``_DOMAIN``)::

    ApiError                      carries status, type, param, code
    ├── InvalidRequestError       400 invalid_request_error
    ├── AuthenticationError       401 authentication_error
    ├── PermissionDeniedError     403 permission_error
    ├── NotFoundError             404 invalid_request_error
    ├── ConflictError             409 invalid_request_error
    ├── RequestTimeoutError       408 invalid_request_error
    ├── PayloadTooLargeError      413 invalid_request_error
    └── UnsupportedMediaTypeError 415 invalid_request_error

Only 5xx answers are logged (with the traceback for unexpected ones); a 500 never shows internals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from adapters.errors import AdapterError
from gateway.auth.errors import (
    AuthError,
    InsufficientRoleError,
    KeyNotFoundError,
    TenantDisabledError,
    TenantNameTakenError,
    TenantNotFoundError,
)
from gateway.db.errors import DatabaseUnavailableError
from gateway.engines.errors import (
    EngineBadResponseError,
    EngineError,
    EngineTimeoutError,
    EngineUnavailableError,
    ModelNotServedError,
)
from observability.context import get_request_id
from observability.usage_queries import UsageQueryError
from policies.errors import PolicyError
from retrieval.errors import RetrievalError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as-is: the gateway's own request validation raises these."""

    status: int = 400
    type: str = "invalid_request_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidRequestError(ApiError):
    status = 400


class AuthenticationError(ApiError):
    status = 401
    type = "authentication_error"


class PermissionDeniedError(ApiError):
    status = 403
    type = "permission_error"


class NotFoundError(ApiError):
    status = 404


class ConflictError(ApiError):
    status = 409


class RequestTimeoutError(ApiError):
    status = 408
    default_code = "request_timeout"


class PayloadTooLargeError(ApiError):
    status = 413
    default_code = "payload_too_large"


class ClientDisconnectedError(ApiError):
    """The client went away; the answer (nginx's 499) reaches nobody but the logs and usage rows."""

    status = 499
    default_code = "client_disconnected"


class UnsupportedMediaTypeError(ApiError):
    status = 415
    default_code = "unsupported_media_type"


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """One error answer: status, OpenAI's four fields, and the headers that go with it (``Allow`` on a 405,
    ``Retry-After`` on a 503), decided here and sent alike by every path."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        return encode_error(self.message, self.type, self.param, self.code)


def encode_error(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return msgspec.json.encode({"error": {"message": message, "type": type_, "param": param, "code": code}})


# Domain errors: (status, OpenAI type). Looked up along the exception's MRO, so a base covers subclasses.
_DOMAIN: dict[type[Exception], tuple[int, str]] = {
    ModelNotServedError: (404, "invalid_request_error"),
    EngineUnavailableError: (503, "server_error"),
    DatabaseUnavailableError: (503, "server_error"),
    EngineTimeoutError: (504, "server_error"),
    EngineBadResponseError: (502, "server_error"),
    EngineError: (502, "server_error"),
    TenantNotFoundError: (404, "invalid_request_error"),
    KeyNotFoundError: (404, "invalid_request_error"),
    TenantNameTakenError: (409, "invalid_request_error"),
    TenantDisabledError: (403, "permission_error"),
    InsufficientRoleError: (403, "permission_error"),
    AuthError: (401, "authentication_error"),
    UsageQueryError: (400, "invalid_request_error"),
    AdapterError: (400, "invalid_request_error"),
    RetrievalError: (400, "invalid_request_error"),
    PolicyError: (400, "invalid_request_error"),
}


RETRY_AFTER = ("retry-after", "1")


def error_body_for(exc: BaseException, request: Request[Any, Any, Any] | None = None) -> ErrorBody:
    """The OpenAI error for any exception; unknown ones become a 500 that reveals nothing."""
    body = _error_body(exc, request)
    if body.status == 503 and not any(name == "retry-after" for name, _ in body.headers):
        return replace(body, headers=(*body.headers, RETRY_AFTER))
    return body


def _error_body(exc: BaseException, request: Request[Any, Any, Any] | None) -> ErrorBody:
    if isinstance(exc, ApiError):
        return ErrorBody(exc.status, exc.message, exc.type, exc.param, exc.code)
    for cls in type(exc).__mro__:
        mapped = _DOMAIN.get(cls)
        if mapped is not None:
            status, type_ = mapped
            return ErrorBody(
                status, getattr(exc, "message", str(exc)), type_, getattr(exc, "param", None),
                getattr(exc, "code", None),
            )
    if isinstance(exc, HTTPException):
        return _litestar_error(exc, request)
    rid = get_request_id()
    return ErrorBody(500, f"The server had an error processing your request (request id {rid}).", "server_error")


def _litestar_error(exc: HTTPException, request: Request[Any, Any, Any] | None) -> ErrorBody:
    where = f"{request.method} {request.url.path}" if request is not None else ""
    if isinstance(exc, NotFoundException):
        return ErrorBody(404, f"Invalid URL ({where})", "invalid_request_error", None, "unknown_url")
    if isinstance(exc, MethodNotAllowedException):  # Litestar names the route's methods in its Allow header
        allow = tuple((k.lower(), v) for k, v in (exc.headers or {}).items() if k.lower() == "allow")
        return ErrorBody(405, f"Method not allowed ({where})", "invalid_request_error", None, "method_not_allowed",
                         allow)
    if isinstance(exc, RequestEntityTooLarge):
        return ErrorBody(413, "Request body is larger than the configured limit", "invalid_request_error",
                         None, "payload_too_large")
    if isinstance(exc, ValidationException):
        param = _validation_param(exc.extra)
        message = _validation_message(exc) if param is None else f"Invalid value for '{param}'"
        return ErrorBody(400, message, "invalid_request_error", param, "invalid_value")
    status = exc.status_code
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return ErrorBody(status, str(exc.detail) or "Request failed", type_)


def _validation_param(extra: Any) -> str | None:
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        key = extra[0].get("key")
        return str(key) if key else None
    return None


def _validation_message(exc: ValidationException) -> str:
    return str(exc.detail) or "Invalid request"


def answer_error(
    exc: BaseException, method: str, path: str, request: Request[Any, Any, Any] | None = None
) -> ErrorBody:
    """The error to answer for ``exc``, logged when it is the server's (5xx): the one place errors become HTTP,
    for Litestar's handlers (through ``exception_to_response``) and the plain-ASGI inference routes alike."""
    body = error_body_for(exc, request)
    if body.status >= 500:
        if body.status == 500:
            log.error("unhandled error on %s %s", method, path, exc_info=exc)
        elif body.status == 503:  # an outage: the part that noticed it (engine pool, database pool) logs it once
            log.debug("503 on %s %s: %s", method, path, body.message)
        else:
            log.warning("%s on %s %s: %s", body.status, method, path, body.message)
    return body


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar's exception handler for everything."""
    body = answer_error(exc, request.method, request.url.path, request)
    return Response(content=body.to_bytes(), status_code=body.status, media_type=MediaType.JSON,
                    headers=dict(body.headers) or None)


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {Exception: exception_to_response}
