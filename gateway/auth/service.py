"""Authentication of tenant keys and the platform admin key, with a short in-process cache.

A key that authenticated is cached for ``ttl`` seconds (``TENANTGATE_AUTH_CACHE_TTL``), keyed by the key's
SHA-256, so a request costs no database round trip: a hit is one dict lookup. Revocation and tenant
disable reach every replica within ``ttl``; the replica that made the change forgets its entries at once.
Expiry is checked on every request against the cached ``expires_at``, so it is exact.

Keys that did not authenticate are remembered apart, by public id, in a table of the same bound: a flood
of random well-formed keys costs at most one query per distinct public id per ``ttl`` (any secret sent
with a public id already looked up costs none) and can never push an authenticated key out of the cache.
Malformed keys are refused without a lookup and leave no entry.

Requests that miss the cache for the same key at the same time (the first burst after a start, or an
entry expiring under load) share one database lookup rather than each taking a pooled connection for
their own: at 1,000 req/s a 2 ms lookup would otherwise be made by every request of those 2 ms.

While the database is unavailable (a lookup raised ``DatabaseUnavailableError``), a key that authenticated
before keeps working from its expired entry, at once, and a lookup runs behind the request; the first
one that succeeds after the database is back replaces the entry, so a revocation made meanwhile takes
effect then. A key never seen before gets the 503.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from typing import Literal, TypeVar

from psycopg_pool import AsyncConnectionPool

from gateway.auth import store
from gateway.auth.errors import (
    InsufficientRoleError,
    InvalidKeyError,
    MissingKeyError,
    TenantDisabledError,
)
from gateway.auth.keys import ADMIN_KEY_PREFIX, bearer_token, digest, public_id_of, same_digest
from gateway.auth.principal import Principal
from gateway.db.errors import DatabaseUnavailableError

_MISSING = "Missing API key. Send it as 'Authorization: Bearer <key>'."
_INVALID = "Incorrect API key provided."

K = TypeVar("K")
V = TypeVar("V")


def _put(table: OrderedDict[K, V], key: K, value: V, bound: int) -> None:
    """Insert as the newest entry, dropping the oldest beyond ``bound``."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > bound:
        table.popitem(last=False)


class Authenticator:
    def __init__(
        self, pool: AsyncConnectionPool, *, admin_key_hash: bytes | None, ttl: float = 10.0,
        max_entries: int = 10_000,
    ) -> None:
        self._pool = pool
        self._admin_key_hash = admin_key_hash
        self._ttl = ttl
        self._max_entries = max_entries
        # Keys that authenticated: key hash -> (looked up at, the row whose secret hash it is).
        self._cache: OrderedDict[bytes, tuple[float, store.KeyRecord]] = OrderedDict()
        # Public ids whose lookup authenticated nobody: public id -> (looked up at, its row or None).
        self._refused: OrderedDict[str, tuple[float, store.KeyRecord | None]] = OrderedDict()
        self._lookups: dict[str, asyncio.Task[store.KeyRecord | None]] = {}
        self._database_down = False

    async def tenant(self, authorization: str | None, *, role: Literal["admin", "user"] = "user") -> Principal:
        """Authenticate a tenant key; ``role='admin'`` also requires a tenant admin key."""
        token = bearer_token(authorization)
        if token is None:
            raise MissingKeyError(_MISSING)
        record = await self._record(token)
        if record is None:
            if token.startswith(ADMIN_KEY_PREFIX):
                raise InsufficientRoleError("The platform admin key is only valid on /admin endpoints.")
            raise InvalidKeyError(_INVALID)
        if record.revoked:
            raise InvalidKeyError("This API key has been revoked.")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise InvalidKeyError("This API key has expired.")
        if record.tenant_disabled:
            raise TenantDisabledError("This tenant is disabled. Contact your platform administrator.")
        if role == "admin" and record.role != "admin":
            raise InsufficientRoleError("This endpoint needs a tenant admin key; this key has the 'user' role.")
        return Principal(record.tenant_id, record.tenant_name, record.key_id, record.role)

    def platform_admin(self, authorization: str | None) -> None:
        """Check the platform admin key (held as a hash, compared in constant time)."""
        token = bearer_token(authorization)
        if token is None:
            raise MissingKeyError(_MISSING)
        if self._admin_key_hash is None or not same_digest(self._admin_key_hash, digest(token)):
            if public_id_of(token) is not None:
                raise InsufficientRoleError("This endpoint needs the platform admin key.")
            raise InvalidKeyError(_INVALID)

    def forget_tenant(self, tenant_id: object) -> None:
        """Drop cached entries of one tenant (after a change made by this process)."""
        for key_hash in [h for h, (_, r) in self._cache.items() if r.tenant_id == tenant_id]:
            self._cache.pop(key_hash, None)
        for public_id in [p for p, (_, r) in self._refused.items() if r is not None and r.tenant_id == tenant_id]:
            self._refused.pop(public_id, None)

    async def _record(self, token: str) -> store.KeyRecord | None:
        """The row ``token`` is the key of, or None when it is the key of none."""
        key_hash = digest(token)
        now = time.monotonic()
        hit = self._cache.get(key_hash)
        if hit is not None:
            if now - hit[0] < self._ttl:
                return hit[1]
            if self._database_down:
                self._refresh(token, key_hash)
                return hit[1]
        public_id = public_id_of(token)
        if public_id is None:
            return None
        refused = self._refused.get(public_id)
        if refused is not None and now - refused[0] < self._ttl:
            return self._authenticated(key_hash, *refused)
        try:
            record = await self._lookup(public_id)
        except DatabaseUnavailableError:
            self._database_down = True
            if hit is None:
                raise
            return hit[1]
        self._database_down = False
        return self._remember(public_id, key_hash, now, record)

    def _authenticated(
        self, key_hash: bytes, looked_up_at: float, record: store.KeyRecord | None
    ) -> store.KeyRecord | None:
        """``record`` if ``key_hash`` is its secret's hash (then cached as such), else None."""
        if record is None or not same_digest(record.secret_hash, key_hash):
            return None
        _put(self._cache, key_hash, (looked_up_at, record), self._max_entries)
        return record

    def _remember(
        self, public_id: str, key_hash: bytes, looked_up_at: float, record: store.KeyRecord | None
    ) -> store.KeyRecord | None:
        """Cache a lookup's result for the key that asked: with the keys, or with the refused public ids."""
        if self._authenticated(key_hash, looked_up_at, record) is not None:
            return record
        self._cache.pop(key_hash, None)  # its key is gone (or never was): no stale entry to fall back on
        _put(self._refused, public_id, (looked_up_at, record), self._max_entries)
        return None

    def _refresh(self, token: str, key_hash: bytes) -> None:
        """Look a key up behind the request that was served from its expired entry (the database was down)."""
        public_id = public_id_of(token)
        if public_id is None or public_id in self._lookups:
            return  # a lookup is under way: its caller, or the first request after it, updates the entry
        task = self._start_lookup(public_id)
        task.add_done_callback(functools.partial(self._refreshed, public_id, key_hash, time.monotonic()))

    def _refreshed(
        self, public_id: str, key_hash: bytes, started: float, task: asyncio.Task[store.KeyRecord | None]
    ) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # still down: the entry keeps serving
        self._database_down = False
        self._remember(public_id, key_hash, started, task.result())

    async def _lookup(self, public_id: str) -> store.KeyRecord | None:
        """The key's row, from the lookup already in flight for ``public_id`` if there is one.

        The lookup runs as its own task and each caller awaits it shielded: a caller that is cancelled (its
        client went away) does not cancel it for the others.
        """
        return await asyncio.shield(self._start_lookup(public_id))

    def _start_lookup(self, public_id: str) -> asyncio.Task[store.KeyRecord | None]:
        task = self._lookups.get(public_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(store.lookup_key(self._pool, public_id))
            self._lookups[public_id] = task
            task.add_done_callback(lambda done: self._lookup_done(public_id, done))
        return task

    def _lookup_done(self, public_id: str, task: asyncio.Task[store.KeyRecord | None]) -> None:
        if self._lookups.get(public_id) is task:
            del self._lookups[public_id]
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have gone before it failed
