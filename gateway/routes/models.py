"""``GET /v1/models`` and ``GET /v1/models/{model}``: what this tenant may use, in OpenAI's shape.

A tenant's ready adapters are listed with ``parent``, their base model. Both ask the model catalog
(``gateway.services.catalog``), the same one inference requests resolve their
model through, so what is listed is exactly what may be called.
"""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from msgspec import UNSET, UnsetType

from gateway.auth.principal import Principal
from gateway.engines.errors import ModelNotServedError
from gateway.openapi_docs import ANY, TENANT, route_docs
from gateway.routes.common import AnyRequest, provide_principal, services_of


class Model(msgspec.Struct, frozen=True):
    id: str
    created: int
    owned_by: str
    object: str = "model"
    parent: str | UnsetType = UNSET  # a tenant's adapter: its base model (as vLLM lists adapters); absent otherwise


class ModelList(msgspec.Struct, frozen=True):
    data: list[Model]
    object: str = "list"


def _visible_models(request: AnyRequest, principal: Principal) -> list[Model]:
    # Engine cards carry paths (root, parent) and engine details a tenant should not see: keep OpenAI's fields.
    cards = services_of(request).catalog.visible(principal)
    return [
        Model(card.id, card.created, "tenantgate", parent=card.parent if card.parent and card.is_adapter else UNSET)
        for card in cards
    ]


@get("/v1/models", dependencies={"principal": Provide(provide_principal)}, tags=["models"],
     **route_docs(ANY, TENANT), summary="List the models this tenant may use")
async def list_models(request: AnyRequest, principal: NamedDependency[Principal]) -> ModelList:
    return ModelList(_visible_models(request, principal))


@get("/v1/models/{model:path}", dependencies={"principal": Provide(provide_principal)}, tags=["models"],
     **route_docs(ANY, TENANT, (404,)), summary="Retrieve one model")
async def retrieve_model(request: AnyRequest, principal: NamedDependency[Principal], model: FromPath[str]) -> Model:
    name = model.lstrip("/")
    for entry in _visible_models(request, principal):
        if entry.id == name:
            return entry
    raise ModelNotServedError(name)


ROUTES = [list_models, retrieve_model]
