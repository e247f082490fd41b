"""Errors of tenants, keys and authentication; ``gateway.errors`` maps them to HTTP.

::

    AuthError                 the request could not be authenticated (401)
    ├── MissingKeyError
    └── InvalidKeyError       malformed, unknown, revoked or expired key
    TenantDisabledError       (403)
    InsufficientRoleError     (403)
    TenantNotFoundError       (404)
    KeyNotFoundError          (404)
    TenantNameTakenError      (409)
"""

from __future__ import annotations


class _CodedError(Exception):
    code: str = "error"
    param: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AuthError(_CodedError):
    code = "invalid_api_key"


class MissingKeyError(AuthError):
    code = "missing_api_key"


class InvalidKeyError(AuthError):
    code = "invalid_api_key"


class TenantDisabledError(_CodedError):
    code = "tenant_disabled"


class InsufficientRoleError(_CodedError):
    code = "insufficient_permissions"


class TenantNotFoundError(_CodedError):
    code = "tenant_not_found"


class KeyNotFoundError(_CodedError):
    code = "key_not_found"


class TenantNameTakenError(_CodedError):
    code = "tenant_exists"
    param = "name"
