"""Request bodies of the management API (tenants and keys)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

from gateway.auth.store import TENANT_NAME
from gateway.errors import InvalidRequestError


class CreateTenantRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str


class CreateKeyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["admin", "user"]
    name: str | None = None
    # Unix seconds, as OpenAI's timestamps, or an RFC 3339 string with a time zone.
    expires_at: int | datetime | None = None


def check_tenant_name(name: str) -> str:
    if TENANT_NAME.fullmatch(name) is None:
        raise InvalidRequestError(
            "Invalid tenant name: use 1-63 lower-case letters, digits, '-' or '_', starting with a letter or"
            " digit.",
            param="name", code="invalid_value",
        )
    return name


def check_key_request(req: CreateKeyRequest) -> datetime | None:
    if req.name is not None and (not 1 <= len(req.name) <= 100 or not req.name.isprintable()):
        raise InvalidRequestError(
            "'name' must be 1-100 printable characters.", param="name", code="invalid_value"
        )
    if req.expires_at is None:
        return None
    if isinstance(req.expires_at, int):
        try:
            when = datetime.fromtimestamp(req.expires_at, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidRequestError("'expires_at' is out of range.", param="expires_at",
                                      code="invalid_value") from None
    else:
        when = req.expires_at
        if when.tzinfo is None:
            raise InvalidRequestError("'expires_at' needs a time zone (e.g. 2027-01-01T00:00:00Z).",
                                      param="expires_at", code="invalid_value")
    if when <= datetime.now(UTC):
        raise InvalidRequestError("'expires_at' must be in the future.", param="expires_at", code="invalid_value")
    return when
