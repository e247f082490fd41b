"""OpenAI's Files API, ``/v1/files``: tenant admins upload and delete; any tenant key lists, retrieves, downloads.

The store is ``retrieval.files`` (Postgres); these routes only read the request and shape the answer. The
upload route has its own body limit (``max_file_bytes`` plus room for the multipart envelope) instead of
the app's ``max_body_bytes``; Litestar spools the file part to a temporary file past 1 MiB, and it is
copied to Postgres one piece at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import Operation, RequestBody
from litestar.openapi.spec.media_type import OpenAPIMediaType
from litestar.params import FromPath, FromQuery, Parameter
from litestar.response import Stream

from gateway.auth.principal import Principal
from gateway.openapi_docs import ANY, TENANT, RawSchema, route_docs
from gateway.routes.common import AnyRequest, provide_principal, provide_tenant_admin, services_of
from retrieval import files
from retrieval.errors import InvalidFile

# Room for the multipart envelope (boundaries, part headers, the purpose field) beyond the file itself.
ENVELOPE_BYTES = 64 * 1024
READ_BYTES = 256 * 1024  # what one read from the spooled upload takes


class FileList(msgspec.Struct, frozen=True):
    data: list[files.FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class DeletedFile(msgspec.Struct, frozen=True):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(READ_BYTES):
        yield chunk


def content_disposition(filename: str) -> str:
    """``attachment`` naming the file: an ASCII fallback with no quote or backslash, and the exact name in RFC
    5987's ``filename*``."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


_NOT_FOUND = (404,)
_UPLOAD = (408, 413)


_UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The file; its part's file name is kept"},
        "purpose": {"type": "string", "enum": list(files.PURPOSES)},
    },
}


def upload_docs() -> dict[str, Any]:
    """``route_docs`` for the upload, with its multipart request body (which the handler reads itself)."""
    docs = route_docs(ANY, TENANT, _UPLOAD)
    base: type[Operation] = docs["operation_class"]

    @dataclass
    class _UploadOperation(base):  # type: ignore[valid-type,misc]
        def __post_init__(self) -> None:
            super().__post_init__()
            self.request_body = RequestBody(
                content={"multipart/form-data": OpenAPIMediaType(schema=RawSchema(raw=_UPLOAD_SCHEMA))},  # type: ignore[arg-type]
                required=True,
            )

    return {**docs, "operation_class": _UploadOperation}


def files_controller(max_file_bytes: int) -> type[Controller]:
    """The ``/v1/files`` routes, with the upload's body limit from the settings."""

    class FilesController(Controller):
        path = "/v1/files"
        tags = ["files"]  # noqa: RUF012

        @post(
            "/", status_code=200, request_max_body_size=max_file_bytes + ENVELOPE_BYTES,
            dependencies={"admin": Provide(provide_tenant_admin)}, **upload_docs(),
            summary="Upload a file (multipart: `file` and `purpose`; tenant admins)",
        )
        async def upload(self, request: AnyRequest, admin: NamedDependency[Principal]) -> files.FileObject:
            try:
                form = await request.form()
            except UnicodeDecodeError:  # Litestar decodes every part without a file name as UTF-8 text
                raise InvalidFile("A form field is not UTF-8 text.", param="purpose") from None
            try:
                upload = form.get("file")
                purpose = form.get("purpose")
                if not isinstance(upload, UploadFile):
                    raise InvalidFile("Send the file as the multipart part 'file', with a file name.", param="file")
                if not isinstance(purpose, str):
                    raise InvalidFile("Send 'purpose' as a text field.", param="purpose")
                return await files.create_file(
                    services_of(request).db, admin.tenant_id, filename=upload.filename, purpose=purpose,
                    content=_chunks(upload), max_bytes=max_file_bytes,
                )
            finally:
                await form.close()

        @get("/", dependencies={"principal": Provide(provide_principal)}, **route_docs(ANY, TENANT),
             summary="List this tenant's files")
        async def list_files(
            self, request: AnyRequest, principal: NamedDependency[Principal], after: FromQuery[str | None] = None,
            limit: Annotated[int, Parameter(ge=1, le=files.MAX_LIST_LIMIT)] = files.MAX_LIST_LIMIT,
            order: FromQuery[Literal["asc", "desc"]] = "desc", purpose: FromQuery[str | None] = None,
        ) -> FileList:
            page = await files.list_files(
                services_of(request).db, principal.tenant_id, after=after, limit=limit, order=order, purpose=purpose
            )
            data = page.data
            return FileList(data, data[0].id if data else None, data[-1].id if data else None, page.has_more)

        @get("/{file_id:str}", dependencies={"principal": Provide(provide_principal)},
             **route_docs(ANY, TENANT, _NOT_FOUND), summary="Retrieve a file's object")
        async def retrieve(
            self, request: AnyRequest, principal: NamedDependency[Principal], file_id: FromPath[str]
        ) -> files.FileObject:
            return await files.get_file(services_of(request).db, principal.tenant_id, file_id)

        @get("/{file_id:str}/content", dependencies={"principal": Provide(provide_principal)},
             media_type="application/octet-stream", **route_docs(ANY, TENANT, _NOT_FOUND),
             summary="Download a file's bytes")
        async def content(
            self, request: AnyRequest, principal: NamedDependency[Principal], file_id: FromPath[str]
        ) -> Stream:
            db = services_of(request).db
            found = await files.get_file(db, principal.tenant_id, file_id)
            headers: dict[str, Any] = {
                "content-disposition": content_disposition(found.filename),
                "content-length": str(found.bytes),
                "x-content-type-options": "nosniff",
            }
            return Stream(
                files.read_content(db, principal.tenant_id, found), media_type="application/octet-stream",
                headers=headers,
            )

        @delete("/{file_id:str}", status_code=200, dependencies={"admin": Provide(provide_tenant_admin)},
                **route_docs(ANY, TENANT, _NOT_FOUND), summary="Delete a file (tenant admins)")
        async def delete_file(
            self, request: AnyRequest, admin: NamedDependency[Principal], file_id: FromPath[str]
        ) -> DeletedFile:
            await files.delete_file(services_of(request).db, admin.tenant_id, file_id)
            return DeletedFile(file_id)

    return FilesController
