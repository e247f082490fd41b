"""``GET /v1/models`` and ``GET /v1/models/{model}``: what this tenant may use, in OpenAI's shape."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from gateway.auth.principal import Principal
from gateway.engines.errors import ModelNotServedError
from gateway.routes.common import AnyRequest, provide_principal, services_of


class Model(msgspec.Struct, frozen=True):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(msgspec.Struct, frozen=True):
    data: list[Model]
    object: str = "list"


def _visible_models(request: AnyRequest) -> list[Model]:
    # Engine cards carry paths (root) and engine details a tenant should not see: keep OpenAI's fields.
    cards: list[dict[str, Any]] = services_of(request).engines.models()
    seen: dict[str, Model] = {}
    for card in cards:
        model_id = str(card.get("id", ""))
        created = card.get("created")
        if model_id and model_id not in seen:
            seen[model_id] = Model(model_id, created if isinstance(created, int) else 0, "tenantgate")
    return sorted(seen.values(), key=lambda m: m.id)


@get("/v1/models", dependencies={"principal": Provide(provide_principal)}, tags=["models"],
     summary="List the models this tenant may use")
async def list_models(request: AnyRequest, principal: NamedDependency[Principal]) -> ModelList:
    return ModelList(_visible_models(request))


@get("/v1/models/{model:path}", dependencies={"principal": Provide(provide_principal)}, tags=["models"],
     summary="Retrieve one model")
async def retrieve_model(request: AnyRequest, principal: NamedDependency[Principal], model: FromPath[str]) -> Model:
    name = model.lstrip("/")
    for entry in _visible_models(request):
        if entry.id == name:
            return entry
    raise ModelNotServedError(name)


ROUTES = [list_models, retrieve_model]
