"""Every error the gateway answers, in OpenAI's shape: statuses, types and headers are decided here only.

Shape: ``{"error": {"message": str, "type": str, "param": str | null, "code": str | null}}``
(:class:`ErrorResponse`, the same type the OpenAPI document declares for every error status).

One answer type, :class:`OpenAIError` (status, message, type, param, code, headers), is what every path
sends: Litestar's handlers (through ``gateway.litestar_errors``), the plain-ASGI inference routes, the 431
of the server protocol, and error events in the middle of a stream (:meth:`OpenAIError.stream_event`).
:func:`error_body_for` turns any exception into one.

Hierarchy of the gateway's own request errors (domain packages raise their own, mapped in ``_DOMAIN``)::

    ApiError                         carries status, type, param, code, headers
    ├── InvalidRequestError          400 invalid_request_error
    ├── NotFoundError                404 invalid_request_error   (unknown URL)
    ├── MethodNotAllowedError        405 invalid_request_error   (+ Allow)
    ├── RequestTimeoutError          408 invalid_request_error   request_timeout
    ├── PayloadTooLargeError         413 invalid_request_error   payload_too_large
    ├── UnsupportedMediaTypeError    415 invalid_request_error   unsupported_media_type
    ├── HeaderFieldsTooLargeError    431 invalid_request_error   request_header_fields_too_large
    ├── ClientDisconnectedError      499 invalid_request_error   client_disconnected (nobody reads it)
    └── ServerShuttingDownError      503 server_error            server_shutting_down (+ Retry-After)

Headers: a 503 always carries ``Retry-After``; a 405 its ``Allow``; a domain error may bring its own
(``headers``, e.g. a policy's ``x-ratelimit-*``), sent as given. Only 5xx answers are logged (with the
traceback for unexpected ones); a 500 never shows internals. This module imports no web framework, so
the framework-free packages (``gateway.services``, ``gateway.openai``) can raise and encode errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import msgspec

from adapters import errors as adapter_errors
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
from retrieval import errors as retrieval_errors
from retrieval.errors import FileNotFound, FileTooLarge, RetrievalError

log = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"

RETRY_AFTER_SECONDS = "1"


class ErrorObject(msgspec.Struct):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct):
    """OpenAI's error body: what every error answer and every stream error event carries."""

    error: ErrorObject


_encode = msgspec.json.Encoder().encode


def encode_error(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return _encode(ErrorResponse(ErrorObject(message, type_, param, code)))


@dataclass(frozen=True, slots=True)
class OpenAIError:
    """One error answer: status, OpenAI's four fields, and the headers that go with it, sent alike by every path."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    headers: Headers = ()

    def to_bytes(self) -> bytes:
        return encode_error(self.message, self.type, self.param, self.code)

    def stream_event(self) -> bytes:
        """The error as the last events of a stream already answered 200: the error object, then ``[DONE]``."""
        return b"data: " + self.to_bytes() + b"\n\ndata: [DONE]\n\n"


ErrorBody = OpenAIError  # the name the routes and services used first


class ApiError(Exception):
    """An error of the gateway's own, answered as-is; a subclass fixes the status and the type."""

    status: ClassVar[int] = 400
    type: ClassVar[str] = INVALID_REQUEST
    default_code: ClassVar[str | None] = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, headers: Headers = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers


class InvalidRequestError(ApiError):
    status = 400


class NotFoundError(ApiError):
    """No route at this URL."""

    status = 404
    default_code = "unknown_url"


class MethodNotAllowedError(ApiError):
    """The URL exists, not for this method; ``allow`` lists the methods it has (the ``Allow`` header)."""

    status = 405
    default_code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message, headers=(("allow", allow),) if allow else ())


class RequestTimeoutError(ApiError):
    status = 408
    default_code = "request_timeout"


class PayloadTooLargeError(ApiError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaTypeError(ApiError):
    status = 415
    default_code = "unsupported_media_type"


class HeaderFieldsTooLargeError(ApiError):
    """The request line and headers are over the server's bound (answered by the server protocol)."""

    status = 431
    default_code = "request_header_fields_too_large"


class ClientDisconnectedError(ApiError):
    """The client went away; the answer (nginx's 499) reaches nobody but the logs and usage rows."""

    status = 499
    default_code = "client_disconnected"


class ServerShuttingDownError(ApiError):
    """The server is stopping: a stream still running when the drain time is up is ended with this."""

    status = 503
    type = SERVER
    default_code = "server_shutting_down"


# Domain errors: (status, OpenAI type). Looked up along the exception's MRO, so a base covers subclasses.
# Their message, ``param``, ``code`` and ``headers`` (attributes, where present) are sent as they are.
_DOMAIN: dict[type[BaseException], tuple[int, str]] = {
    ModelNotServedError: (404, INVALID_REQUEST),
    EngineUnavailableError: (503, SERVER),
    DatabaseUnavailableError: (503, SERVER),
    EngineTimeoutError: (504, SERVER),
    EngineBadResponseError: (502, SERVER),
    EngineError: (502, SERVER),
    TenantNotFoundError: (404, INVALID_REQUEST),
    KeyNotFoundError: (404, INVALID_REQUEST),
    TenantNameTakenError: (409, INVALID_REQUEST),
    TenantDisabledError: (403, PERMISSION),
    InsufficientRoleError: (403, PERMISSION),
    AuthError: (401, AUTHENTICATION),
    UsageQueryError: (400, INVALID_REQUEST),
    adapter_errors.AdapterNotFound: (404, INVALID_REQUEST),
    adapter_errors.AdapterNameTaken: (409, INVALID_REQUEST),
    adapter_errors.AdapterTooLarge: (413, INVALID_REQUEST),
    adapter_errors.AdapterLoadFailed: (502, SERVER),
    adapter_errors.AdapterCapacityExhausted: (503, SERVER),
    AdapterError: (400, INVALID_REQUEST),
    FileNotFound: (404, INVALID_REQUEST),
    FileTooLarge: (413, INVALID_REQUEST),
    retrieval_errors.NotFound: (404, INVALID_REQUEST),
    retrieval_errors.EmbeddingUnavailable: (503, SERVER),
    retrieval_errors.EmbeddingFailed: (502, SERVER),
    RetrievalError: (400, INVALID_REQUEST),
    PolicyError: (400, INVALID_REQUEST),
}


def type_for_status(status: int) -> str:
    """OpenAI's error type for an HTTP status."""
    if status == 401:
        return AUTHENTICATION
    if status == 403:
        return PERMISSION
    if status == 429:
        return RATE_LIMIT
    return INVALID_REQUEST if 400 <= status < 500 else SERVER


def status_of_stream_error(type_: str) -> int:
    """The status a usage row records for an error event an engine sent inside a stream already answered 200:
    the tenant's fault (400) when the engine calls the request invalid, else the engine's (502)."""
    return 400 if type_ == INVALID_REQUEST else 502


def error_for_status(status: int, message: str, *, code: str | None = None, headers: Headers = ()) -> OpenAIError:
    """The error for a status another layer reported (a framework's own HTTP error): the type and the headers
    that go with the status are decided here."""
    return _finish(OpenAIError(status, message or "Request failed", type_for_status(status), None, code, headers))


def error_body_for(exc: BaseException) -> OpenAIError:
    """The OpenAI error for any exception; unknown ones become a 500 that reveals nothing."""
    if isinstance(exc, ApiError):
        return _finish(OpenAIError(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers))
    for cls in type(exc).__mro__:
        mapped = _DOMAIN.get(cls)
        if mapped is not None:
            status, type_ = mapped
            return _finish(OpenAIError(
                status, getattr(exc, "message", str(exc)), type_, getattr(exc, "param", None),
                getattr(exc, "code", None), _headers_of(exc),
            ))  # fmt: skip
    rid = get_request_id()
    return OpenAIError(500, f"The server had an error processing your request (request id {rid}).", SERVER)


def _headers_of(exc: BaseException) -> Headers:
    headers = getattr(exc, "headers", None)
    return tuple(headers) if isinstance(headers, Iterable) else ()


def _finish(error: OpenAIError) -> OpenAIError:
    """Add the headers a status implies: ``Retry-After`` on a 503 (the outage is expected to pass)."""
    if error.status == 503 and not any(name == "retry-after" for name, _ in error.headers):
        return OpenAIError(
            error.status, error.message, error.type, error.param, error.code,
            (*error.headers, ("retry-after", RETRY_AFTER_SECONDS)),
        )  # fmt: skip
    return error


def answer_error(exc: BaseException, method: str, path: str) -> OpenAIError:
    """The error to answer for ``exc``, logged when it is the server's (5xx): the one place errors become HTTP,
    for Litestar's handlers (``gateway.litestar_errors``) and the plain-ASGI inference routes alike."""
    return log_answer(error_body_for(exc), exc, method, path)


def log_answer(error: OpenAIError, exc: BaseException, method: str, path: str) -> OpenAIError:
    """Log a 5xx answer: a 500 with its traceback, a 503 at debug (the part that noticed the outage, engine pool
    or database pool, logs it once), others as a warning."""
    if error.status >= 500:
        if error.status == 500:
            log.error("unhandled error on %s %s", method, path, exc_info=exc)
        elif error.status == 503:
            log.debug("503 on %s %s: %s", method, path, error.message)
        else:
            log.warning("%s on %s %s: %s", error.status, method, path, error.message)
    return error
