"""Key management: the platform admin's ``/admin/tenants/{id}/keys`` and a tenant admin's ``/v1/keys``."""

from __future__ import annotations

import uuid

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from gateway.auth import store
from gateway.auth.errors import KeyNotFoundError
from gateway.auth.principal import Principal
from gateway.openai.decode import decode_json_body
from gateway.openapi_docs import ANY, BODY, TENANT, route_docs
from gateway.routes.bodies import CreateKeyRequest, check_key_request
from gateway.routes.common import AnyRequest, provide_tenant_admin, read_json_body, request_id_of, services_of


class KeyList(msgspec.Struct, frozen=True):
    data: list[store.ApiKeyInfo]
    object: str = "list"
    has_more: bool = False


class DeletedKey(msgspec.Struct, frozen=True):
    id: str
    object: str = "api_key"
    deleted: bool = True


def key_id_or_404(key_id: str) -> uuid.UUID:
    parsed = store.parse_uuid(key_id)
    if parsed is None:
        raise KeyNotFoundError(f"No API key with id '{key_id[:64]}' in this tenant")
    return parsed


async def create_key_for(request: AnyRequest, tenant_id: uuid.UUID, actor: str) -> store.CreatedApiKey:
    req = decode_json_body(await read_json_body(request), CreateKeyRequest)
    expires_at = check_key_request(req)
    services = services_of(request)
    return await store.create_key(
        services.db, tenant_id, req.role, name=req.name, expires_at=expires_at, actor=actor,
        request_id=request_id_of(request),
    )


async def revoke_key_of(request: AnyRequest, tenant_id: uuid.UUID, key_id: str, actor: str) -> DeletedKey:
    services = services_of(request)
    revoked = await store.revoke_key(
        services.db, tenant_id, key_id_or_404(key_id), actor=actor, request_id=request_id_of(request)
    )
    services.auth.forget_tenant(tenant_id)
    return DeletedKey(revoked.id)


class TenantKeysController(Controller):
    """A tenant admin manages its own tenant's keys."""

    path = "/v1/keys"
    tags = ["keys"]  # noqa: RUF012
    dependencies = {"admin": Provide(provide_tenant_admin)}  # noqa: RUF012

    @post("/", **route_docs(ANY, TENANT, BODY, body=CreateKeyRequest),
          summary="Create a key (the secret is shown once)")
    async def create(self, request: AnyRequest, admin: NamedDependency[Principal]) -> store.CreatedApiKey:
        return await create_key_for(request, admin.tenant_id, admin.actor)

    @get("/", **route_docs(ANY, TENANT), summary="List this tenant's keys (never the secrets)")
    async def list_keys(self, request: AnyRequest, admin: NamedDependency[Principal]) -> KeyList:
        return KeyList(await store.list_keys(services_of(request).db, admin.tenant_id))

    @delete("/{key_id:str}", status_code=200, **route_docs(ANY, TENANT, (404,)), summary="Revoke a key")
    async def revoke(self, request: AnyRequest, admin: NamedDependency[Principal], key_id: FromPath[str]) -> DeletedKey:
        return await revoke_key_of(request, admin.tenant_id, key_id, admin.actor)
