"""Tenants, API keys and the platform admin key in Postgres. Every value goes as a query parameter."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway.auth.errors import KeyNotFoundError, TenantNameTakenError, TenantNotFoundError
from gateway.auth.keys import TENANT_KEY_PREFIX, NewKey, generate_admin_key, generate_tenant_key

Role = Literal["admin", "user"]
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class Tenant(msgspec.Struct, frozen=True):
    id: str
    name: str
    status: Literal["active", "disabled"]
    created_at: int
    disabled_at: int | None
    object: str = "tenant"


class ApiKeyInfo(msgspec.Struct, frozen=True):
    id: str
    tenant_id: str
    name: str | None
    role: Role
    prefix: str
    status: Literal["active", "revoked", "expired"]
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    object: str = "api_key"


class CreatedApiKey(msgspec.Struct, frozen=True):
    """The one answer that carries the secret ``key``."""

    id: str
    key: str
    tenant_id: str
    name: str | None
    role: Role
    prefix: str
    created_at: int
    expires_at: int | None
    object: str = "api_key"


class KeyRecord(msgspec.Struct, frozen=True):
    """What authentication needs about a key (cached in process)."""

    key_id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_name: str
    role: Role
    secret_hash: bytes
    expires_at: float | None
    revoked: bool
    tenant_disabled: bool


def _ts(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


def _tenant(row: tuple[Any, ...]) -> Tenant:
    tid, name, created_at, disabled_at = row
    status: Literal["active", "disabled"] = "disabled" if disabled_at else "active"
    return Tenant(str(tid), name, status, int(created_at.timestamp()), _ts(disabled_at))


def _key_info(row: tuple[Any, ...], now: datetime) -> ApiKeyInfo:
    kid, tid, name, role, public_id, created_at, expires_at, revoked_at = row
    status: Literal["active", "revoked", "expired"] = "active"
    if revoked_at is not None:
        status = "revoked"
    elif expires_at is not None and expires_at <= now:
        status = "expired"
    return ApiKeyInfo(
        str(kid), str(tid), name, role, TENANT_KEY_PREFIX + public_id, status,
        int(created_at.timestamp()), _ts(expires_at), _ts(revoked_at),
    )


_TENANT_COLS = "id, name, created_at, disabled_at"
_KEY_COLS = "id, tenant_id, name, role, public_id, created_at, expires_at, revoked_at"


async def audit(
    conn: psycopg.AsyncConnection[Any], actor: str, action: str, tenant_id: uuid.UUID | None,
    target: str | None, request_id: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, tenant_id, target, request_id) VALUES (%s, %s, %s, %s, %s)",
        (actor, action, tenant_id, target, request_id),
    )


async def create_tenant(
    pool: AsyncConnectionPool, name: str, *, actor: str, request_id: str | None = None
) -> Tenant:
    tid = uuid.uuid4()
    async with pool.connection() as conn, conn.transaction():
        try:
            cur = await conn.execute(
                f"INSERT INTO tenants (id, name) VALUES (%s, %s) RETURNING {_TENANT_COLS}", (tid, name)
            )
        except psycopg.errors.UniqueViolation:
            raise TenantNameTakenError(f"A tenant named '{name}' already exists") from None
        row = await cur.fetchone()
        await audit(conn, actor, "tenant.create", tid, name, request_id)
    assert row is not None
    return _tenant(row)


async def list_tenants(pool: AsyncConnectionPool) -> list[Tenant]:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {_TENANT_COLS} FROM tenants ORDER BY created_at, name")
        return [_tenant(r) for r in await cur.fetchall()]


async def get_tenant(pool: AsyncConnectionPool, tenant_id: uuid.UUID) -> Tenant:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {_TENANT_COLS} FROM tenants WHERE id = %s", (tenant_id,))
        row = await cur.fetchone()
    if row is None:
        raise TenantNotFoundError(f"No tenant with id '{tenant_id}'")
    return _tenant(row)


async def tenant_by_name(pool: AsyncConnectionPool, name: str) -> Tenant:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT {_TENANT_COLS} FROM tenants WHERE name = %s", (name,))
        row = await cur.fetchone()
    if row is None:
        raise TenantNotFoundError(f"No tenant named '{name}'")
    return _tenant(row)


async def set_tenant_disabled(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, disabled: bool, *, actor: str,
    request_id: str | None = None,
) -> Tenant:
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE tenants SET disabled_at = CASE WHEN %s THEN coalesce(disabled_at, now()) ELSE NULL END"
            f" WHERE id = %s RETURNING {_TENANT_COLS}",
            (disabled, tenant_id),
        )
        row = await cur.fetchone()
        if row is None:
            raise TenantNotFoundError(f"No tenant with id '{tenant_id}'")
        await audit(conn, actor, "tenant.disable" if disabled else "tenant.enable", tenant_id, None, request_id)
    return _tenant(row)


async def create_key(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, role: Role, *, name: str | None = None,
    expires_at: datetime | None = None, actor: str, request_id: str | None = None,
) -> CreatedApiKey:
    new: NewKey = generate_tenant_key()
    kid = uuid.uuid4()
    async with pool.connection() as conn, conn.transaction():
        try:
            cur = await conn.execute(
                "INSERT INTO api_keys (id, tenant_id, public_id, secret_hash, role, name, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING created_at",
                (kid, tenant_id, new.public_id, new.digest, role, name, expires_at),
            )
        except psycopg.errors.ForeignKeyViolation:
            raise TenantNotFoundError(f"No tenant with id '{tenant_id}'") from None
        row = await cur.fetchone()
        await audit(conn, actor, "key.create", tenant_id, str(kid), request_id)
    assert row is not None
    return CreatedApiKey(
        str(kid), new.key, str(tenant_id), name, role, TENANT_KEY_PREFIX + new.public_id,
        int(row[0].timestamp()), _ts(expires_at),
    )


async def list_keys(pool: AsyncConnectionPool, tenant_id: uuid.UUID) -> list[ApiKeyInfo]:
    now = datetime.now(UTC)
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {_KEY_COLS} FROM api_keys WHERE tenant_id = %s ORDER BY created_at, id", (tenant_id,)
        )
        return [_key_info(r, now) for r in await cur.fetchall()]


async def revoke_key(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, key_id: uuid.UUID, *, actor: str,
    request_id: str | None = None,
) -> ApiKeyInfo:
    """Revoke a key of that tenant; revoking a revoked key is a no-op that answers the same."""
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
            f" WHERE id = %s AND tenant_id = %s RETURNING {_KEY_COLS}",
            (key_id, tenant_id),
        )
        row = await cur.fetchone()
        if row is None:
            raise KeyNotFoundError(f"No API key with id '{key_id}' in this tenant")
        await audit(conn, actor, "key.revoke", tenant_id, str(key_id), request_id)
    return _key_info(row, datetime.now(UTC))


async def lookup_key(pool: AsyncConnectionPool, public_id: str) -> KeyRecord | None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT k.id, k.tenant_id, t.name, k.role, k.secret_hash, k.expires_at,"
            " k.revoked_at IS NOT NULL, t.disabled_at IS NOT NULL"
            " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.public_id = %s",
            (public_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    kid, tid, tname, role, secret_hash, expires_at, revoked, disabled = row
    return KeyRecord(
        kid, tid, tname, role, bytes(secret_hash), None if expires_at is None else expires_at.timestamp(),
        revoked, disabled,
    )


async def stored_admin_key_hash(pool: AsyncConnectionPool) -> bytes | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT secret_hash FROM platform_admin_key")
        row = await cur.fetchone()
    return None if row is None else bytes(row[0])


async def ensure_admin_key(pool: AsyncConnectionPool) -> tuple[bytes, str | None]:
    """The stored admin key hash, generating a key first if none exists.

    Returns ``(hash, new_key)``: ``new_key`` is the clear key only for the one caller that created it
    (concurrent starters race on the singleton row; losers read the winner's hash).
    """
    new = generate_admin_key()
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO platform_admin_key (secret_hash) VALUES (%s) ON CONFLICT DO NOTHING RETURNING 1",
            (new.digest,),
        )
        created = await cur.fetchone() is not None
    if created:
        return new.digest, new.key
    stored = await stored_admin_key_hash(pool)
    assert stored is not None
    return stored, None
