"""``/v1/adapters``: a tenant's LoRA adapters. Tenant admins upload and delete; any tenant key lists and reads.

An upload is checked in this order, each failure a 4xx before anything is stored: the form's fields, the name
rule, the base model (served here, as a base model), the name against every served model's, the name against
the tenant's adapters, the base model's ``config.json`` (from ``adapter_base_model_dirs``, else the folder the
engine reports as its ``root``); then, in a worker thread, the upload is copied into a scratch folder of the
store (counting bytes: 413 past ``adapter_max_bytes``), unpacked if it is an archive and validated against the
base model. Only then are the files stored and the row inserted (``adapters.records.create``, one transaction),
and the adapter is put in this replica's directory at once. The scratch folder goes in every case, so a
rejected upload leaves no row and no file.

A delete marks the row ``deleting`` (the name is free at once), takes the adapter out of this replica's
directory, unloads it from every engine (``Services.adapter_retire``, which lets requests in flight finish),
then deletes the row and the files no other row uses. Once started it runs to the end even if the client
goes away.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from litestar import Controller, delete, get, post
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import Operation, RequestBody
from litestar.openapi.spec.media_type import OpenAPIMediaType
from litestar.params import FromPath, FromQuery, Parameter

from adapters import records
from adapters.base_model import BaseModelSpec, read_base_model
from adapters.errors import AdapterNameTaken, AdapterTooLarge, BaseModelUnavailable, InvalidAdapter
from adapters.records import AdapterDeleted, AdapterList, AdapterObject, AdapterRow, NewAdapter, clip
from adapters.storage import CONFIG_NAME, WEIGHTS_NAME, AdapterStore
from adapters.validation import AdapterFiles, UploadLimits, ValidatedAdapter, unpack_archive, validate_adapter
from gateway.auth.principal import Principal
from gateway.engines.adapter_guard import base_model_folder
from gateway.engines.errors import ModelNotServedError
from gateway.engines.routes import Route
from gateway.openapi_docs import ANY, TENANT, RawSchema, route_docs
from gateway.routes.common import AnyRequest, provide_principal, provide_tenant_admin, services_of
from gateway.services.container import Services
from retrieval.paging import DEFAULT_LIMIT, MAX_LIMIT, PageQuery

log = logging.getLogger(__name__)

# Room for the multipart envelope (boundaries, part headers, the name and base_model fields) beyond the files.
ENVELOPE_BYTES = 64 * 1024
_COPY_BYTES = 1024 * 1024
_ADMIN = {"admin": Provide(provide_tenant_admin)}
_READER = {"principal": Provide(provide_principal)}
_NOT_FOUND = (404,)
_UPLOAD = (408, 409, 413)

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="1 to 100")]

_UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["name", "base_model"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "description": "The name to call it by"},
        "base_model": {"type": "string", "description": "A base model served here"},
        "file": {"type": "string", "format": "binary", "description": "The adapter as a .tar.gz or .zip archive"},
        "adapter_config": {
            "type": "string", "format": "binary", "description": "adapter_config.json (with adapter_model)"
        },
        "adapter_model": {"type": "string", "format": "binary", "description": "adapter_model.safetensors"},
    },
}


def _upload_docs() -> dict[str, Any]:
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


# -- reading the form -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadForm:
    name: str
    base_model: str
    archive: UploadFile | None
    config: UploadFile | None
    weights: UploadFile | None


def _text(form: FormMultiDict, field: str) -> str:
    value = form.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidAdapter(f"Send '{field}' as a text field.", param=field)
    return value


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _file(form: FormMultiDict, field: str) -> UploadFile | None:
    value = form.get(field)
    if value is None:
        return None
    if not isinstance(value, UploadFile):
        raise InvalidAdapter(f"Send '{field}' as a file part (with a file name).", param=field)
    if field != "file" and (value.filename or "").lower().endswith(_PICKLE_SUFFIXES):  # an archive: by content
        raise InvalidAdapter(
            f"'{field}' is '{clip(value.filename)}': pickle files are never accepted; send adapter_model.safetensors"
            " (peft's save_pretrained writes it by default).",
            param=field,
        )
    return value


def read_form(form: FormMultiDict) -> UploadForm:
    name = records.check_name(_text(form, "name"))
    base_model = _text(form, "base_model")
    archive, config, weights = _file(form, "file"), _file(form, "adapter_config"), _file(form, "adapter_model")
    if archive is not None and (config is not None or weights is not None):
        raise InvalidAdapter(
            "Send either 'file' (a .tar.gz or .zip archive) or 'adapter_config' and 'adapter_model', not both.",
            param="file",
        )
    if archive is None:
        if config is None and weights is None:
            raise InvalidAdapter(
                "Send the adapter as 'file' (a .tar.gz or .zip archive of adapter_config.json and"
                " adapter_model.safetensors), or as the two files 'adapter_config' and 'adapter_model'.",
                param="file",
            )
        missing = "adapter_config" if config is None else "adapter_model" if weights is None else None
        if missing is not None:
            raise InvalidAdapter(
                f"Send '{missing}' too: the two files go together ('adapter_config' is adapter_config.json,"
                " 'adapter_model' is adapter_model.safetensors).",
                param=missing,
            )
    return UploadForm(name, base_model, archive, config, weights)


# -- the checks before the bytes ----------------------------------------------------------------------------------


def base_route(services: Services, base_model: str) -> Route:
    """The route of ``base_model`` if it is a base model served here; else :class:`BaseModelUnavailable`."""
    try:
        route = services.engines.route(base_model, "generate")
    except ModelNotServedError:
        route = None
    if route is None or route.card.is_adapter:
        served = sorted(r.card.id for r in services.engines.routes("generate") if not r.card.is_adapter)
        shown = ", ".join(served[:10]) + (", ..." if len(served) > 10 else "") if served else "none"
        raise BaseModelUnavailable(
            f"The base model '{clip(base_model)}' is not served here (base models served: {shown}).",
            param="base_model",
        )
    return route


def check_not_served(services: Services, name: str) -> None:
    if any(route.card.id == name for route in services.engines.routes()):
        raise AdapterNameTaken(f"'{name}' is the name of a model served here: choose another name.", param="name")


def load_base(base_dirs: Mapping[str, str], route: Route) -> BaseModelSpec:
    """The base model's architecture from its ``config.json`` (the configured folder, else the engine's
    ``root``); :class:`BaseModelUnavailable` when the gateway cannot read one."""
    folder = base_model_folder(route.card, base_dirs)
    if folder is None:
        model = route.card.id
        raise BaseModelUnavailable(
            f"The gateway cannot read {model}'s config.json: set TENANTGATE_ADAPTER_BASE_MODEL_DIRS (a folder"
            f" holding the base model's config.json for '{model}').",
            param="base_model",
        )
    return read_base_model(folder, route.card.id)


# -- the bytes (in a worker thread) -----------------------------------------------------------------------------


class _Budget:
    """Bytes an upload may still bring."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int, field: str) -> None:
        self.used += count
        if self.used > self.limit:
            raise AdapterTooLarge(f"The adapter upload is larger than the limit of {self.limit} bytes.", param=field)


def _copy_upload(upload: UploadFile, target: Path, budget: _Budget, field: str) -> None:
    source = upload.file
    source.seek(0)
    with target.open("xb") as out:
        while chunk := source.read(_COPY_BYTES):
            budget.take(len(chunk), field)
            out.write(chunk)


def prepare(
    form: UploadForm, scratch: Path, base: BaseModelSpec, limits: UploadLimits, max_rank: int
) -> ValidatedAdapter:
    """Copy the upload into ``scratch``, unpack it if it is an archive, validate it. Blocking: run in a thread."""
    budget = _Budget(limits.max_bytes)
    if form.archive is not None:
        archive = scratch / "upload"
        _copy_upload(form.archive, archive, budget, "file")
        unpacked = scratch / "unpacked"
        unpacked.mkdir()
        files = unpack_archive(archive, unpacked, limits)
    else:
        assert form.config is not None
        assert form.weights is not None
        files = AdapterFiles(config=scratch / CONFIG_NAME, weights=scratch / WEIGHTS_NAME)
        _copy_upload(form.config, files.config, budget, "adapter_config")
        _copy_upload(form.weights, files.weights, budget, "adapter_model")
    return validate_adapter(files, base, max_rank=max_rank, limits=limits)


def _drop_scratch(store: AdapterStore, scratch: Path) -> None:
    try:
        store.drop_scratch(scratch)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)


async def upload_adapter(services: Services, tenant: Principal, form: UploadForm) -> AdapterRow:
    settings, store = services.settings, services.adapter_store
    route = base_route(services, form.base_model)
    check_not_served(services, form.name)
    if await records.name_taken(services.db, tenant.tenant_id, form.name):
        raise AdapterNameTaken(f"This tenant already has an adapter named '{form.name}'.", param="name")
    base = await asyncio.to_thread(load_base, settings.adapter_base_model_dirs, route)
    limits = UploadLimits(max_bytes=settings.adapter_max_bytes)
    scratch = await asyncio.to_thread(store.new_scratch)
    try:
        valid = await asyncio.to_thread(prepare, form, scratch, base, limits, settings.adapter_max_rank)
        new = NewAdapter(
            name=form.name, base_model=form.base_model, checksum=valid.checksum, bytes=valid.bytes,
            rank=valid.rank, target_modules=tuple(valid.target_modules),
        )
        row = await records.create(services.db, store, tenant.tenant_id, new, valid.files)
    finally:
        await asyncio.to_thread(_drop_scratch, store, scratch)
    services.adapters.apply(
        services.adapters.entry(row.id, row.tenant_id, row.name, row.base_model, row.engine_name, row.checksum,
                                row.rank)
    )
    return row


async def remove_adapter(services: Services, tenant: Principal, name: str) -> AdapterRow:
    row = await records.begin_delete(services.db, tenant.tenant_id, name)
    services.adapters.drop(row.id)
    entry = services.adapters.entry(
        row.id, row.tenant_id, row.name, row.base_model, row.engine_name, row.checksum, row.rank
    )

    async def finish() -> None:
        try:
            await services.adapter_retire(entry)
        except Exception:  # the engines keep a registration nobody routes to; the delete goes on
            log.warning("adapter %s: unloading from the engines failed", row.id, exc_info=True)
        await records.finish_delete(services.db, services.adapter_store, tenant.tenant_id, row)

    # Shielded: a client that goes away does not leave the delete half done.
    await asyncio.shield(asyncio.ensure_future(finish()))
    return row


# -- the controller ---------------------------------------------------------------------------------------------


def adapters_controller(max_bytes: int) -> type[Controller]:
    """The ``/v1/adapters`` routes, with the upload's body limit (``adapter_max_bytes``) from the settings."""

    class AdaptersController(Controller):
        path = "/v1/adapters"
        tags = ["adapters"]  # noqa: RUF012

        @post(
            "/", status_code=201, request_max_body_size=max_bytes + ENVELOPE_BYTES, dependencies=_ADMIN,
            **_upload_docs(),
            summary="Upload a LoRA adapter (multipart: `name`, `base_model`, and `file` or `adapter_config` with"
                    " `adapter_model`; tenant admins)",
        )
        async def upload(self, request: AnyRequest, admin: NamedDependency[Principal]) -> AdapterObject:
            try:
                form = await request.form()
            except UnicodeDecodeError:  # Litestar decodes every part without a file name as UTF-8 text
                raise InvalidAdapter("A form field is not UTF-8 text.", param="name") from None
            try:
                row = await upload_adapter(services_of(request), admin, read_form(form))
            finally:
                await form.close()
            return row.public()

        @get("/", dependencies=_READER, **route_docs(ANY, TENANT), summary="List this tenant's adapters")
        async def list_adapters(
            self, request: AnyRequest, principal: NamedDependency[Principal], after: FromQuery[str | None] = None,
            before: FromQuery[str | None] = None, limit: Limit = DEFAULT_LIMIT,
            order: FromQuery[Literal["asc", "desc"]] = "desc",
        ) -> AdapterList:
            rows, more = await records.list_adapters(
                services_of(request).db, principal.tenant_id, PageQuery(after, before, limit, order)
            )
            data = [row.public() for row in rows]
            return AdapterList(data, data[0].id if data else None, data[-1].id if data else None, more)

        @get("/{name:str}", dependencies=_READER, **route_docs(ANY, TENANT, _NOT_FOUND),
             summary="Retrieve an adapter by name")
        async def retrieve(
            self, request: AnyRequest, principal: NamedDependency[Principal], name: FromPath[str]
        ) -> AdapterObject:
            return (await records.get(services_of(request).db, principal.tenant_id, name)).public()

        @delete("/{name:str}", status_code=200, dependencies=_ADMIN, **route_docs(ANY, TENANT, _NOT_FOUND),
                summary="Delete an adapter by name: unloaded from every engine, its files removed unless another"
                        " adapter has the same bytes (tenant admins)")
        async def delete_adapter(
            self, request: AnyRequest, admin: NamedDependency[Principal], name: FromPath[str]
        ) -> AdapterDeleted:
            row = await remove_adapter(services_of(request), admin, name)
            return AdapterDeleted(row.id)

    return AdaptersController
