"""Where a request goes: a :class:`Route` (which engine-side model, on which replicas) and a :class:`Lease`.

The pool builds one route per engine-side model and purpose whenever discovery changes what the replicas
list, so resolving a request's model is a dict lookup that allocates nothing. A route names the model the
engine is to be sent (``engine_model``), the replicas that list it (healthy or not: health is decided when
a lease is taken) and its card. The adapters work maps a tenant's adapter name to such a route (an opaque
engine-side name), and may load the adapter on a replica when a lease finds none holding it.

A lease is one request's hold on one replica: taking it counts the request in the replica's ``in_flight``
(which is what least-loaded choice reads), and :meth:`Lease.release` gives it back exactly once, on
whatever path ends the exchange (answer read, stream finished or aborted, error before the answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.engines.models import ModelCard
from gateway.engines.replica import Purpose, Replica

__all__ = ["AdapterRef", "Lease", "Route"]


class AdapterRef(Protocol):
    """A LoRA adapter a route runs (``adapters.directory.AdapterEntry``): what placement needs to load it."""

    @property
    def id(self) -> str: ...

    @property
    def engine_name(self) -> str: ...

    @property
    def path(self) -> str: ...


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """``engine_model`` is the name the engine is sent (an adapter's opaque engine name for an adapter route);
    ``card.id`` the public one. ``adapter``: set on adapter routes, whose lease goes through placement."""

    engine_model: str
    purpose: Purpose
    replicas: tuple[Replica, ...]
    card: ModelCard
    adapter: AdapterRef | None = None


class Lease:
    """One request in flight on ``replica``; :meth:`release` is idempotent."""

    __slots__ = ("_held", "replica")

    def __init__(self, replica: Replica) -> None:
        replica.in_flight += 1
        self.replica = replica
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.replica.in_flight -= 1

    @property
    def held(self) -> bool:
        return self._held
