"""Benchmark adapter placement: our policy against random and least-loaded-only, in the same run.

    python -m loadtests.bench_placement                          # 20,000 requests per policy (~3.3 min here)
    python -m loadtests.bench_placement --requests 5000 --json placement.json
    python -m loadtests.bench_placement --hot-factor 2 --hot-margin 4 --policies ours   # tune the balancing rule

Setup (the issue's): 4 fake vLLM replicas (``tests/fakes/vllm.py``, in this process, real HTTP) with the runtime
LoRA API, ``--slots`` 8 adapters each and a ``--load-delay`` of 30 ms per load; 1,000 adapters over 100 tenants
(10 each, tiny folders with an ``adapter_config.json``); requests pick an adapter from a Zipf law (s = 1.1 over the
1,000 ranks, seeded) and ``--concurrency`` 16 workers send them. Each request goes to the chosen replica as a real
chat call with ``"model": <engine name>``; the engine answers after ``--engine-delay`` (5 ms), so a replica's
in-flight count is real. Everything shares one event loop: on a busy 2-core host a 30 ms load takes 50-70 ms.
Engine calls go through a small aiohttp LoraApi (below) that maps vLLM's answers as the gateway's does.

Policies (every one bounds a replica to ``--slots`` adapters and evicts its least recently used idle adapter):

- ``ours``: :class:`adapters.placement.Placement` (warm hit on the least loaded holder, single-flight loads on the
  least loaded replica, a second copy when the holder is overloaded: ``--hot-factor``, ``--hot-margin``);
- ``random``: a random replica; load the adapter there if it lacks it;
- ``least-loaded``: the replica with the fewest requests in flight; load there if it lacks it.

Figures per policy: the warm-hit rate (requests whose adapter was on the chosen replica already), loads and
evictions (unloads) per 1,000 requests, counted by the engines; the added latency of placement, p50/p95 on hits
(``warm()`` + ``begin()`` + ``end()`` for ours, the same bookkeeping for the others, timed with perf_counter_ns
around the placement calls only, not the engine's answer) and on misses (the time to a replica that holds the
adapter, load included); the share of requests on the busiest replica (balance). Targets (the issue): random's
loads / ours >= 3, ours' hit p95 <= 0.1 ms.

Figures (defaults, 2-core shared host, 3 min 18 s)::

    policy         hit rate  loads/1k  evict/1k  hit p50  hit p95  miss p50  miss p95  busiest  waits
    ours              47.3%     492.1     490.5   0.0112   0.0170     46.39     63.36    25.5%      0
    random            19.7%     737.6     736.0   0.0171   0.0254     45.32     65.41    25.4%    213
    least-loaded      18.2%     732.6     731.0   0.0168   0.0225     51.87     85.83    34.4%   1561

Hit p95 0.017 ms (target 0.1 ms: met). Loads random / ours 1.5x (target 3x: missed, and out of reach in this setup:
every request for an adapter no replica holds is a load, and 32 slots hold at best the 32 most popular of 1,000
adapters, 63% of a Zipf 1.1 mix, so ours cannot go below ~370 loads per 1,000 while random, each replica an LRU of 8
over the whole mix, stays near 730: 2x at most). Concurrency costs hits: a request pins its adapter's slot, and a
miss pins it for the load too (concurrency 8: ours 54% hits on 5,000 requests; 32: 33%). Eviction by use instead of
recency (``--eviction lru``) and the hot-copy rule (``--hot-margin 1000`` turns it off) can be compared the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import platform
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from adapters.errors import AdapterCapacityExhausted
from adapters.lora_api import (
    LoraAlreadyLoaded,
    LoraEngineError,
    LoraFilesRejected,
    LoraNotLoaded,
    LoraUnsupported,
)
from adapters.placement import Placement
from tests.fakes.vllm import FakeVLLM

BASE_MODEL = "bench-base"
POLICIES = ("ours", "random", "least-loaded")


@dataclass(eq=False, slots=True)
class BenchReplica:
    """What placement reads of a replica (the gateway's ``Replica`` has the same two fields)."""

    url: str
    healthy: bool = True
    in_flight: int = 0

    def __hash__(self) -> int:
        return id(self)


class HttpLora:
    """A minimal LoraApi over aiohttp, mapping vLLM's answers (see adapters/lora_api.py)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http

    async def load(self, replica: BenchReplica, engine_name: str, path: str) -> None:
        doc = {"lora_name": engine_name, "lora_path": path}
        async with self._http.post(replica.url + "/v1/load_lora_adapter", json=doc) as resp:
            text = await resp.text()
            status = resp.status
        if status == 200:
            return
        if status == 400 and "already been loaded" in text:
            raise LoraAlreadyLoaded(text)
        if status == 404 and '"detail"' in text:
            raise LoraUnsupported(f"HTTP 404 on {replica.url}/v1/load_lora_adapter")
        if status in (400, 404):
            raise LoraFilesRejected(text)
        raise LoraEngineError(f"HTTP {status}: {text[:200]}")

    async def unload(self, replica: BenchReplica, engine_name: str) -> None:
        async with self._http.post(replica.url + "/v1/unload_lora_adapter", json={"lora_name": engine_name}) as resp:
            text = await resp.text()
            status = resp.status
        if status == 200:
            return
        if status == 404:
            raise LoraNotLoaded(text)
        raise LoraEngineError(f"HTTP {status}: {text[:200]}")


class Policy(Protocol):
    """One request's placement: ``choose`` (sync, None on a miss), ``place`` (the miss path), ``begin``/``end``."""

    def choose(self, replicas: Sequence[BenchReplica], name: str) -> BenchReplica | None: ...

    async def place(self, replicas: Sequence[BenchReplica], name: str, path: str) -> BenchReplica: ...

    def begin(self, replica: BenchReplica, name: str) -> None: ...

    def end(self, replica: BenchReplica, name: str) -> None: ...


class Ours:
    def __init__(self, placement: Placement[BenchReplica]) -> None:
        self.placement = placement

    def choose(self, replicas: Sequence[BenchReplica], name: str) -> BenchReplica | None:
        return self.placement.warm(replicas, name)

    async def place(self, replicas: Sequence[BenchReplica], name: str, path: str) -> BenchReplica:
        return await self.placement.ensure(replicas, name, path)

    def begin(self, replica: BenchReplica, name: str) -> None:
        self.placement.begin(replica, name)

    def end(self, replica: BenchReplica, name: str) -> None:
        self.placement.end(replica, name)


class Naive:
    """A baseline: the replica comes from ``pick`` (random, or least loaded) whatever it holds; LRU eviction of an
    idle adapter there when it is full; concurrent loads of one adapter on one replica shared, an adapter being
    unloaded not loaded again there until that ends, and a fresh adapter kept for its waiters (as ours does), so the
    baselines lose nothing to races."""

    def __init__(self, api: HttpLora, slots: int, pick: str, seed: int) -> None:
        self._api = api
        self._slots = slots
        self._pick = pick
        self._rng = random.Random(seed)
        self._held: dict[BenchReplica, dict[str, int]] = {}
        self._busy: dict[BenchReplica, Counter[str]] = {}
        self._loads: dict[tuple[BenchReplica, str], asyncio.Task[None]] = {}
        self._waiting: Counter[tuple[BenchReplica, str]] = Counter()
        self._reserved: Counter[tuple[BenchReplica, str]] = Counter()
        self._unloading: set[tuple[BenchReplica, str]] = set()
        self._tick = itertools.count()
        self._picked: BenchReplica | None = None

    def choose(self, replicas: Sequence[BenchReplica], name: str) -> BenchReplica | None:
        # The pick is kept for place(), which the worker calls right after a miss (no await in between).
        if self._pick == "random":
            replica = replicas[self._rng.randrange(len(replicas))]
        else:
            replica = min(replicas, key=lambda r: r.in_flight)
        self._picked = replica
        return replica if name in self._held.get(replica, {}) else None

    async def place(self, replicas: Sequence[BenchReplica], name: str, path: str) -> BenchReplica:
        replica = self._picked
        assert replica is not None
        key = (replica, name)
        if key in self._unloading:
            raise AdapterCapacityExhausted("being unloaded there")  # the worker retries shortly
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(self._load(replica, name, path))
            self._loads[key] = task
        self._waiting[key] += 1
        try:
            await asyncio.shield(task)
        finally:
            self._waiting[key] -= 1
            if self._reserved[key]:
                self._reserved[key] -= 1
                self.end(replica, name)
        return replica

    async def _load(self, replica: BenchReplica, name: str, path: str) -> None:
        key = (replica, name)
        try:
            await self._load_there(replica, name, path)
        finally:
            del self._loads[key]
        self._reserved[key] = self._waiting[key]
        self._busy[replica][name] += self._waiting[key]

    async def _load_there(self, replica: BenchReplica, name: str, path: str) -> None:
        held = self._held.setdefault(replica, {})
        busy = self._busy.setdefault(replica, Counter())
        if name in held:
            return
        loading = sum(1 for (r, _) in self._loads if r is replica) - 1
        excess = len(held) + loading + 1 - self._slots
        if excess > 0:
            idle = sorted((last, n) for n, last in held.items() if not busy[n])
            if len(idle) < excess:
                raise AdapterCapacityExhausted("full of adapters in use")
            victims = [victim for _, victim in idle[:excess]]
            for victim in victims:  # off the books before the first await
                del held[victim]
                self._unloading.add((replica, victim))
            for victim in victims:
                with contextlib.suppress(LoraNotLoaded):
                    await self._api.unload(replica, victim)
                self._unloading.discard((replica, victim))
        with contextlib.suppress(LoraAlreadyLoaded):
            await self._api.load(replica, name, path)
        held[name] = next(self._tick)

    def begin(self, replica: BenchReplica, name: str) -> None:
        self._busy.setdefault(replica, Counter())[name] += 1
        held = self._held.get(replica)
        if held is not None and name in held:
            held[name] = next(self._tick)

    def end(self, replica: BenchReplica, name: str) -> None:
        self._busy[replica][name] -= 1


@dataclass
class Result:
    policy: str
    requests: int
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0
    engine_overflow: int = 0  # loads an engine took while all its slots were taken (should be 0)
    capacity_waits: int = 0  # times every candidate replica was full of adapters in use (retried)
    stale_retries: int = 0  # engine answered 404 for an adapter placement thought loaded (retried)
    errors: int = 0
    error_statuses: Counter[int] = field(default_factory=Counter)
    per_replica: list[int] = field(default_factory=list)
    hit_ns: list[int] = field(default_factory=list, repr=False)
    miss_ns: list[int] = field(default_factory=list, repr=False)
    wall_s: float = 0.0

    def summary(self) -> dict[str, object]:
        per_k = 1000 / self.requests
        return {
            "policy": self.policy,
            "requests": self.requests,
            "warm_hit_rate": self.hits / self.requests,
            "loads_per_1k": self.loads * per_k,
            "evictions_per_1k": self.evictions * per_k,
            "hit_p50_ms": _pct(self.hit_ns, 50),
            "hit_p95_ms": _pct(self.hit_ns, 95),
            "miss_p50_ms": _pct(self.miss_ns, 50),
            "miss_p95_ms": _pct(self.miss_ns, 95),
            "busiest_replica_share": max(self.per_replica) / max(1, sum(self.per_replica)),
            "per_replica": self.per_replica,
            "capacity_waits": self.capacity_waits,
            "stale_retries": self.stale_retries,
            "engine_overflow": self.engine_overflow,
            "errors": self.errors,
            "error_statuses": {str(k): v for k, v in self.error_statuses.items()},
            "wall_s": self.wall_s,
        }


def _pct(values_ns: list[int], pct: float) -> float:
    if not values_ns:
        return float("nan")
    ordered = sorted(values_ns)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] / 1e6


def zipf_mix(adapters: int, requests: int, s: float, seed: int) -> list[int]:
    """``requests`` adapter indices drawn from a Zipf law over ranks 1..adapters; ranks are shuffled over the
    adapters (so tenants' popularity is mixed), both seeded."""
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1.0 / (k**s) for k in range(1, adapters + 1)))
    order = list(range(adapters))
    rng.shuffle(order)
    total = weights[-1]
    return [order[bisect.bisect_left(weights, rng.random() * total)] for _ in range(requests)]


def make_adapters(root: Path, tenants: int, per_tenant: int) -> list[tuple[str, str]]:
    """(engine name, folder) per adapter: opaque names, as the gateway gives vLLM."""
    out = []
    for t in range(tenants):
        for a in range(per_tenant):
            folder = root / f"t{t:03d}" / f"a{a:02d}"
            folder.mkdir(parents=True)
            (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
            out.append((f"tga-{t:03d}{a:02d}{'0' * 27}", str(folder)))
    return out


async def run_policy(name: str, opts: argparse.Namespace, adapters: list[tuple[str, str]], mix: list[int]) -> Result:
    fakes = [
        FakeVLLM(models=(BASE_MODEL,), lora=True, lora_slots=opts.slots, lora_load_delay=opts.load_delay)
        for _ in range(opts.replicas)
    ]
    result = Result(name, len(mix))
    connector = aiohttp.TCPConnector(limit=0)  # no wait for a connection: loads and chats never queue here
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            for fake in fakes:
                await fake.start()
                fake.faults.header_delay = opts.engine_delay
            replicas = [BenchReplica(fake.url) for fake in fakes]
            api = HttpLora(http)
            policy: Policy
            if name == "ours":
                placement = Placement(
                    api, slots=opts.slots, hot_factor=opts.hot_factor, hot_margin=opts.hot_margin,
                    eviction=opts.eviction, aging_every=opts.aging_every,
                )  # fmt: skip
                policy = Ours(placement)
            else:
                policy = Naive(api, opts.slots, name, opts.seed + 1)
            counts: Counter[int] = Counter()
            queue = iter(mix)
            start = time.perf_counter()
            await asyncio.gather(
                *(_worker(policy, replicas, adapters, queue, http, result, counts) for _ in range(opts.concurrency))
            )
            result.wall_s = time.perf_counter() - start
            result.loads = sum(fake.lora_loads for fake in fakes)
            result.evictions = sum(fake.lora_unloads for fake in fakes)
            result.engine_overflow = sum(fake.lora_evictions for fake in fakes)
            result.per_replica = [counts[i] for i in range(len(replicas))]
        finally:
            for fake in fakes:
                await fake.stop()
    return result


async def _worker(
    policy: Policy,
    replicas: list[BenchReplica],
    adapters: list[tuple[str, str]],
    queue: Iterator[int],
    http: aiohttp.ClientSession,
    result: Result,
    counts: Counter[int],
) -> None:
    index = {id(replica): i for i, replica in enumerate(replicas)}
    for pick in queue:  # shared by the workers: each request is taken once
        engine_name, path = adapters[pick]
        for attempt in range(20):
            t0 = time.perf_counter_ns()
            replica = policy.choose(replicas, engine_name)
            hit = replica is not None
            if replica is None:
                try:
                    replica = await policy.place(replicas, engine_name, path)
                except AdapterCapacityExhausted:
                    result.capacity_waits += 1
                    await asyncio.sleep(0.005)
                    continue
            policy.begin(replica, engine_name)
            t1 = time.perf_counter_ns()
            replica.in_flight += 1
            try:
                status = await _chat(http, replica, engine_name)
            finally:
                replica.in_flight -= 1
                t2 = time.perf_counter_ns()
                policy.end(replica, engine_name)
                t3 = time.perf_counter_ns()
            if status == 404 and attempt == 0:
                result.stale_retries += 1
                continue
            if status != 200:
                result.errors += 1
                result.error_statuses[status] += 1
            if attempt == 0 and hit:
                result.hits += 1
                result.hit_ns.append((t1 - t0) + (t3 - t2))
            else:
                result.misses += 1
                result.miss_ns.append((t1 - t0) + (t3 - t2))
            counts[index[id(replica)]] += 1
            break
        else:
            result.errors += 1


async def _chat(http: aiohttp.ClientSession, replica: BenchReplica, engine_name: str) -> int:
    body = {"model": engine_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with http.post(replica.url + "/v1/chat/completions", json=body) as resp:
        await resp.read()
        return resp.status


def print_table(results: list[Result], opts: argparse.Namespace) -> dict[str, float]:
    head = (
        f"{'policy':<14}{'hit rate':>9}{'loads/1k':>10}{'evict/1k':>10}{'hit p50':>9}{'hit p95':>9}"
        f"{'miss p50':>10}{'miss p95':>10}{'busiest':>9}{'waits':>7}{'stale':>7}{'err':>5}{'wall':>7}"
    )
    print(head)
    for r in results:
        s = r.summary()
        print(
            f"{r.policy:<14}{s['warm_hit_rate']:>9.1%}{s['loads_per_1k']:>10.1f}{s['evictions_per_1k']:>10.1f}"
            f"{s['hit_p50_ms']:>9.4f}{s['hit_p95_ms']:>9.4f}{s['miss_p50_ms']:>10.2f}{s['miss_p95_ms']:>10.2f}"
            f"{s['busiest_replica_share']:>9.1%}{r.capacity_waits:>7}{r.stale_retries:>7}{r.errors:>5}"
            f"{r.wall_s:>6.0f}s" + (f"  HTTP {dict(r.error_statuses)}" if r.error_statuses else "")
        )
    print("(latencies in ms: placement's own time; a miss includes the load. busiest: share of requests on the"
          " busiest replica; waits: every replica full of adapters in use, retried after 5 ms; stale: the engine did"
          " not hold an adapter placement thought loaded, retried once)")
    by = {r.policy: r for r in results}
    verdict: dict[str, float] = {}
    ours = by.get("ours")
    if ours is not None:
        hit_p95 = _pct(ours.hit_ns, 95)
        verdict["ours_hit_p95_ms"] = hit_p95
        print(f"ours: hit p95 {hit_p95:.4f} ms (target <= 0.1 ms): {'MET' if hit_p95 <= 0.1 else 'MISSED'}")
        for other in ("random", "least-loaded"):
            if other in by:
                ratio = by[other].loads / max(1, ours.loads)
                verdict[f"loads_{other}_over_ours"] = ratio
                target = " (target >= 3)" if other == "random" else ""
                met = "" if other != "random" else (": MET" if ratio >= 3 else ": MISSED")
                print(f"loads {other} / ours: {by[other].loads} / {ours.loads} = {ratio:.1f}x{target}{met}")
    return verdict


async def main_async(opts: argparse.Namespace) -> dict[str, object]:
    """Run every policy; print the table; the JSON document."""
    root = Path(tempfile.mkdtemp(prefix="tenantgate-bench-placement-"))
    try:
        adapters = make_adapters(root, opts.tenants, opts.adapters // opts.tenants)
        mix = zipf_mix(len(adapters), opts.requests, opts.zipf, opts.seed)
        distinct = len(set(mix))
        top = Counter(mix).most_common(1)[0][1] / len(mix)
        print(
            f"bench_placement: {opts.replicas} replicas x {opts.slots} slots, {len(adapters)} adapters over "
            f"{opts.tenants} tenants, {opts.requests} requests (Zipf s={opts.zipf}, seed {opts.seed}: {distinct} "
            f"adapters asked, the hottest {top:.1%}), concurrency {opts.concurrency}, load delay "
            f"{opts.load_delay * 1000:.0f} ms, engine delay {opts.engine_delay * 1000:.0f} ms, hot rule "
            f"{opts.hot_factor} x min + {opts.hot_margin}, eviction {opts.eviction}; Python "
            f"{platform.python_version()} on {platform.machine()}",
            flush=True,
        )
        results = []
        for name in opts.policies:
            result = await run_policy(name, opts, adapters, mix)
            print(f"  {name}: done in {result.wall_s:.1f} s", flush=True)
            results.append(result)
        verdict = print_table(results, opts)
        return {
            "options": {k: v for k, v in vars(opts).items() if k != "json"},
            "results": [r.summary() for r in results],
            "verdict": verdict,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--load-delay", type=float, default=0.03, help="seconds per adapter load (engine side)")
    parser.add_argument("--engine-delay", type=float, default=0.005, help="seconds before the engine answers")
    parser.add_argument("--hot-factor", type=float, default=2.0)
    parser.add_argument("--hot-margin", type=int, default=4)
    parser.add_argument("--eviction", choices=("lfu", "lru"), default="lfu", help="ours: eviction order")
    parser.add_argument("--aging-every", type=int, default=1000, help="ours: halve use counts every N requests")
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--json", metavar="PATH")
    opts = parser.parse_args(argv)
    if opts.adapters % opts.tenants:
        parser.error("--adapters must be a multiple of --tenants")
    return opts


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        doc = asyncio.run(main_async(opts))
    else:
        doc = uvloop.run(main_async(opts))
    if opts.json:
        Path(opts.json).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
