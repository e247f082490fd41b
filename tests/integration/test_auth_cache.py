"""The authentication cache under a flood of bad keys: what it costs in lookups, and what it keeps."""

from __future__ import annotations

import secrets
import string

import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.auth import store
from gateway.auth.errors import InvalidKeyError
from gateway.auth.service import Authenticator

_ALPHABET = string.ascii_letters + string.digits


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _random_key(public_id: str | None = None) -> str:
    return f"sk-tg-{public_id or _random(12)}-{_random(40)}"


def _lookups(pool: AsyncConnectionPool) -> int:
    """Connections asked of the pool since the last call: the authenticator asks one per key lookup."""
    return pool.pop_stats().get("requests_num", 0)


async def _valid_key(pool: AsyncConnectionPool) -> str:
    tenant = await store.create_tenant(pool, f"t-{secrets.token_hex(4)}", actor="test")
    created = await store.create_key(pool, store.parse_uuid(tenant.id), "user", actor="test")  # type: ignore[arg-type]
    return created.key


async def _refused(auth: Authenticator, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        await auth.tenant(f"Bearer {key}")


async def test_a_flood_of_random_keys_does_not_evict_a_known_key(db_pool: AsyncConnectionPool) -> None:
    auth = Authenticator(db_pool, admin_key_hash=None, ttl=60.0, max_entries=4)
    key = await _valid_key(db_pool)
    await auth.tenant(f"Bearer {key}")
    _lookups(db_pool)

    for _ in range(50):
        await _refused(auth, _random_key())
    for _ in range(50):
        await _refused(auth, "sk-tg-" + _random(20))  # malformed: no lookup at all
    assert _lookups(db_pool) == 50  # one per distinct public id, none for the malformed ones

    await auth.tenant(f"Bearer {key}")
    assert _lookups(db_pool) == 0  # still cached: the flood pushed out no authenticated key


async def test_secrets_sent_with_one_public_id_cost_one_lookup(db_pool: AsyncConnectionPool) -> None:
    auth = Authenticator(db_pool, admin_key_hash=None, ttl=60.0, max_entries=4)
    key = await _valid_key(db_pool)
    _lookups(db_pool)

    unknown_id = _random(12)
    for _ in range(30):
        await _refused(auth, _random_key(unknown_id))
    assert _lookups(db_pool) == 1

    known_id = key[6:18]  # a real key's public id (shown in key listings) with guessed secrets
    for _ in range(30):
        await _refused(auth, _random_key(known_id))
    assert _lookups(db_pool) == 1
    # The real key itself then authenticates from what that one lookup found.
    assert (await auth.tenant(f"Bearer {key}")).key_id is not None
    assert _lookups(db_pool) == 0


async def test_a_refused_entry_is_forgotten_with_its_tenant(db_pool: AsyncConnectionPool) -> None:
    """A change this process makes (revocation) is not undone by a row remembered for a wrong secret."""
    auth = Authenticator(db_pool, admin_key_hash=None, ttl=60.0)
    key = await _valid_key(db_pool)
    await _refused(auth, _random_key(key[6:18]))  # remembers the key's row under its public id
    record = await store.lookup_key(db_pool, key[6:18])
    assert record is not None
    await store.revoke_key(db_pool, record.tenant_id, record.key_id, actor="test")
    auth.forget_tenant(record.tenant_id)
    with pytest.raises(InvalidKeyError, match="revoked"):
        await auth.tenant(f"Bearer {key}")
