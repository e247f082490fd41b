"""The set of engine replicas: health checks, model discovery, routes and leases (replica choice)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any, Protocol

from gateway.engines.errors import EngineUnavailableError, ModelNotServedError
from gateway.engines.http1 import ClosedBeforeResponseError, ConnectError, HttpClient, HttpError
from gateway.engines.models import ModelCard, ModelListError, parse_model_list
from gateway.engines.normalize import redact
from gateway.engines.replica import Purpose, Replica
from gateway.engines.routes import Lease, Route
from gateway.engines.timeouts import EngineTimeouts

__all__ = ["EnginePool", "ListingHook", "ReplicaNotReadyError"]

logger = logging.getLogger(__name__)

_PURPOSES: tuple[Purpose, ...] = ("generate", "embed")


class _ProbeError(Exception):
    pass


class ListingHook(Protocol):
    """Runs after each successful ``GET /v1/models`` of a generation replica, before the replica counts as
    healthy: it may act on the replica (load the identity adapter, reconcile adapter placement) and returns the
    cards to keep (the listing again, when it changed it). Raising ``ReplicaNotReadyError`` keeps the replica out of
    rotation until the next check (fail closed)."""

    async def __call__(self, replica: Replica, cards: dict[str, ModelCard]) -> dict[str, ModelCard]: ...


class ReplicaNotReadyError(Exception):
    """The listing hook cannot make the replica safe to use yet; the message says why (shown in /health)."""


class EnginePool:
    """Every configured replica, their health and the models they serve.

    `start()` checks every replica once, then keeps checking them in the background. Per request, `route()`
    (a dict lookup: the routes are rebuilt only when what a replica lists changes) and `lease()` (least
    loaded healthy replica of the route) do no I/O. A healthy replica is checked every `health_interval` seconds. One
    that is down (a failed check, or a refused connection reported by a request through
    `mark_unhealthy`) is probed sooner, `recheck_initial` seconds later and then with the delay doubling
    up to `health_interval`: a restarted engine is back in rotation within about that delay, while a
    replica that stays down costs one cheap probe per interval. Requests never go to it in between.

    A probe that fails for the gateway's own want of resources (`ConnectError.local`: out of file
    descriptors, buffers or memory) says nothing about the replica: its state is kept, one line is logged
    for the whole episode, and it is probed again `recheck_initial` seconds later.
    """

    def __init__(
        self,
        http: HttpClient,
        generate_urls: Sequence[str],
        embed_urls: Sequence[str],
        *,
        timeouts: EngineTimeouts,
        health_interval: float = 5.0,
        recheck_initial: float = 0.25,
        on_listing: ListingHook | None = None,
    ) -> None:
        self._http = http
        self._on_listing = on_listing
        self._timeouts = timeouts
        self._health_interval = health_interval
        self._recheck_initial = min(recheck_initial, health_interval)
        self._wake = asyncio.Event()
        self._by_purpose: dict[Purpose, tuple[Replica, ...]] = {
            "generate": tuple(Replica(url, "generate") for url in generate_urls),
            "embed": tuple(Replica(url, "embed") for url in embed_urls),
        }
        self._replicas = self._by_purpose["generate"] + self._by_purpose["embed"]
        self._routes: dict[Purpose, dict[str, Route]] = {"generate": {}, "embed": {}}
        self._rr = 0
        self._task: asyncio.Task[None] | None = None
        self._local_trouble: set[Replica] = set()  # replicas whose last probe failed for a local reason

    @property
    def replicas(self) -> tuple[Replica, ...]:
        return self._replicas

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check every replica once, then start the background health loop."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._health_loop(), name="engine-pool-health")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _health_loop(self) -> None:
        """Check each replica when it is due (see the class docstring); sleep until the next one is."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = [replica for replica in self._replicas if replica.next_check <= now]
            if due:
                try:
                    await asyncio.gather(*(self._check(replica) for replica in due))
                except Exception:  # a bug here must not end health checking for good
                    logger.exception("engine health check failed")
                    for replica in due:
                        replica.next_check = loop.time() + self._health_interval
            self._wake.clear()
            next_due = min((replica.next_check for replica in self._replicas), default=now + self._health_interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_due - loop.time())):
                    await self._wake.wait()

    # -- health ----------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Probe every replica concurrently: `GET /health`, then `GET /v1/models`."""
        if self._replicas:
            await asyncio.gather(*(self._check(replica) for replica in self._replicas))

    async def _check(self, replica: Replica) -> None:
        was_healthy = replica.healthy
        try:
            await self._probe(replica, "/health")
            try:
                cards = parse_model_list(await self._probe(replica, "/v1/models"))
            except ModelListError as exc:
                raise _ProbeError(str(exc)) from exc
            if self._on_listing is not None and replica.purpose == "generate":
                try:
                    cards = await self._on_listing(replica, cards)
                except ReplicaNotReadyError as exc:
                    raise _ProbeError(str(exc)) from exc
        except ConnectError as exc:
            if not exc.local:
                self._failed(replica, was_healthy, exc)
            else:
                self._local_failure(replica, exc)
        except (HttpError, TimeoutError, _ProbeError) as exc:
            self._failed(replica, was_healthy, exc)
        else:
            if replica in self._local_trouble:
                self._local_trouble.discard(replica)
                if not self._local_trouble:
                    logger.info("engines can be probed again")
            if cards != replica.model_cards:
                replica.model_cards = cards
                self._build_routes(replica.purpose)
            replica.healthy = True
            replica.last_error = None
            replica.failures = 0
            if not was_healthy:
                logger.info("engine %s is healthy, serving %s", replica.display_url, sorted(cards))
        finally:
            replica.last_check = time.time()
            delay = self._recheck_initial if replica in self._local_trouble else self._next_delay(replica)
            replica.next_check = asyncio.get_running_loop().time() + delay

    def _failed(self, replica: Replica, was_healthy: bool, exc: BaseException) -> None:
        self._local_trouble.discard(replica)
        replica.healthy = False
        replica.last_error = _describe(exc)
        replica.failures += 1
        if was_healthy:
            logger.warning("engine %s is unhealthy: %s", replica.display_url, replica.last_error)

    def _local_failure(self, replica: Replica, exc: ConnectError) -> None:
        """The probe could not even start for want of local resources: the replica keeps its state."""
        if not self._local_trouble:
            logger.warning(
                "cannot probe engines: %s (a shortage in this process; engines keep their health state)", exc.reason
            )
        self._local_trouble.add(replica)

    def _next_delay(self, replica: Replica) -> float:
        if replica.healthy:
            return self._health_interval
        return min(self._health_interval, self._recheck_initial * 2.0 ** min(replica.failures - 1, 30))

    async def _probe(self, replica: Replica, path: str) -> bytes:
        timeout = self._timeouts.probe
        target = path.encode("ascii")
        async with asyncio.timeout(timeout):  # connecting included
            try:
                resp = await self._http.request(
                    replica.origin, b"GET", target, b"", b"", first_byte_timeout=timeout, total_timeout=timeout
                )
            except ClosedBeforeResponseError:  # closed as the probe was written: a GET can safely go once more
                resp = await self._http.request(
                    replica.origin, b"GET", target, b"", b"", first_byte_timeout=timeout, total_timeout=timeout,
                    fresh=True,
                )
            body = await resp.read()
        if resp.status != 200:
            raise _ProbeError(f"GET {path} answered HTTP {resp.status}")
        return body

    def check_soon(self, replica: Replica) -> None:
        """Probe `replica` within `recheck_initial` seconds, without changing its state now.

        For a request that failed in a way that may or may not be the replica's (the engine closed the
        connection on it): the health check decides, not the one request.
        """
        due = asyncio.get_running_loop().time() + self._recheck_initial
        if replica.next_check > due:
            replica.next_check = due
            self._wake.set()

    def mark_unhealthy(self, replica: Replica, reason: str) -> None:
        """Take a replica out of rotation until a health check finds it well again (soon: see the class)."""
        if replica.healthy:
            logger.warning("engine %s marked unhealthy: %s", replica.display_url, reason)
            replica.healthy = False
            replica.failures = max(replica.failures, 1)
            replica.next_check = asyncio.get_running_loop().time() + self._recheck_initial
            self._wake.set()
        replica.last_error = reason

    # -- routes and choice ------------------------------------------------------------------------

    def _build_routes(self, purpose: Purpose) -> None:
        """One route per model the replicas of `purpose` list, with every replica listing it (config order)."""
        listing: dict[str, list[Replica]] = {}
        for replica in self._by_purpose[purpose]:
            for model_id in replica.model_cards:
                listing.setdefault(model_id, []).append(replica)
        self._routes[purpose] = {
            model_id: Route(model_id, purpose, tuple(replicas), replicas[0].model_cards[model_id])
            for model_id, replicas in listing.items()
        }

    def route(self, model: str, purpose: Purpose) -> Route:
        """The route to the engine-side `model`; `ModelNotServedError` when no replica of `purpose` lists it."""
        route = self._routes[purpose].get(model)
        if route is None:
            raise ModelNotServedError(model)
        return route

    def routes(self, purpose: Purpose | None = None) -> list[Route]:
        """Every route (of one purpose, or all: generation first), each model once per purpose."""
        if purpose is not None:
            return list(self._routes[purpose].values())
        return [*self._routes["generate"].values(), *self._routes["embed"].values()]

    def lease(self, route: Route, exclude: Collection[Replica] = ()) -> Lease:
        """Hold the least loaded healthy replica of `route` for one request (see `Lease`)."""
        return Lease(self.pick(route, exclude))

    def pick(self, route: Route, exclude: Collection[Replica] = ()) -> Replica:
        """The healthy replica of `route` with the fewest requests in flight (no hold taken: see `lease`).

        Ties rotate, so equally loaded replicas share the load. `EngineUnavailableError` when no healthy
        replica outside `exclude` is left.
        """
        best: Replica | None = None
        ties: list[Replica] | None = None
        for replica in route.replicas:
            if not replica.healthy or (exclude and replica in exclude):
                continue
            if best is None or replica.in_flight < best.in_flight:
                best, ties = replica, None
            elif replica.in_flight == best.in_flight:
                if ties is None:
                    ties = [best]
                ties.append(replica)
        if best is None:
            model = route.engine_model
            raise EngineUnavailableError(f"No healthy engine is serving the model `{model}`.", model)
        if ties is None:
            return best
        self._rr += 1
        return ties[self._rr % len(ties)]

    def choose(self, model: str, purpose: Purpose, exclude: Collection[Replica] = ()) -> Replica:
        """`pick` on the route of `model` (`ModelNotServedError` when there is none)."""
        return self.pick(self.route(model, purpose), exclude)

    # -- listings --------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the gateway can serve: details are safe to show (no credentials).

        Ready means at least one replica is configured, every configured purpose has a healthy
        replica, and every known model has at least one healthy replica.
        """
        models: dict[str, dict[str, Any]] = {}
        for replica in self._replicas:
            for model_id in replica.model_cards:
                entry = models.setdefault(model_id, {"purpose": replica.purpose, "replicas": 0, "healthy_replicas": 0})
                entry["replicas"] += 1
                entry["healthy_replicas"] += int(replica.healthy)
        purposes_ok = all(any(r.healthy for r in self._by_purpose[p]) for p in _PURPOSES if self._by_purpose[p])
        ready = bool(self._replicas) and purposes_ok and all(entry["healthy_replicas"] > 0 for entry in models.values())
        details: dict[str, Any] = {
            "ready": ready,
            "models": models,
            "replicas": [
                {
                    "url": r.display_url,
                    "purpose": r.purpose,
                    "healthy": r.healthy,
                    "in_flight": r.in_flight,
                    "models": sorted(r.model_cards),
                    "last_error": r.last_error,
                    "last_check": r.last_check,
                }
                for r in self._replicas
            ],
        }
        return ready, details


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _ProbeError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "health check timed out"
    if isinstance(exc, ConnectError):
        return f"cannot connect: {exc.reason}"
    return redact(f"{type(exc).__name__}: {exc}", 300)
