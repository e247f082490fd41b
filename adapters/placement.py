"""Which engine replica runs a LoRA adapter: warm hits, loads on demand, eviction, reconciliation.

Pure logic over two Protocols: replicas are opaque hashable values with ``healthy`` and ``in_flight``
(:class:`ReplicaLike`; the gateway's ``Replica``) and engine calls go through :class:`adapters.lora_api.LoraApi`.
No HTTP, no gateway import. State is per gateway process; with several gateway processes sharing the engines it
stays correct because :meth:`Placement.observe` reconciles it with what each engine lists, "already loaded" counts as
a successful load and "not loaded" as a successful unload (and the gateway retries once, after a reload, when an
engine answers 404 for an adapter it was thought to hold).

The request path, per adapter request::

    replica = placement.warm(replicas, name) or await placement.ensure(replicas, name, path)
    placement.begin(replica, name)      # with the gateway's lease on the replica
    ...                                 # the engine call
    placement.end(replica, name)

Balancing rule (when a hot adapter gets another copy): the holder chosen is the least loaded healthy replica that
holds the adapter. If even that one has ``in_flight >= hot_factor * m + hot_margin``, where ``m`` is the least
``in_flight`` of all healthy replicas, and the least loaded replica could take the adapter (a free slot or an idle
adapter to evict), :meth:`warm` answers None and :meth:`ensure` loads a copy there; requests arriving while that
load runs keep going to the holder. ``in_flight`` counts every request on the replica (base and adapters), so an
adapter spreads only when its holder is really busier than the rest. The defaults (2x + 4) cost few loads in
``python -m loadtests.bench_placement`` (5,000 requests, concurrency 8: 54.2% warm hits and 31.5% of requests on the
busiest replica, against 56.8% and 34.4% without copies); that benchmark's fake engines answer in constant time
whatever their load, so it measures the price of a copy, not its gain: the gain is the real engines' (a replica's
latency grows with its batch).

Slots: each replica holds at most ``slots`` adapters (``adapter_slots``, matching ``--max-cpu-loras``), loads in
progress included; a pinned adapter (the identity adapter) takes a slot but is never evicted. A full replica frees
slots by unloading adapters with no request in flight, before the load: the least used first (requests begun,
halved every ``aging_every`` requests), the least recently used among equals. Under a skewed mix this keeps the
popular adapters loaded while the rare ones take turns in the remaining slots: with the benchmark's Zipf mix, an
LRU order is about 50% hits at best over 32 slots, a frequency order about 63% (the mass of the 32 most popular).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Hashable, Iterable
from typing import Generic, Literal, Protocol, TypeVar

from adapters.errors import (
    AdapterCapacityExhausted,
    AdapterEnginesUnavailable,
    AdapterLoadFailed,
    AdapterNotFound,
)
from adapters.lora_api import LoraAlreadyLoaded, LoraApi, LoraApiError, LoraFilesRejected, LoraNotLoaded

__all__ = ["Placement", "ReplicaLike"]

logger = logging.getLogger(__name__)

_MESSAGE_CLIP = 300


class ReplicaLike(Hashable, Protocol):
    """What placement reads of a replica (hashable: replicas key its maps)."""

    @property
    def healthy(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...


R = TypeVar("R", bound=ReplicaLike)


class _ReplicaState:
    """What one replica holds, as this process knows it."""

    __slots__ = ("busy", "held", "loading", "unloading")

    def __init__(self) -> None:
        self.held: dict[str, int] = {}  # engine name -> last use (a tick of Placement's clock)
        self.busy: dict[str, int] = {}  # engine name -> adapter requests in flight (begin/end), absent at zero
        self.loading: set[str] = set()  # loads in progress here (they take a slot)
        self.unloading: set[str] = set()  # evictions in progress here (a load of one now would race its unload)

    def used(self) -> int:
        return len(self.held) + len(self.loading)


class _Flight(Generic[R]):
    """One load in progress and the ensure() calls waiting on it.

    When the load succeeds, each waiter is counted as a request in flight on the adapter (``reserved``) until it
    resumes: the waiter's caller calls ``begin()`` right after ensure() returns, with no await in between, so the
    fresh adapter cannot be evicted by another load in the loop turns between the load's end and that begin."""

    __slots__ = ("replica", "reserved", "task", "waiting")

    def __init__(self) -> None:
        self.task: asyncio.Task[R] | None = None
        self.waiting = 0
        self.reserved = 0
        self.replica: R | None = None


class Placement(Generic[R]):
    """Adapter placement over the replicas of one gateway process (see the module docstring).

    ``slots``: adapters one replica may hold; ``pinned``: engine names never evicted; ``hot_factor`` and
    ``hot_margin``: the balancing rule; ``eviction``: ``lfu`` (fewest recent requests first, then least recently
    used; counts halved every ``aging_every`` requests; ``aging_every`` <= 0: never) or ``lru``; ``retire_timeout``:
    how long :meth:`retire` waits for in-flight requests.
    """

    def __init__(
        self,
        api: LoraApi[R],
        *,
        slots: int = 16,
        pinned: Iterable[str] = (),
        hot_factor: float = 2.0,
        hot_margin: int = 4,
        eviction: Literal["lfu", "lru"] = "lfu",
        aging_every: int = 1000,
        retire_timeout: float = 30.0,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._api = api
        self._slots = slots
        self._pinned: set[str] = set(pinned)
        self._hot_factor = hot_factor
        self._hot_margin = hot_margin
        self._retire_timeout = retire_timeout
        self._eviction = eviction
        self._aging_every = aging_every
        self._uses: dict[str, int] = {}  # engine name -> requests begun, halved every `aging_every` requests
        self._since_aging = 0
        self._states: dict[R, _ReplicaState] = {}
        self._holders: dict[str, set[R]] = {}  # engine name -> replicas holding it (loaded, not loading)
        self._loads: dict[str, _Flight[R]] = {}  # engine name -> its load in progress (one at a time)
        self._retiring: dict[str, asyncio.Event] = {}  # engine name -> set once its last request ended
        self._tick = 0

    # -- the hit path -------------------------------------------------------------------------------

    def warm(self, replicas: Collection[R], engine_name: str) -> R | None:
        """The least loaded healthy replica among ``replicas`` that holds ``engine_name``; None when none does, or
        when that holder is overloaded and another replica should take a copy (then call :meth:`ensure`)."""
        holders = self._holders.get(engine_name)
        if not holders:
            return None
        best: R | None = None
        least: R | None = None
        for replica in replicas:
            if not replica.healthy:
                continue
            if least is None or replica.in_flight < least.in_flight:
                least = replica
            if replica in holders and (best is None or replica.in_flight < best.in_flight):
                best = replica
        if best is None or least is None or least in holders:
            return best
        if best.in_flight >= self._hot_factor * least.in_flight + self._hot_margin and engine_name not in self._loads:
            state = self._states.get(least)
            if state is None or self._can_free(state, 1):
                return None
        return best

    def begin(self, replica: R, engine_name: str) -> None:
        """One adapter request starts on ``replica``: it cannot be evicted there until :meth:`end`."""
        state = self._states.get(replica)
        if state is None:
            state = self._states[replica] = _ReplicaState()
        state.busy[engine_name] = state.busy.get(engine_name, 0) + 1
        uses = self._uses
        uses[engine_name] = uses.get(engine_name, 0) + 1
        self._since_aging += 1
        if engine_name in state.held:
            self._tick += 1
            state.held[engine_name] = self._tick

    def end(self, replica: R, engine_name: str) -> None:
        """The request :meth:`begin` counted has ended (call exactly once per begin)."""
        state = self._states.get(replica)
        if state is None:
            return
        count = state.busy.get(engine_name, 0) - 1
        if count > 0:
            state.busy[engine_name] = count
            return
        state.busy.pop(engine_name, None)
        if engine_name in state.held:
            self._tick += 1
            state.held[engine_name] = self._tick
        drained = self._retiring.get(engine_name)
        if drained is not None and not self._in_flight(engine_name):
            drained.set()

    # -- the miss path ------------------------------------------------------------------------------

    async def ensure(self, replicas: Collection[R], engine_name: str, path: str) -> R:
        """A replica that holds ``engine_name``, loading it (from ``path``) where needed.

        One load per adapter at a time: concurrent callers share it (a caller cancelled while waiting does not
        cancel it). Raises ``AdapterLoadFailed`` (``files_at_fault`` when the engine blamed the files),
        ``AdapterCapacityExhausted`` (every candidate replica full of adapters in use),
        ``AdapterEnginesUnavailable`` (no healthy replica), ``AdapterNotFound`` (the adapter is being retired).
        """
        while True:
            if engine_name in self._retiring:
                raise AdapterNotFound("The adapter is being deleted.", param="model")
            replica = self.warm(replicas, engine_name)
            if replica is not None:
                return replica
            pending = self._loads.get(engine_name)
            if pending is None:
                break
            holder = self._best_holder(replicas, engine_name)
            if holder is not None:  # a second copy is on its way: keep using the first meanwhile
                return holder
            replica = await self._wait(pending, engine_name)
            if replica.healthy and engine_name in self._states[replica].held:
                return replica
            # evicted or lost since (rare): look again
        target, victims = self._choose_target(replicas, engine_name)
        if target is None:
            holder = self._best_holder(replicas, engine_name)
            if holder is not None:
                return holder
            if not any(replica.healthy for replica in replicas):
                raise AdapterEnginesUnavailable(
                    "No healthy engine replica of this adapter's base model takes adapters right now.", param="model"
                )
            raise AdapterCapacityExhausted(
                "Every engine replica of this adapter's base model is full of adapters in use; retry shortly.",
                param="model",
            )
        flight: _Flight[R] = _Flight()
        flight.task = asyncio.create_task(
            self._load(flight, target, victims, engine_name, path), name=f"lora-load-{engine_name}"
        )
        flight.task.add_done_callback(_retrieve)
        self._loads[engine_name] = flight
        return await self._wait(flight, engine_name)

    async def _wait(self, flight: _Flight[R], engine_name: str) -> R:
        """The flight's replica once loaded (its error otherwise); cancelling the wait leaves the load running."""
        assert flight.task is not None
        flight.waiting += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiting -= 1
            if flight.reserved and flight.replica is not None:  # hand back the count the load made for us
                flight.reserved -= 1
                self.end(flight.replica, engine_name)

    def _choose_target(self, replicas: Collection[R], engine_name: str) -> tuple[R | None, list[str]]:
        """The least loaded healthy replica not holding ``engine_name`` that can take it (ties: fewest adapters
        held), with the adapters to unload there first; (None, []) when no replica can."""
        best: R | None = None
        best_key = (0, 0)
        for replica in replicas:
            if not replica.healthy:
                continue
            state = self._state(replica)
            if engine_name in state.held or engine_name in state.loading or engine_name in state.unloading:
                continue
            if not self._can_free(state, 1):
                continue
            key = (replica.in_flight, state.used())
            if best is None or key < best_key:
                best, best_key = replica, key
        if best is None:
            return None, []
        self._age()
        state = self._state(best)
        victims = self._victims(state, state.used() + 1 - self._slots)
        for victim in victims:  # off the books now: no request is routed to it from here on
            self._drop(best, victim)
        state.loading.add(engine_name)  # the slot is taken before the first await
        return best, victims

    def _can_free(self, state: _ReplicaState, wanted: int) -> bool:
        """Whether ``wanted`` more adapters fit on the replica, evicting idle ones."""
        missing = state.used() + wanted - self._slots
        if missing <= 0:
            return True
        idle = sum(1 for name in state.held if name not in state.busy and name not in self._pinned)
        return idle >= missing

    def _victims(self, state: _ReplicaState, count: int) -> list[str]:
        """The ``count`` least used (recent requests, decayed), then least recently used, idle unpinned adapters of
        the replica."""
        if count <= 0:
            return []
        busy, pinned = state.busy, self._pinned
        uses = self._uses if self._eviction == "lfu" else {}
        idle = sorted(
            (uses.get(name, 0), last, name)
            for name, last in state.held.items()
            if name not in busy and name not in pinned
        )
        return [name for _, _, name in idle[:count]]

    def _age(self) -> None:
        """Halve every use count once per ``aging_every`` requests (on the miss path: the hit path only counts), so
        an adapter that was popular and is no longer loses its place."""
        if self._aging_every <= 0 or self._since_aging < self._aging_every:
            return
        shift = min(62, self._since_aging // self._aging_every)
        self._since_aging = 0
        self._uses = {name: count >> shift for name, count in self._uses.items() if count >> shift}

    async def _load(self, flight: _Flight[R], replica: R, victims: list[str], engine_name: str, path: str) -> R:
        state = self._state(replica)
        state.unloading.update(victims)
        try:
            for victim in victims:
                with contextlib.suppress(LoraNotLoaded):  # freed anyway
                    await self._api.unload(replica, victim)
                state.unloading.discard(victim)
            with contextlib.suppress(LoraAlreadyLoaded):  # another gateway process loaded it
                await self._api.load(replica, engine_name, path)
        except LoraFilesRejected as exc:
            raise AdapterLoadFailed(
                f"The engine could not load the adapter's files: {_clip(exc.message)}", files_at_fault=True,
                param="model",
            ) from exc
        except LoraApiError as exc:
            message = f"The engine failed to load the adapter: {_clip(exc.message)}"
            raise AdapterLoadFailed(message, param="model") from exc
        finally:
            state.loading.discard(engine_name)
            state.unloading.difference_update(victims)
            if self._loads.get(engine_name) is flight:
                del self._loads[engine_name]  # now, not in a callback: the next ensure() must not wait on it
        self._tick += 1
        state.held[engine_name] = self._tick
        self._holders.setdefault(engine_name, set()).add(replica)
        if flight.waiting:  # see _Flight
            flight.replica, flight.reserved = replica, flight.waiting
            state.busy[engine_name] = state.busy.get(engine_name, 0) + flight.waiting
        return replica

    # -- reconciliation -----------------------------------------------------------------------------

    def observe(self, replica: R, listed: Collection[str]) -> None:
        """Align what ``replica`` holds with the adapter engine names its ``GET /v1/models`` listed.

        Adapters listed but unknown here (another gateway process loaded them) are adopted as the least recently
        used; adapters known here but not listed (the engine restarted, or another process evicted them) are
        forgotten, unless a load of them on that replica is in progress. Adapters being retired are not adopted."""
        state = self._state(replica)
        for name in [name for name in state.held if name not in listed and name not in state.loading]:
            self._drop(replica, name)
        for name in listed:
            if name in state.held or name in state.loading or name in state.unloading or name in self._retiring:
                continue
            state.held[name] = -1  # older than anything used here
            self._holders.setdefault(name, set()).add(replica)

    # -- removal ------------------------------------------------------------------------------------

    async def retire(self, engine_name: str, replicas: Iterable[R], *, drain_s: float | None = None) -> None:
        """Take ``engine_name`` out of service: no more routing to it, wait (at most ``drain_s``, default
        ``retire_timeout`` seconds) for its requests in flight, then unload it from every replica (``replicas`` and
        any known to hold it). An engine that fails to unload is logged and skipped: a restart forgets it anyway,
        and observe() would adopt and evict it if it came back."""
        drained = self._retiring.setdefault(engine_name, asyncio.Event())
        try:
            pending = self._loads.get(engine_name)
            if pending is not None and pending.task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending.task)
            targets: list[R] = list(dict.fromkeys([*replicas, *self._holders.get(engine_name, ())]))
            for replica in list(self._holders.get(engine_name, ())):
                self._drop(replica, engine_name)
            if self._in_flight(engine_name):
                try:
                    async with asyncio.timeout(self._retire_timeout if drain_s is None else drain_s):
                        await drained.wait()
                except TimeoutError:
                    logger.warning("adapter %s retired with requests still in flight", engine_name)
            await asyncio.gather(*(self._unload_quietly(replica, engine_name) for replica in targets))
        finally:
            self._retiring.pop(engine_name, None)
            self._pinned.discard(engine_name)
            self._uses.pop(engine_name, None)

    async def _unload_quietly(self, replica: R, engine_name: str) -> None:
        try:
            await self._api.unload(replica, engine_name)
        except LoraNotLoaded:
            pass
        except LoraApiError as exc:
            logger.warning("could not unload adapter %s: %s", engine_name, _clip(exc.message))

    # -- pins and introspection ---------------------------------------------------------------------

    def pin(self, engine_name: str) -> None:
        """Never evict ``engine_name`` (the identity adapter); it still takes a slot where loaded."""
        self._pinned.add(engine_name)

    def holders(self, engine_name: str) -> list[R]:
        """The replicas known to hold ``engine_name`` (no order promised)."""
        return list(self._holders.get(engine_name, ()))

    def held(self, replica: R) -> list[str]:
        """The engine names ``replica`` is known to hold, least recently used first."""
        state = self._states.get(replica)
        if state is None:
            return []
        return [name for name, _ in sorted(state.held.items(), key=lambda item: item[1])]

    def in_flight(self, replica: R, engine_name: str) -> int:
        """Adapter requests of ``engine_name`` in flight on ``replica`` (between begin and end)."""
        state = self._states.get(replica)
        return 0 if state is None else state.busy.get(engine_name, 0)

    # -- helpers ------------------------------------------------------------------------------------

    def _state(self, replica: R) -> _ReplicaState:
        state = self._states.get(replica)
        if state is None:
            state = self._states[replica] = _ReplicaState()
        return state

    def _drop(self, replica: R, engine_name: str) -> None:
        state = self._states.get(replica)
        if state is not None:
            state.held.pop(engine_name, None)
        holders = self._holders.get(engine_name)
        if holders is not None:
            holders.discard(replica)
            if not holders:
                del self._holders[engine_name]

    def _best_holder(self, replicas: Collection[R], engine_name: str) -> R | None:
        holders = self._holders.get(engine_name)
        if not holders:
            return None
        best: R | None = None
        for replica in replicas:
            if replica.healthy and replica in holders and (best is None or replica.in_flight < best.in_flight):
                best = replica
        return best

    def _in_flight(self, engine_name: str) -> int:
        return sum(state.busy.get(engine_name, 0) for state in self._states.values())


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved here: every waiter may have gone


def _clip(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _MESSAGE_CLIP else message[: _MESSAGE_CLIP - 3] + "..."
