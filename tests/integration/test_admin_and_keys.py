"""Tenants and keys: the platform admin API, a tenant admin's /v1/keys, roles, revocation, expiry."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.integration.conftest import ADMIN_KEY, CHAT_MODEL, Gateway, TenantKeys, make_tenant


async def test_create_list_get_tenant(gateway: Gateway) -> None:
    async with gateway.admin() as admin:
        created = await admin.post("/admin/tenants", json={"name": "acme-corp"})
        assert created.status_code == 201
        tenant = created.json()
        assert tenant["name"] == "acme-corp" and tenant["status"] == "active" and tenant["object"] == "tenant"
        again = await admin.post("/admin/tenants", json={"name": "acme-corp"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "tenant_exists"
        listed = (await admin.get("/admin/tenants")).json()
        assert listed["object"] == "list" and tenant["id"] in [t["id"] for t in listed["data"]]
        assert (await admin.get(f"/admin/tenants/{tenant['id']}")).json() == tenant


@pytest.mark.parametrize(
    "name",
    ["", "UPPER", "a b", "x'; DROP TABLE tenants; --", "../etc/passwd", "a" * 64, "-dash-first", "ünï"],
)
async def test_hostile_or_invalid_tenant_names_are_400(gateway: Gateway, name: str) -> None:
    async with gateway.admin() as admin:
        resp = await admin.post("/admin/tenants", json={"name": name})
        assert resp.status_code == 400
        assert resp.json()["error"]["param"] == "name"
        assert (await admin.get("/admin/tenants")).status_code == 200  # nothing broke


@pytest.mark.parametrize("tenant_id", ["not-a-uuid", "1 OR 1=1", "%27%3B--", "00000000-0000-0000-0000-000000000000"])
async def test_hostile_or_unknown_tenant_ids_are_404(gateway: Gateway, tenant_id: str) -> None:
    async with gateway.admin() as admin:
        resp = await admin.get(f"/admin/tenants/{tenant_id}")
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "tenant_not_found"
        keys = await admin.post(f"/admin/tenants/{tenant_id}/keys", json={"role": "user"})
        assert keys.status_code == 404


async def test_admin_endpoints_need_the_platform_admin_key(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http() as anon:
        resp = await anon.get("/admin/tenants")
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "missing_api_key"
    async with gateway.http(tenant.admin_key) as tenant_admin:
        resp = await tenant_admin.get("/admin/tenants")
        assert resp.status_code == 403
    async with gateway.http("sk-tgadmin-wrong") as wrong:
        assert (await wrong.get("/admin/tenants")).status_code == 401
    # and the admin key is not a tenant key
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.openai(ADMIN_KEY).models.list()


async def test_key_listing_never_shows_secrets(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.admin() as admin:
        listed = (await admin.get(f"/admin/tenants/{tenant.tenant_id}/keys")).json()
    assert len(listed["data"]) == 2
    text = str(listed)
    assert tenant.user_key not in text and tenant.admin_key not in text and "secret" not in text
    prefixes = {k["prefix"] for k in listed["data"]}
    assert {tenant.user_key[:18], tenant.admin_key[:18]} == prefixes
    async with gateway.services.db.connection() as conn:
        cur = await conn.execute("SELECT row_to_json(k)::text FROM api_keys k WHERE tenant_id = %s",
                                 (tenant.tenant_id,))
        stored = " ".join(r[0] for r in await cur.fetchall())
    assert tenant.user_key[6:18] in stored  # the public id is stored ...
    assert tenant.user_key[19:] not in stored and tenant.admin_key[19:] not in stored  # ... the secret is not


async def test_user_role_may_infer_but_not_manage(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http(tenant.user_key) as user:
        assert (await user.get("/v1/models")).status_code == 200
        for resp in (await user.get("/v1/keys"), await user.post("/v1/keys", json={"role": "user"}),
                     await user.get("/v1/usage")):
            assert resp.status_code == 403
            assert resp.json()["error"]["type"] == "permission_error"


async def test_tenant_admin_manages_own_keys_and_revocation_takes_effect(
    gateway: Gateway, tenant: TenantKeys
) -> None:
    async with gateway.http(tenant.admin_key) as tadmin:
        created = await tadmin.post("/v1/keys", json={"role": "user", "name": "ci"})
        assert created.status_code == 201
        new = created.json()
        assert new["key"].startswith("sk-tg-") and new["name"] == "ci"
        client = gateway.openai(new["key"])
        assert (await client.models.list()).data
        listed = (await tadmin.get("/v1/keys")).json()["data"]
        assert new["id"] in [k["id"] for k in listed]
        revoked = await tadmin.delete(f"/v1/keys/{new['id']}")
        assert revoked.status_code == 200 and revoked.json() == {"id": new["id"], "object": "api_key", "deleted": True}
        status = {k["id"]: k["status"] for k in (await tadmin.get("/v1/keys")).json()["data"]}
        assert status[new["id"]] == "revoked"
        assert (await tadmin.delete("/v1/keys/not-a-uuid")).status_code == 404
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()


async def test_tenant_admin_cannot_touch_another_tenants_keys(gateway: Gateway, tenant: TenantKeys) -> None:
    other = await make_tenant(gateway, "other")
    async with gateway.admin() as admin:
        other_keys = (await admin.get(f"/admin/tenants/{other.tenant_id}/keys")).json()["data"]
    async with gateway.http(tenant.admin_key) as tadmin:
        resp = await tadmin.delete(f"/v1/keys/{other_keys[0]['id']}")
        assert resp.status_code == 404
    assert (await gateway.openai(other.user_key).models.list()).data


async def test_revocation_reaches_other_replicas_within_cache_ttl(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.user_key)
    await client.models.list()  # cached now
    async with gateway.services.db.connection() as conn:  # another replica revokes it
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE public_id = %s", (tenant.user_key[6:18],))
    ttl = gateway.services.settings.auth_cache_ttl
    await asyncio.sleep(ttl + 0.1)
    with pytest.raises(openai.AuthenticationError) as exc:
        await client.models.list()
    assert "revoked" in exc.value.message


async def test_expired_key_and_bad_expiry(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http(tenant.admin_key) as tadmin:
        past = await tadmin.post("/v1/keys", json={"role": "user", "expires_at": int(time.time()) - 10})
        assert past.status_code == 400 and past.json()["error"]["param"] == "expires_at"
        naive = await tadmin.post("/v1/keys", json={"role": "user", "expires_at": "2099-01-01T00:00:00"})
        assert naive.status_code == 400
        soon = await tadmin.post("/v1/keys", json={"role": "user", "expires_at": int(time.time()) + 2})
        assert soon.status_code == 201
        key = soon.json()["key"]
        bad_role = await tadmin.post("/v1/keys", json={"role": "root"})
        assert bad_role.status_code == 400 and bad_role.json()["error"]["param"] == "role"
        extra = await tadmin.post("/v1/keys", json={"role": "user", "scopes": ["*"]})
        assert extra.status_code == 400
        for name in ("nul\x00byte", "new\nline", "", "n" * 101):
            bad_name = await tadmin.post("/v1/keys", json={"role": "user", "name": name})
            assert bad_name.status_code == 400
            assert bad_name.json()["error"]["param"] == "name"
    client = gateway.openai(key)
    assert (await client.models.list()).data
    await asyncio.sleep(2.2)
    with pytest.raises(openai.AuthenticationError) as exc:
        await client.models.list()
    assert "expired" in exc.value.message


async def test_disabled_tenant_is_403_then_enabled_again(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.user_key)
    async with gateway.admin() as admin:
        disabled = (await admin.post(f"/admin/tenants/{tenant.tenant_id}/disable")).json()
        assert disabled["status"] == "disabled"
        with pytest.raises(openai.PermissionDeniedError) as exc:
            await client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}])
        assert exc.value.code == "tenant_disabled"
        assert (await admin.post(f"/admin/tenants/{tenant.tenant_id}/enable")).json()["status"] == "active"
    assert (await client.models.list()).data


async def test_admin_actions_are_audited(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.services.db.connection() as conn:
        cur = await conn.execute(
            "SELECT actor, action FROM audit_log WHERE tenant_id = %s ORDER BY id", (tenant.tenant_id,)
        )
        rows = await cur.fetchall()
    assert rows == [("platform-admin", "tenant.create"), ("platform-admin", "key.create"),
                    ("platform-admin", "key.create")]


async def test_concurrent_cache_misses_share_one_key_lookup(
    gateway: Gateway, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.auth import store

    real_lookup = store.lookup_key
    calls: list[str] = []

    async def slow_lookup(pool: object, public_id: str) -> store.KeyRecord | None:
        calls.append(public_id)
        await asyncio.sleep(0.05)
        return await real_lookup(pool, public_id)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "lookup_key", slow_lookup)
    auth = gateway.services.auth
    auth._cache.clear()
    header = f"Bearer {tenant.user_key}"
    principals = await asyncio.gather(*(auth.tenant(header) for _ in range(20)))
    assert len(calls) == 1
    assert {p.tenant_id for p in principals} == {principals[0].tenant_id}
    assert str(principals[0].tenant_id) == tenant.tenant_id

    # A caller that goes away does not take the shared lookup with it.
    auth._cache.clear()
    leader = asyncio.create_task(auth.tenant(header))
    await asyncio.sleep(0.01)
    follower = asyncio.create_task(auth.tenant(header))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert (await follower).tenant_id == principals[0].tenant_id
    assert leader.cancelled() and len(calls) == 2


async def test_failed_shared_key_lookup_fails_every_waiter_and_is_not_cached(
    gateway: Gateway, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.auth import store

    real_lookup = store.lookup_key

    async def broken_lookup(pool: object, public_id: str) -> store.KeyRecord | None:
        await asyncio.sleep(0.02)
        raise OSError("database unreachable")

    monkeypatch.setattr(store, "lookup_key", broken_lookup)
    auth = gateway.services.auth
    auth._cache.clear()
    header = f"Bearer {tenant.user_key}"
    results = await asyncio.gather(*(auth.tenant(header) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    monkeypatch.setattr(store, "lookup_key", real_lookup)
    assert str((await auth.tenant(header)).tenant_id) == tenant.tenant_id
