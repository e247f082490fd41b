"""Which models a tenant may use: the one resolution of a request's model name to an engine route.

``resolve(principal, model, purpose)`` runs once per inference request, and ``visible(principal)`` answers
``GET /v1/models``: both ask the same :class:`Grants` and the same adapter directory, so a model a tenant may
not use is neither listed nor callable (a 404 ``model_not_found``, exactly as for a name no engine serves:
whether someone else's model exists is not the tenant's business).

Every base model is granted to every tenant; an adapter an engine has loaded is granted to nobody under its
engine-side name. A tenant's own adapters come from the in-process adapter directory (no database read per
request): a name no engine route has is looked up there, and becomes an adapter route: the adapter's opaque
engine name on its base model's replicas, the card carrying the public name and ``parent``. Placement (loading
it on a replica that lacks it) happens when the lease is taken (``gateway.engines.adapter_leases``).
Resolution itself stays synchronous and free of I/O; adapter routes are cached per engine name and rebuilt
when the base model's route changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from gateway.auth.principal import Principal
from gateway.engines.errors import EngineUnavailableError, ModelNotServedError
from gateway.engines.models import ModelCard
from gateway.engines.pool import EnginePool
from gateway.engines.replica import Purpose
from gateway.engines.routes import AdapterRef, Route

__all__ = ["AdapterDirectoryLike", "AdapterEntryLike", "BaseModelsForEveryone", "Grants", "ModelCatalog"]


class Grants(Protocol):
    def __call__(self, principal: Principal, route: Route) -> bool:
        """Whether ``principal``'s tenant may use the engine-side model of ``route``."""


class BaseModelsForEveryone:
    """Every base model to every tenant; an adapter loaded on an engine to nobody under its engine name."""

    __slots__ = ()

    def __call__(self, principal: Principal, route: Route) -> bool:
        return not route.card.is_adapter


class AdapterEntryLike(AdapterRef, Protocol):
    """A tenant's ready adapter (``adapters.directory.AdapterEntry``)."""

    @property
    def name(self) -> str: ...

    @property
    def base_model(self) -> str: ...


class AdapterDirectoryLike(Protocol):
    """The tenant adapters this process knows (``adapters.directory.AdapterDirectory``)."""

    def lookup(self, tenant_id: uuid.UUID, name: str) -> AdapterEntryLike | None: ...

    def for_tenant(self, tenant_id: uuid.UUID) -> Sequence[AdapterEntryLike]: ...


class IdentityNames(Protocol):
    """The identity adapter's engine name per base model (``gateway.engines.adapter_guard.AdapterGuard``)."""

    def identity_for(self, base_model: str) -> str | None: ...


class ModelCatalog:
    """``isolation``: when given, base-model traffic on replicas that take LoRA adapters is sent through the
    base model's identity adapter (see ``adapters.identity``): its route names the identity adapter to the
    engine and keeps only those replicas."""

    def __init__(
        self, engines: EnginePool, grants: Grants | None = None, adapters: AdapterDirectoryLike | None = None,
        isolation: IdentityNames | None = None,
    ) -> None:
        self._engines = engines
        self._grants: Grants = grants if grants is not None else BaseModelsForEveryone()
        self._adapters = adapters
        self._isolation = isolation
        # engine name -> (the base route it was built on, the adapter route)
        self._adapter_routes: dict[str, tuple[Route, Route]] = {}
        # base model -> (its base route, the isolated route)
        self._isolated: dict[str, tuple[Route, Route]] = {}

    def resolve(self, principal: Principal, model: str, purpose: Purpose) -> Route:
        """The route for the public ``model`` this principal named; ``ModelNotServedError`` when it has none."""
        try:
            route = self._engines.route(model, purpose)
        except ModelNotServedError:
            if self._adapters is None or purpose != "generate":
                raise
            entry = self._adapters.lookup(principal.tenant_id, model)
            if entry is None:
                raise
            return self._adapter_route(entry)
        if not self._grants(principal, route):
            raise ModelNotServedError(model)
        if self._isolation is not None and purpose == "generate":
            return self._isolated_route(route, self._isolation)
        return route

    def _isolated_route(self, base: Route, isolation: IdentityNames) -> Route:
        """``base`` itself where no replica of it takes adapters; else its identity-adapter route."""
        cached = self._isolated.get(base.engine_model)
        if cached is not None and cached[0] is base:
            return cached[1]
        # Cached per base route: a replica's LoRA support is learnt before the listing that builds its routes,
        # and a change of it comes with a new listing (the identity adapter appears or is gone), so a new route.
        identity = isolation.identity_for(base.engine_model)
        replicas = tuple(replica for replica in base.replicas if replica.lora) if identity is not None else ()
        route = Route(identity, "generate", replicas, base.card) if identity is not None and replicas else base
        if len(self._isolated) >= 10_000:
            self._isolated.clear()
        self._isolated[base.engine_model] = (base, route)
        return route

    def _adapter_route(self, entry: AdapterEntryLike) -> Route:
        try:
            base = self._engines.route(entry.base_model, "generate")
        except ModelNotServedError:
            raise EngineUnavailableError(
                f"No engine is serving `{entry.base_model}`, the base model of the adapter `{entry.name}`.",
                entry.name,
            ) from None
        cached = self._adapter_routes.get(entry.engine_name)
        if cached is not None and cached[0] is base and cached[1].adapter is entry:
            return cached[1]
        card = ModelCard(
            id=entry.name, created=base.card.created, owned_by="tenantgate", parent=entry.base_model,
            max_model_len=base.card.max_model_len,
        )
        replicas = tuple(replica for replica in base.replicas if replica.lora)
        if not replicas:  # not cached: a replica's LoRA support is learnt after its route was built
            return Route(entry.engine_name, "generate", (), card, adapter=entry)
        route = Route(entry.engine_name, "generate", replicas, card, adapter=entry)
        if len(self._adapter_routes) >= 100_000:  # bounded: adapters come and go
            self._adapter_routes.clear()
        self._adapter_routes[entry.engine_name] = (base, route)
        return route

    def visible(self, principal: Principal) -> list[ModelCard]:
        """The cards of every model this principal may use, by id, each once: base models, then the tenant's
        adapters whose base model is served (``parent`` names it)."""
        cards: dict[str, ModelCard] = {}
        for route in self._engines.routes():
            if route.card.id not in cards and self._grants(principal, route):
                cards[route.card.id] = route.card
        if self._adapters is not None:
            for entry in self._adapters.for_tenant(principal.tenant_id):
                if entry.name in cards:
                    continue
                try:
                    cards[entry.name] = self._adapter_route(entry).card
                except EngineUnavailableError:  # its base model is not served now: not usable, not listed
                    continue
        return sorted(cards.values(), key=lambda card: card.id)
