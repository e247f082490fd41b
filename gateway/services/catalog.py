"""Which models a tenant may use: the one resolution of a request's model name to an engine route.

``resolve(principal, model, purpose)`` runs once per inference request, and ``visible(principal)`` answers
``GET /v1/models``: both ask the same :class:`Grants`, so a model a tenant was not granted is neither
listed nor callable (a 404 ``model_not_found``, exactly as for a name no engine serves: whether someone
else's model exists is not the tenant's business).

Today every base model is granted to every tenant, and a LoRA adapter an engine has loaded (vLLM lists it
as a model whose ``parent`` is its base model) to nobody. The adapters work replaces the grants and
extends :meth:`ModelCatalog.resolve`: a tenant's adapter name maps to the opaque engine-side name of that
tenant's adapter (from an in-process registry, no database read per request), whose route is its base
model's replicas; placement (loading it on a replica that lacks it) happens when the lease is taken.
Resolution itself stays synchronous and free of I/O.
"""

from __future__ import annotations

from typing import Protocol

from gateway.auth.principal import Principal
from gateway.engines.errors import ModelNotServedError
from gateway.engines.models import ModelCard
from gateway.engines.pool import EnginePool
from gateway.engines.replica import Purpose
from gateway.engines.routes import Route

__all__ = ["BaseModelsForEveryone", "Grants", "ModelCatalog"]


class Grants(Protocol):
    def __call__(self, principal: Principal, route: Route) -> bool:
        """Whether ``principal``'s tenant may use the engine-side model of ``route``."""


class BaseModelsForEveryone:
    """Every base model to every tenant; an adapter loaded on an engine to nobody (yet)."""

    __slots__ = ()

    def __call__(self, principal: Principal, route: Route) -> bool:
        return not route.card.is_adapter


class ModelCatalog:
    def __init__(self, engines: EnginePool, grants: Grants | None = None) -> None:
        self._engines = engines
        self._grants: Grants = grants if grants is not None else BaseModelsForEveryone()

    def resolve(self, principal: Principal, model: str, purpose: Purpose) -> Route:
        """The route for the public ``model`` this principal named; ``ModelNotServedError`` when it has none."""
        route = self._engines.route(model, purpose)  # raises ModelNotServedError
        if not self._grants(principal, route):
            raise ModelNotServedError(model)
        return route

    def visible(self, principal: Principal) -> list[ModelCard]:
        """The cards of every model this principal may use, by id, each once."""
        cards: dict[str, ModelCard] = {}
        for route in self._engines.routes():
            if route.card.id not in cards and self._grants(principal, route):
                cards[route.card.id] = route.card
        return sorted(cards.values(), key=lambda card: card.id)
