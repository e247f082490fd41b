"""adapters.placement over an in-memory LoraApi: warm hits, single-flight loads, balancing, eviction, reconciliation.

Deterministic: loads that must stay in progress wait on an asyncio.Event the test sets; no sleeps for timing.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import pytest

from adapters.errors import AdapterCapacityExhausted, AdapterEnginesUnavailable, AdapterLoadFailed, AdapterNotFound
from adapters.lora_api import (
    LoraAlreadyLoaded,
    LoraApiError,
    LoraEngineError,
    LoraFilesRejected,
    LoraNotLoaded,
    LoraUnsupported,
)
from adapters.placement import Placement


@dataclass(eq=False)
class FakeReplica:
    name: str
    healthy: bool = True
    in_flight: int = 0

    def __hash__(self) -> int:
        return id(self)


@dataclass
class MemoryLora:
    """Counts calls and keeps what each replica holds; ``gate`` holds loads until set; ``fail_load`` /
    ``fail_unload`` map an engine name to the outcome to raise (once per entry)."""

    loads: Counter[tuple[str, str]] = field(default_factory=Counter)
    unloads: list[tuple[str, str]] = field(default_factory=list)
    held: dict[str, set[str]] = field(default_factory=dict)
    gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    fail_load: dict[str, LoraApiError] = field(default_factory=dict)
    fail_unload: dict[str, LoraApiError] = field(default_factory=dict)

    async def load(self, replica: FakeReplica, engine_name: str, path: str) -> None:
        self.loads[replica.name, engine_name] += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        error = self.fail_load.pop(engine_name, None)
        if error is not None:
            raise error
        holding = self.held.setdefault(replica.name, set())
        if engine_name in holding:
            raise LoraAlreadyLoaded(f"The lora adapter '{engine_name}' has already been loaded.")
        holding.add(engine_name)

    async def unload(self, replica: FakeReplica, engine_name: str) -> None:
        self.unloads.append((replica.name, engine_name))
        error = self.fail_unload.pop(engine_name, None)
        if error is not None:
            raise error
        holding = self.held.setdefault(replica.name, set())
        if engine_name not in holding:
            raise LoraNotLoaded(f"The lora adapter '{engine_name}' cannot be found.")
        holding.discard(engine_name)

    def total_loads(self) -> int:
        return sum(self.loads.values())


async def settle() -> None:
    """Let every ready task run until it blocks (a few loop turns; no timing involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


def replicas(n: int) -> tuple[FakeReplica, ...]:
    return tuple(FakeReplica(f"r{i}") for i in range(n))


async def test_single_flight_fifty_concurrent_first_requests_share_one_load() -> None:
    api = MemoryLora(gate=asyncio.Event())
    placement = Placement(api, slots=4)
    pool = replicas(2)
    waiters = [asyncio.create_task(placement.ensure(pool, "tga-a", "/a")) for _ in range(50)]
    await api.started.wait()
    api.gate.set()  # type: ignore[union-attr]
    chosen = await asyncio.gather(*waiters)
    assert api.total_loads() == 1
    assert len(set(chosen)) == 1
    assert placement.holders("tga-a") == [chosen[0]]


async def test_warm_is_none_until_loaded_then_prefers_the_holder() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=4)
    pool = replicas(3)
    assert placement.warm(pool, "tga-a") is None
    pool[0].in_flight = 3  # busy: the load goes elsewhere
    loaded_on = await placement.ensure(pool, "tga-a", "/a")
    assert loaded_on is not pool[0]
    loaded_on.in_flight = 2  # now busier than the idle third replica, but within the margin: stay on the holder
    assert placement.warm(pool, "tga-a") is loaded_on
    assert await placement.ensure(pool, "tga-a", "/a") is loaded_on
    assert api.total_loads() == 1


async def test_least_loaded_holder_wins() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=4)
    pool = replicas(3)
    placement.observe(pool[0], {"tga-a"})
    placement.observe(pool[2], {"tga-a"})
    pool[0].in_flight, pool[1].in_flight, pool[2].in_flight = 5, 3, 2  # r1 holds nothing
    assert placement.warm(pool, "tga-a") is pool[2]
    pool[2].in_flight = 7  # 5 < 2 * 3 + 4: no second copy wanted yet
    assert placement.warm(pool, "tga-a") is pool[0]


async def test_a_hot_adapter_gets_a_second_copy_on_the_least_loaded_replica() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=4, hot_factor=2.0, hot_margin=4)
    pool = replicas(2)
    first = await placement.ensure(pool, "tga-hot", "/hot")
    other = pool[1] if first is pool[0] else pool[0]
    first.in_flight, other.in_flight = 5, 1  # 5 < 2 * 1 + 4: not yet
    assert placement.warm(pool, "tga-hot") is first
    first.in_flight = 6  # 6 >= 2 * 1 + 4: spread
    assert placement.warm(pool, "tga-hot") is None
    second = await placement.ensure(pool, "tga-hot", "/hot")
    assert second is other
    assert set(placement.holders("tga-hot")) == {pool[0], pool[1]}
    assert placement.warm(pool, "tga-hot") is other
    assert api.total_loads() == 2


async def test_requests_during_the_second_copy_load_keep_using_the_holder() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=4)
    pool = replicas(2)
    first = await placement.ensure(pool, "tga-hot", "/hot")
    other = pool[1] if first is pool[0] else pool[0]
    first.in_flight = 10
    api.gate, api.started = asyncio.Event(), asyncio.Event()
    copying = asyncio.create_task(placement.ensure(pool, "tga-hot", "/hot"))
    await api.started.wait()
    assert placement.warm(pool, "tga-hot") is first  # a copy is on its way: no second ensure
    assert await placement.ensure(pool, "tga-hot", "/hot") is first
    api.gate.set()
    assert await copying is other
    assert api.total_loads() == 2


async def test_no_second_copy_when_the_idle_replica_is_full_of_busy_adapters() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=1)
    pool = replicas(2)
    placement.observe(pool[0], {"tga-hot"})
    placement.observe(pool[1], {"tga-busy"})
    placement.begin(pool[1], "tga-busy")
    pool[0].in_flight, pool[1].in_flight = 20, 1
    assert placement.warm(pool, "tga-hot") is pool[0]


async def test_lru_eviction_unloads_the_least_recently_used_idle_adapter_before_loading() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=2)
    pool = replicas(1)
    (replica,) = pool
    for name in ("tga-a", "tga-b"):
        await placement.ensure(pool, name, f"/{name}")
    placement.begin(replica, "tga-a")  # a is used after b: b is the least recently used
    placement.end(replica, "tga-a")
    await placement.ensure(pool, "tga-c", "/c")
    assert api.unloads == [("r0", "tga-b")]
    assert placement.held(replica) == ["tga-a", "tga-c"]
    assert api.held["r0"] == {"tga-a", "tga-c"}
    assert placement.warm(pool, "tga-b") is None


async def test_never_evicts_an_adapter_in_flight_or_a_pinned_one() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=3, pinned=["tga-identity"])
    pool = replicas(1)
    (replica,) = pool
    placement.observe(replica, {"tga-identity"})  # loaded by the guard, adopted: oldest of all
    await placement.ensure(pool, "tga-old", "/old")
    await placement.ensure(pool, "tga-new", "/new")
    placement.begin(replica, "tga-old")  # the older one is busy
    await placement.ensure(pool, "tga-c", "/c")
    assert api.unloads == [("r0", "tga-new")]
    placement.begin(replica, "tga-c")
    with pytest.raises(AdapterCapacityExhausted) as caught:
        await placement.ensure(pool, "tga-d", "/d")
    assert caught.value.code == "adapter_capacity_exhausted"
    assert api.unloads == [("r0", "tga-new")]
    placement.end(replica, "tga-old")  # idle again: evictable
    await placement.ensure(pool, "tga-d", "/d")
    assert api.unloads[-1] == ("r0", "tga-old")
    assert "tga-identity" in placement.held(replica)


async def test_a_second_begin_keeps_it_busy_until_the_last_end() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=1)
    pool = replicas(1)
    (replica,) = pool
    await placement.ensure(pool, "tga-a", "/a")
    placement.begin(replica, "tga-a")
    placement.begin(replica, "tga-a")
    placement.end(replica, "tga-a")
    assert placement.in_flight(replica, "tga-a") == 1
    with pytest.raises(AdapterCapacityExhausted):
        await placement.ensure(pool, "tga-b", "/b")
    placement.end(replica, "tga-a")
    assert await placement.ensure(pool, "tga-b", "/b") is replica


async def test_a_fresh_adapter_is_kept_for_its_waiters_until_they_resume() -> None:
    """Between a load's end and its waiter's begin() the loop runs other tasks: a load that wants the slot then
    must not evict the adapter just loaded (the waiter would find the engine without it)."""
    api = MemoryLora(gate=asyncio.Event())
    placement = Placement(api, slots=2)
    pool = replicas(1)
    (replica,) = pool
    placement.observe(replica, {"tga-busy"})
    placement.begin(replica, "tga-busy")
    waiter = asyncio.create_task(placement.ensure(pool, "tga-a", "/a"))
    await api.started.wait()
    api.gate.set()  # type: ignore[union-attr]
    rival = asyncio.create_task(placement.ensure(pool, "tga-c", "/c"))  # runs after the load, before the waiter
    assert await waiter is replica
    placement.begin(replica, "tga-a")
    with pytest.raises(AdapterCapacityExhausted):
        await rival
    assert api.unloads == []
    assert placement.in_flight(replica, "tga-a") == 1  # the reservation was handed back: only our begin counts
    placement.end(replica, "tga-a")
    assert await placement.ensure(pool, "tga-c", "/c") is replica  # now it is idle: evicted for c
    assert api.unloads == [("r0", "tga-a")]


async def test_loads_of_different_adapters_run_concurrently_and_reserve_their_slots() -> None:
    api = MemoryLora(gate=asyncio.Event())
    placement = Placement(api, slots=1)
    pool = replicas(2)
    first = asyncio.create_task(placement.ensure(pool, "tga-a", "/a"))
    second = asyncio.create_task(placement.ensure(pool, "tga-b", "/b"))
    await settle()
    assert api.total_loads() == 2  # both loads started while the gate is closed: they overlap
    third = asyncio.create_task(placement.ensure(pool, "tga-c", "/c"))
    with pytest.raises(AdapterCapacityExhausted):  # both slots are taken by loads in progress
        await third
    api.gate.set()  # type: ignore[union-attr]
    assert {await first, await second} == set(pool)


async def test_capacity_exhausted_and_no_healthy_replica_are_told_apart() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=1)
    pool = replicas(2)
    for replica in pool:
        replica.healthy = False
    with pytest.raises(AdapterEnginesUnavailable) as caught:
        await placement.ensure(pool, "tga-a", "/a")
    assert caught.value.code == "engine_unavailable"
    with pytest.raises(AdapterEnginesUnavailable):
        await placement.ensure((), "tga-a", "/a")
    assert api.total_loads() == 0


async def test_a_load_failure_reaches_every_waiter_and_the_next_request_loads_again() -> None:
    api = MemoryLora(gate=asyncio.Event(), fail_load={"tga-a": LoraEngineError("HTTP 500 from the engine")})
    placement = Placement(api, slots=2)
    pool = replicas(2)
    waiters = [asyncio.create_task(placement.ensure(pool, "tga-a", "/a")) for _ in range(10)]
    await api.started.wait()
    api.gate.set()  # type: ignore[union-attr]
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(outcome, AdapterLoadFailed) for outcome in outcomes)
    failure = outcomes[0]
    assert isinstance(failure, AdapterLoadFailed)
    assert failure.files_at_fault is False
    assert "HTTP 500 from the engine" in failure.message
    assert api.total_loads() == 1
    assert placement.holders("tga-a") == []
    assert all(not placement.held(replica) for replica in pool)  # nothing left marked as loaded or loading
    replica = await placement.ensure(pool, "tga-a", "/a")  # no negative cache: tried again
    assert api.total_loads() == 2
    assert placement.holders("tga-a") == [replica]


@pytest.mark.parametrize(
    ("error", "files_at_fault"),
    [
        (LoraFilesRejected("Loading lora tga-a failed: No adapter found for /a"), True),
        (LoraUnsupported("the engine has no runtime LoRA API"), False),
        (LoraEngineError("connection refused"), False),
    ],
)
async def test_load_failures_say_whether_the_files_are_at_fault(error: LoraApiError, files_at_fault: bool) -> None:
    api = MemoryLora(fail_load={"tga-a": error})
    placement = Placement(api, slots=2)
    with pytest.raises(AdapterLoadFailed) as caught:
        await placement.ensure(replicas(1), "tga-a", "/a")
    assert caught.value.files_at_fault is files_at_fault
    assert caught.value.code == "adapter_load_failed"
    assert error.message in caught.value.message


async def test_already_loaded_counts_as_loaded() -> None:
    api = MemoryLora(held={"r0": {"tga-a"}})  # another gateway process loaded it; we have not observed yet
    placement = Placement(api, slots=2)
    pool = replicas(1)
    assert await placement.ensure(pool, "tga-a", "/a") is pool[0]
    assert placement.warm(pool, "tga-a") is pool[0]


async def test_an_unload_that_finds_nothing_still_frees_the_slot() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=1)
    pool = replicas(1)
    placement.observe(pool[0], {"tga-gone"})  # listed, then evicted by another gateway process before our unload
    await placement.ensure(pool, "tga-b", "/b")
    assert api.unloads == [("r0", "tga-gone")]
    assert placement.held(pool[0]) == ["tga-b"]


async def test_an_unload_that_fails_fails_the_load_and_leaves_nothing_marked() -> None:
    api = MemoryLora(fail_unload={"tga-a": LoraEngineError("engine down")})
    placement = Placement(api, slots=1)
    pool = replicas(1)
    await placement.ensure(pool, "tga-a", "/a")
    with pytest.raises(AdapterLoadFailed):
        await placement.ensure(pool, "tga-b", "/b")
    assert placement.held(pool[0]) == []
    assert api.loads["r0", "tga-b"] == 0


async def test_a_waiter_cancelled_does_not_cancel_the_shared_load() -> None:
    api = MemoryLora(gate=asyncio.Event())
    placement = Placement(api, slots=2)
    pool = replicas(1)
    first = asyncio.create_task(placement.ensure(pool, "tga-a", "/a"))
    second = asyncio.create_task(placement.ensure(pool, "tga-a", "/a"))
    await api.started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    api.gate.set()  # type: ignore[union-attr]
    assert await second is pool[0]
    assert api.total_loads() == 1


async def test_unhealthy_replicas_are_skipped() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=2)
    pool = replicas(2)
    placement.observe(pool[0], {"tga-a"})
    pool[0].healthy = False
    assert placement.warm(pool, "tga-a") is None
    assert await placement.ensure(pool, "tga-a", "/a") is pool[1]
    assert api.loads == Counter({("r1", "tga-a"): 1})
    pool[0].healthy = True
    pool[1].in_flight = 1
    assert placement.warm(pool, "tga-a") is pool[0]


async def test_observe_adopts_what_another_process_loaded_as_least_recently_used() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=2)
    pool = replicas(1)
    (replica,) = pool
    await placement.ensure(pool, "tga-mine", "/mine")
    placement.observe(replica, {"tga-mine", "tga-theirs"})
    assert placement.warm(pool, "tga-theirs") is replica
    assert placement.held(replica) == ["tga-theirs", "tga-mine"]
    await placement.ensure(pool, "tga-new", "/new")  # full: the adopted one goes first
    assert api.unloads == [("r0", "tga-theirs")]


async def test_observe_forgets_what_the_replica_no_longer_lists_but_not_a_load_in_progress() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=4)
    pool = replicas(1)
    (replica,) = pool
    await placement.ensure(pool, "tga-a", "/a")
    api.gate, api.started = asyncio.Event(), asyncio.Event()
    loading = asyncio.create_task(placement.ensure(pool, "tga-b", "/b"))
    await api.started.wait()
    placement.observe(replica, set())  # the engine restarted: it lists nothing
    assert placement.warm(pool, "tga-a") is None
    api.gate.set()
    assert await loading is replica
    assert placement.held(replica) == ["tga-b"]


async def test_retire_waits_for_requests_in_flight_then_unloads_everywhere() -> None:
    api = MemoryLora()
    placement = Placement(api, slots=2)
    pool = replicas(3)
    placement.observe(pool[0], {"tga-a"})
    placement.observe(pool[1], {"tga-a"})
    api.held = {"r0": {"tga-a"}, "r1": {"tga-a"}}
    placement.begin(pool[0], "tga-a")
    retiring = asyncio.create_task(placement.retire("tga-a", pool))
    await settle()
    assert placement.holders("tga-a") == []
    assert placement.warm(pool, "tga-a") is None  # no more routing to it
    with pytest.raises(AdapterNotFound):
        await placement.ensure(pool, "tga-a", "/a")
    await settle()
    assert not retiring.done() and api.unloads == []  # still waiting for the request in flight
    placement.end(pool[0], "tga-a")
    await retiring
    assert sorted(api.unloads) == [("r0", "tga-a"), ("r1", "tga-a"), ("r2", "tga-a")]  # r2: not loaded, fine
    assert api.held == {"r0": set(), "r1": set(), "r2": set()}
    assert api.total_loads() == 0


async def test_retire_gives_up_waiting_after_its_bound_and_survives_engine_errors() -> None:
    api = MemoryLora(fail_unload={"tga-a": LoraEngineError("engine down")})
    placement = Placement(api, slots=2)
    pool = replicas(1)
    placement.observe(pool[0], {"tga-a"})
    placement.begin(pool[0], "tga-a")
    await placement.retire("tga-a", pool, drain_s=0)
    assert api.unloads == [("r0", "tga-a")]
    assert placement.holders("tga-a") == []
    placement.end(pool[0], "tga-a")  # the straggler ends later: harmless


async def test_retire_waits_for_a_load_in_progress_then_unloads_it() -> None:
    api = MemoryLora(gate=asyncio.Event())
    placement = Placement(api, slots=2)
    pool = replicas(1)
    loading = asyncio.create_task(placement.ensure(pool, "tga-a", "/a"))
    await api.started.wait()
    retiring = asyncio.create_task(placement.retire("tga-a", pool))
    api.gate.set()  # type: ignore[union-attr]
    await loading
    await retiring
    assert api.held["r0"] == set()
    assert placement.holders("tga-a") == []


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slots"):
        Placement(MemoryLora(), slots=0)
