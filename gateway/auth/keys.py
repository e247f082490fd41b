"""API key format: ``sk-tg-<public id>-<secret>``; only a SHA-256 of the whole key is stored.

The public id (12 base62 characters) is the lookup prefix shown in listings; the secret is 40 base62
characters (about 238 bits), so a fast hash is enough: there is nothing to brute-force. The platform
admin key has its own prefix, ``sk-tgadmin-``, and is never a tenant key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

TENANT_KEY_PREFIX = "sk-tg-"
ADMIN_KEY_PREFIX = "sk-tgadmin-"
_ALPHABET = string.ascii_letters + string.digits
_PUBLIC_ID_LENGTH = 12
_SECRET_LENGTH = 40
_TENANT_KEY = re.compile(r"sk-tg-([A-Za-z0-9]{12})-[A-Za-z0-9]{40}")


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def same_digest(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str
    public_id: str
    digest: bytes


def generate_tenant_key() -> NewKey:
    public_id = _random(_PUBLIC_ID_LENGTH)
    key = f"{TENANT_KEY_PREFIX}{public_id}-{_random(_SECRET_LENGTH)}"
    return NewKey(key, public_id, digest(key))


def generate_admin_key() -> NewKey:
    key = ADMIN_KEY_PREFIX + _random(_SECRET_LENGTH + _PUBLIC_ID_LENGTH)
    return NewKey(key, "", digest(key))


def public_id_of(key: str) -> str | None:
    """The lookup prefix of a well-formed tenant key, else None (then no database lookup is made)."""
    match = _TENANT_KEY.fullmatch(key)
    return match.group(1) if match else None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
