"""The platform admin's API under ``/admin``: tenants, their keys, and usage across tenants."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery

from gateway.auth import store
from gateway.auth.errors import TenantNotFoundError
from gateway.openai.decode import decode_json_body
from gateway.openapi_docs import ADMIN, ANY, BODY, route_docs
from gateway.routes.bodies import CreateKeyRequest, CreateTenantRequest, check_tenant_name
from gateway.routes.common import AnyRequest, read_json_body, request_id_of, services_of
from gateway.routes.keys import DeletedKey, KeyList, create_key_for, revoke_key_of
from gateway.routes.usage import PlatformUsageList, platform_usage_between

ACTOR = "platform-admin"


def platform_admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    connection.app.state.services.auth.platform_admin(connection.headers.get("authorization"))


class TenantList(msgspec.Struct, frozen=True):
    data: list[store.Tenant]
    object: str = "list"
    has_more: bool = False


def tenant_id_or_404(tenant_id: str) -> uuid.UUID:
    parsed = store.parse_uuid(tenant_id)
    if parsed is None:
        raise TenantNotFoundError(f"No tenant with id '{tenant_id[:64]}'")
    return parsed


class AdminController(Controller):
    path = "/admin"
    tags = ["admin"]  # noqa: RUF012
    guards = [platform_admin_guard]  # noqa: RUF012

    @post("/tenants", **route_docs(ANY, ADMIN, BODY, (409,), body=CreateTenantRequest), summary="Create a tenant")
    async def create_tenant(self, request: AnyRequest) -> store.Tenant:
        req = decode_json_body(await read_json_body(request), CreateTenantRequest)
        return await store.create_tenant(
            services_of(request).db, check_tenant_name(req.name), actor=ACTOR, request_id=request_id_of(request)
        )

    @get("/tenants", **route_docs(ANY, ADMIN), summary="List tenants")
    async def list_tenants(self, request: AnyRequest) -> TenantList:
        return TenantList(await store.list_tenants(services_of(request).db))

    @get("/tenants/{tenant_id:str}", **route_docs(ANY, ADMIN, (404,)), summary="Get a tenant")
    async def get_tenant(self, request: AnyRequest, tenant_id: FromPath[str]) -> store.Tenant:
        return await store.get_tenant(services_of(request).db, tenant_id_or_404(tenant_id))

    @post("/tenants/{tenant_id:str}/disable", status_code=200, **route_docs(ANY, ADMIN, (404,)),
          summary="Disable a tenant (its keys stop working)")
    async def disable_tenant(self, request: AnyRequest, tenant_id: FromPath[str]) -> store.Tenant:
        return await self._set_disabled(request, tenant_id, True)

    @post("/tenants/{tenant_id:str}/enable", status_code=200, **route_docs(ANY, ADMIN, (404,)),
          summary="Enable a disabled tenant")
    async def enable_tenant(self, request: AnyRequest, tenant_id: FromPath[str]) -> store.Tenant:
        return await self._set_disabled(request, tenant_id, False)

    async def _set_disabled(self, request: AnyRequest, tenant_id: str, disabled: bool) -> store.Tenant:
        services = services_of(request)
        tid = tenant_id_or_404(tenant_id)
        tenant = await store.set_tenant_disabled(
            services.db, tid, disabled, actor=ACTOR, request_id=request_id_of(request)
        )
        services.auth.forget_tenant(tid)
        return tenant

    @post("/tenants/{tenant_id:str}/keys", **route_docs(ANY, ADMIN, BODY, (404,), body=CreateKeyRequest),
          summary="Create a key for a tenant (the secret is shown once)")
    async def create_key(self, request: AnyRequest, tenant_id: FromPath[str]) -> store.CreatedApiKey:
        return await create_key_for(request, tenant_id_or_404(tenant_id), ACTOR)

    @get("/tenants/{tenant_id:str}/keys", **route_docs(ANY, ADMIN, (404,)),
         summary="List a tenant's keys (never the secrets)")
    async def list_keys(self, request: AnyRequest, tenant_id: FromPath[str]) -> KeyList:
        tid = tenant_id_or_404(tenant_id)
        db = services_of(request).db
        await store.get_tenant(db, tid)
        return KeyList(await store.list_keys(db, tid))

    @delete("/tenants/{tenant_id:str}/keys/{key_id:str}", status_code=200, **route_docs(ANY, ADMIN, (404,)),
            summary="Revoke a key")
    async def revoke_key(self, request: AnyRequest, tenant_id: FromPath[str], key_id: FromPath[str]) -> DeletedKey:
        return await revoke_key_of(request, tenant_id_or_404(tenant_id), key_id, ACTOR)

    @get("/usage", **route_docs(ANY, ADMIN, (404,)), summary="Usage across tenants, by tenant, day and model")
    async def usage(
        self, request: AnyRequest, start: FromQuery[date | None] = None, end: FromQuery[date | None] = None,
        tenant_id: FromQuery[str | None] = None,
    ) -> PlatformUsageList:
        tid = None if tenant_id is None else tenant_id_or_404(tenant_id)
        return await platform_usage_between(services_of(request).db, start, end, tid)
