"""The current request id, carried in a context variable so logs and usage events can name the request.

The gateway sets it once per request (reusing a valid client-sent ``x-request-id``, else a new one) and
resets it when the request ends; tasks spawned inside the request inherit it (asyncio copies the context).
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar, Token

__all__ = [
    "get_request_id",
    "is_valid_request_id",
    "new_request_id",
    "reset_request_id",
    "set_request_id",
]

_request_id: ContextVar[str | None] = ContextVar("tenantgate_request_id", default=None)

# What a client may send as x-request-id: printable ASCII, no spaces or quotes, 1..128 characters.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def get_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return _request_id.get()


def set_request_id(request_id: str | None) -> Token[str | None]:
    """Make ``request_id`` current; pass the returned token to :func:`reset_request_id` when done."""
    return _request_id.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    """Restore the request id that was current before the matching :func:`set_request_id`."""
    _request_id.reset(token)


def new_request_id() -> str:
    """A fresh id: ``req_`` and 24 hex digits (96 random bits)."""
    return "req_" + secrets.token_hex(12)


def is_valid_request_id(value: str) -> bool:
    """Whether a client-sent ``x-request-id`` may be reused as is ([A-Za-z0-9._:-], 1..128 characters)."""
    return _VALID_REQUEST_ID.fullmatch(value) is not None
