"""Leases for adapter routes: the replica comes from placement (a warm holder, or a load on a miss), and the
lease counts the request for placement too (an adapter with a request in flight is never evicted there).

Base routes never come here: their lease stays ``EnginePool.lease``, a loop over a few replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from adapters.errors import AdapterLoadFailed
from adapters.placement import Placement
from gateway.engines.errors import EngineUnavailableError
from gateway.engines.replica import Replica
from gateway.engines.routes import AdapterRef, Lease, Route

__all__ = ["AdapterLease", "AdapterLeases", "BadFilesHook"]

log = logging.getLogger(__name__)

BadFilesHook = Callable[[AdapterRef, str], None]  # an engine refused the adapter's files: mark it failed


class AdapterLease(Lease):
    """A lease on a replica that holds the adapter; :meth:`release` also ends the request for placement."""

    __slots__ = ("_engine_name", "_placement")

    def __init__(self, replica: Replica, placement: Placement[Replica], engine_name: str) -> None:
        super().__init__(replica)
        placement.begin(replica, engine_name)
        self._placement = placement
        self._engine_name = engine_name

    def release(self) -> None:
        if self.held:
            super().release()
            self._placement.end(self.replica, self._engine_name)


class AdapterLeases:
    """``lease`` for adapter routes (see the module docstring). ``on_bad_files`` is told when an engine refused
    an adapter's files (the adapter is then marked failed, with the engine's reason)."""

    def __init__(self, placement: Placement[Replica], on_bad_files: BadFilesHook | None = None) -> None:
        self._placement = placement
        self._on_bad_files = on_bad_files

    async def lease(self, route: Route, exclude: Collection[Replica] = ()) -> Lease:
        adapter = route.adapter
        assert adapter is not None, "only adapter routes are leased here"
        if not route.replicas:
            raise EngineUnavailableError(
                f"No engine serving the base model of `{route.card.id}` takes LoRA adapters.", route.card.id
            )
        replicas = route.replicas if not exclude else [r for r in route.replicas if r not in exclude]
        name = route.engine_model
        replica = self._placement.warm(replicas, name)
        if replica is None:
            try:
                replica = await self._placement.ensure(replicas, name, adapter.path)
            except AdapterLoadFailed as exc:
                if exc.files_at_fault and self._on_bad_files is not None:
                    self._on_bad_files(adapter, exc.message)
                raise
        return AdapterLease(replica, self._placement, name)

    def lost(self, replica: Replica, route: Route) -> None:
        """The replica answered that it does not hold the route's adapter (it restarted, or another gateway
        process unloaded it): placement forgets it there, so the next lease loads it again."""
        held = set(self._placement.held(replica))
        if route.engine_model in held:
            log.info("engine %s no longer holds an adapter placement thought it held", replica.display_url)
            self._placement.observe(replica, held - {route.engine_model})
