"""OpenAI's Vector Stores API, ``/v1/vector_stores`` (search excepted: ``gateway/routes/search.py``).

Tenant admins create, modify, delete, attach, detach, update and cancel; any tenant key lists and retrieves.
The work is ``retrieval.vector_stores``, ``retrieval.store_files`` and ``retrieval.file_batches``; these routes
read the request and shape the answer. An answer about a file or a batch still ``in_progress`` carries
``openai-poll-after-ms``, which the SDK's ``*_and_poll`` helpers wait for between polls.
"""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.auth.principal import Principal
from gateway.openai.decode import decode_json_body
from gateway.openapi_docs import ANY, BODY, TENANT, route_docs
from gateway.routes.common import AnyRequest, provide_principal, provide_tenant_admin, read_json_body, services_of
from retrieval import file_batches, store_files, vector_stores
from retrieval import objects as o
from retrieval.paging import DEFAULT_LIMIT, MAX_LIMIT, PageQuery

POLL_HEADER = "openai-poll-after-ms"
_POLL_DOCS = [
    ResponseHeader(
        name=POLL_HEADER, documentation_only=True, required=False,
        description="Milliseconds to wait before polling again; sent while the object is `in_progress`",
    )
]
_NOT_FOUND = (404,)
_ADMIN = {"admin": Provide(provide_tenant_admin)}
_READER = {"principal": Provide(provide_principal)}

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="1 to 100")]
Order = Annotated[Literal["asc", "desc"], QueryParameter(description="By created_at")]
StatusFilter = Annotated[
    Literal["in_progress", "completed", "failed", "cancelled"] | None,
    QueryParameter(name="filter", description="Only files with this status"),
]


def _polled(obj: o.VectorStoreFileObject | o.FileBatchObject) -> dict[str, str]:
    return {POLL_HEADER: str(store_files.POLL_AFTER_MS)} if obj.status == "in_progress" else {}


def _file_answer(obj: o.VectorStoreFileObject) -> Response[o.VectorStoreFileObject]:
    return Response(obj, headers=_polled(obj))


def _batch_answer(obj: o.FileBatchObject) -> Response[o.FileBatchObject]:
    return Response(obj, headers=_polled(obj))


def _file_list(page: tuple[list[o.VectorStoreFileObject], bool]) -> o.VectorStoreFileList:
    data, more = page
    return o.VectorStoreFileList(data, data[0].id if data else None, data[-1].id if data else None, more)


class VectorStoresController(Controller):
    path = "/v1/vector_stores"
    tags = ["vector stores"]  # noqa: RUF012

    # --- Stores --------------------------------------------------------------------------------------------

    @post("/", status_code=200, dependencies=_ADMIN, **route_docs(ANY, TENANT, BODY, _NOT_FOUND,
          body=o.CreateVectorStoreRequest), summary="Create a vector store (tenant admins)")
    async def create(self, request: AnyRequest, admin: NamedDependency[Principal]) -> o.VectorStoreObject:
        services = services_of(request)
        req = decode_json_body(await read_json_body(request), o.CreateVectorStoreRequest, services.body_limits)
        return await vector_stores.create_store(services.db, admin.tenant_id, admin.key_id, req, services.ingestion)

    @get("/", dependencies=_READER, **route_docs(ANY, TENANT), summary="List this tenant's vector stores")
    async def list_stores(
        self, request: AnyRequest, principal: NamedDependency[Principal], after: FromQuery[str | None] = None,
        before: FromQuery[str | None] = None, limit: Limit = DEFAULT_LIMIT, order: Order = "desc",
    ) -> o.VectorStoreList:
        data, more = await vector_stores.list_stores(
            services_of(request).db, principal.tenant_id, PageQuery(after, before, limit, order)
        )
        return o.VectorStoreList(data, data[0].id if data else None, data[-1].id if data else None, more)

    @get("/{vector_store_id:str}", dependencies=_READER, **route_docs(ANY, TENANT, _NOT_FOUND),
         summary="Retrieve a vector store")
    async def retrieve(
        self, request: AnyRequest, principal: NamedDependency[Principal], vector_store_id: FromPath[str]
    ) -> o.VectorStoreObject:
        return await vector_stores.get_store(services_of(request).db, principal.tenant_id, vector_store_id)

    @post("/{vector_store_id:str}", status_code=200, dependencies=_ADMIN,
          **route_docs(ANY, TENANT, BODY, _NOT_FOUND, body=o.UpdateVectorStoreRequest),
          summary="Modify a vector store: name, metadata, expires_after (tenant admins)")
    async def modify(
        self, request: AnyRequest, admin: NamedDependency[Principal], vector_store_id: FromPath[str]
    ) -> o.VectorStoreObject:
        services = services_of(request)
        req = decode_json_body(await read_json_body(request), o.UpdateVectorStoreRequest, services.body_limits)
        return await vector_stores.modify_store(services.db, admin.tenant_id, vector_store_id, req)

    @delete("/{vector_store_id:str}", status_code=200, dependencies=_ADMIN,
            **route_docs(ANY, TENANT, _NOT_FOUND), summary="Delete a vector store (tenant admins)")
    async def delete_store(
        self, request: AnyRequest, admin: NamedDependency[Principal], vector_store_id: FromPath[str]
    ) -> o.VectorStoreDeleted:
        await vector_stores.delete_store(services_of(request).db, admin.tenant_id, vector_store_id)
        return o.VectorStoreDeleted(vector_store_id)

    # --- Files of a store ----------------------------------------------------------------------------------

    @post("/{vector_store_id:str}/files", status_code=200, dependencies=_ADMIN, response_headers=_POLL_DOCS,
          **route_docs(ANY, TENANT, BODY, _NOT_FOUND, body=o.CreateVectorStoreFileRequest),
          summary="Attach a file to a vector store (tenant admins)")
    async def attach(
        self, request: AnyRequest, admin: NamedDependency[Principal], vector_store_id: FromPath[str]
    ) -> Response[o.VectorStoreFileObject]:
        services = services_of(request)
        req = decode_json_body(await read_json_body(request), o.CreateVectorStoreFileRequest, services.body_limits)
        return _file_answer(await store_files.attach_file(
            services.db, admin.tenant_id, admin.key_id, vector_store_id, req, services.ingestion
        ))

    @get("/{vector_store_id:str}/files", dependencies=_READER, **route_docs(ANY, TENANT, _NOT_FOUND),
         summary="List the files of a vector store")
    async def list_files(
        self, request: AnyRequest, principal: NamedDependency[Principal], vector_store_id: FromPath[str],
        after: FromQuery[str | None] = None, before: FromQuery[str | None] = None, limit: Limit = DEFAULT_LIMIT,
        order: Order = "desc", status: StatusFilter = None,
    ) -> o.VectorStoreFileList:
        return _file_list(await store_files.list_store_files(
            services_of(request).db, principal.tenant_id, vector_store_id, PageQuery(after, before, limit, order),
            status=status,
        ))

    @get("/{vector_store_id:str}/files/{file_id:str}", dependencies=_READER, response_headers=_POLL_DOCS,
         **route_docs(ANY, TENANT, _NOT_FOUND), summary="Retrieve a file of a vector store")
    async def retrieve_file(
        self, request: AnyRequest, principal: NamedDependency[Principal], vector_store_id: FromPath[str],
        file_id: FromPath[str],
    ) -> Response[o.VectorStoreFileObject]:
        return _file_answer(await store_files.get_store_file(
            services_of(request).db, principal.tenant_id, vector_store_id, file_id
        ))

    @post("/{vector_store_id:str}/files/{file_id:str}", status_code=200, dependencies=_ADMIN,
          **route_docs(ANY, TENANT, BODY, _NOT_FOUND, body=o.UpdateVectorStoreFileRequest),
          summary="Update a file's attributes, on its chunks too (tenant admins)")
    async def update_file(
        self, request: AnyRequest, admin: NamedDependency[Principal], vector_store_id: FromPath[str],
        file_id: FromPath[str],
    ) -> o.VectorStoreFileObject:
        services = services_of(request)
        req = decode_json_body(await read_json_body(request), o.UpdateVectorStoreFileRequest, services.body_limits)
        return await store_files.update_attributes(
            services.db, admin.tenant_id, vector_store_id, file_id, req.attributes
        )

    @delete("/{vector_store_id:str}/files/{file_id:str}", status_code=200, dependencies=_ADMIN,
            **route_docs(ANY, TENANT, _NOT_FOUND), summary="Detach a file; its chunks go (tenant admins)")
    async def detach(
        self, request: AnyRequest, admin: NamedDependency[Principal], vector_store_id: FromPath[str],
        file_id: FromPath[str],
    ) -> o.VectorStoreFileDeleted:
        await store_files.detach_file(services_of(request).db, admin.tenant_id, vector_store_id, file_id)
        return o.VectorStoreFileDeleted(file_id)

    @get("/{vector_store_id:str}/files/{file_id:str}/content", dependencies=_READER,
         **route_docs(ANY, TENANT, _NOT_FOUND), summary="The parsed text of an attached file")
    async def content(
        self, request: AnyRequest, principal: NamedDependency[Principal], vector_store_id: FromPath[str],
        file_id: FromPath[str],
    ) -> o.FileContentPage:
        return await store_files.file_content(services_of(request).db, principal.tenant_id, vector_store_id, file_id)

    # --- File batches --------------------------------------------------------------------------------------

    @post("/{vector_store_id:str}/file_batches", status_code=200, dependencies=_ADMIN, response_headers=_POLL_DOCS,
          **route_docs(ANY, TENANT, BODY, _NOT_FOUND, body=o.CreateFileBatchRequest),
          summary="Attach up to 2,000 files at once (tenant admins)")
    async def create_batch(
        self, request: AnyRequest, admin: NamedDependency[Principal], vector_store_id: FromPath[str]
    ) -> Response[o.FileBatchObject]:
        services = services_of(request)
        req = decode_json_body(await read_json_body(request), o.CreateFileBatchRequest, services.body_limits)
        return _batch_answer(await file_batches.create_batch(
            services.db, admin.tenant_id, admin.key_id, vector_store_id, req, services.ingestion
        ))

    @get("/{vector_store_id:str}/file_batches/{batch_id:str}", dependencies=_READER, response_headers=_POLL_DOCS,
         **route_docs(ANY, TENANT, _NOT_FOUND), summary="Retrieve a file batch")
    async def retrieve_batch(
        self, request: AnyRequest, principal: NamedDependency[Principal], vector_store_id: FromPath[str],
        batch_id: FromPath[str],
    ) -> Response[o.FileBatchObject]:
        return _batch_answer(await file_batches.get_batch(
            services_of(request).db, principal.tenant_id, vector_store_id, batch_id
        ))

    @post("/{vector_store_id:str}/file_batches/{batch_id:str}/cancel", status_code=200, dependencies=_ADMIN,
          response_headers=_POLL_DOCS, **route_docs(ANY, TENANT, _NOT_FOUND),
          summary="Cancel the files of a batch still in progress (tenant admins)")
    async def cancel_batch(
        self, request: AnyRequest, admin: NamedDependency[Principal], vector_store_id: FromPath[str],
        batch_id: FromPath[str],
    ) -> Response[o.FileBatchObject]:
        return _batch_answer(await file_batches.cancel_batch(
            services_of(request).db, admin.tenant_id, vector_store_id, batch_id
        ))

    @get("/{vector_store_id:str}/file_batches/{batch_id:str}/files", dependencies=_READER,
         **route_docs(ANY, TENANT, _NOT_FOUND), summary="List the files of a batch")
    async def list_batch_files(
        self, request: AnyRequest, principal: NamedDependency[Principal], vector_store_id: FromPath[str],
        batch_id: FromPath[str], after: FromQuery[str | None] = None, before: FromQuery[str | None] = None,
        limit: Limit = DEFAULT_LIMIT, order: Order = "desc", status: StatusFilter = None,
    ) -> o.VectorStoreFileList:
        return _file_list(await file_batches.list_batch_files(
            services_of(request).db, principal.tenant_id, vector_store_id, batch_id,
            PageQuery(after, before, limit, order), status=status,
        ))
