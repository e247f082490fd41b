"""EnginePool against fake vLLM servers: discovery, health, choice, readiness."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.engines import (
    EnginePool,
    EngineTimeouts,
    EngineUnavailableError,
    ModelNotServedError,
    Replica,
)
from gateway.engines.http1 import HttpClient
from tests.fakes.vllm import FakeVLLM

TIMEOUTS = EngineTimeouts(connect=1.0, first_byte=5.0, total=10.0)


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(connect_timeout=TIMEOUTS.connect)
    yield client
    await client.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[FakeVLLM]]:
    """Two chat replicas and one embedding replica."""
    servers = [
        FakeVLLM(models=("chat-a", "chat-b")),
        FakeVLLM(models=("chat-a",)),
        FakeVLLM(models=("embed-a",), purpose="embed"),
    ]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


def make_pool(http: HttpClient, servers: list[FakeVLLM], interval: float = 5.0) -> EnginePool:
    return EnginePool(
        http, [servers[0].url, servers[1].url], [servers[2].url], timeouts=TIMEOUTS, health_interval=interval
    )


def health(pool: EnginePool) -> list[bool]:
    return [r.healthy for r in pool.replicas]


async def wait_until(predicate: Callable[[], bool]) -> None:
    for _ in range(150):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached within 3 s")


async def test_refresh_discovers_models(http: HttpClient, servers: list[FakeVLLM]) -> None:
    pool = make_pool(http, servers)
    assert not any(r.healthy for r in pool.replicas)
    assert pool.readiness()[0] is False
    await pool.refresh()
    assert all(r.healthy and r.last_check is not None for r in pool.replicas)
    assert pool.replicas[0].models == {"chat-a", "chat-b"}
    card = pool.replicas[0].model_cards["chat-a"]
    assert (card.owned_by, card.max_model_len, card.parent, card.is_adapter) == ("vllm", 2048, None, False)
    ids = [(r.engine_model, r.purpose) for r in pool.routes()]
    assert ids == [("chat-a", "generate"), ("chat-b", "generate"), ("embed-a", "embed")]
    assert [r.engine_model for r in pool.routes("embed")] == ["embed-a"]
    first, second, _ = pool.replicas
    assert pool.route("chat-a", "generate").replicas == (first, second)
    assert pool.route("chat-b", "generate").replicas == (first,)
    ready, details = pool.readiness()
    assert ready
    assert details["models"]["chat-a"] == {"purpose": "generate", "replicas": 2, "healthy_replicas": 2}
    assert details["replicas"][2]["url"] == servers[2].url


async def test_choose_least_loaded_with_rotation(http: HttpClient, servers: list[FakeVLLM]) -> None:
    pool = make_pool(http, servers)
    await pool.refresh()
    first, second, embed = pool.replicas
    assert pool.choose("chat-b", "generate") is first
    assert pool.choose("embed-a", "embed") is embed
    first.in_flight = 3
    second.in_flight = 1
    assert pool.choose("chat-a", "generate") is second
    second.in_flight = 5
    assert pool.choose("chat-a", "generate") is first
    first.in_flight = second.in_flight = 2
    picks = Counter(pool.choose("chat-a", "generate") for _ in range(10))
    assert picks == {first: 5, second: 5}
    assert pool.choose("chat-a", "generate", exclude=[first]) is second
    with pytest.raises(EngineUnavailableError):
        pool.choose("chat-a", "generate", exclude={first, second})


async def test_unknown_vs_unavailable_model(http: HttpClient, servers: list[FakeVLLM]) -> None:
    pool = make_pool(http, servers)
    await pool.refresh()
    with pytest.raises(ModelNotServedError) as not_served:
        pool.choose("missing", "generate")
    assert not_served.value.code == "model_not_found"
    assert not_served.value.model == "missing"
    with pytest.raises(ModelNotServedError):
        pool.choose("embed-a", "generate")  # known, but for another purpose
    await servers[0].stop()
    await pool.refresh()
    first = pool.replicas[0]
    assert not first.healthy
    assert first.last_error is not None
    assert first.last_error.startswith("cannot connect")
    assert first.models == {"chat-a", "chat-b"}  # kept while down
    with pytest.raises(EngineUnavailableError) as unavailable:
        pool.choose("chat-b", "generate")
    assert unavailable.value.code == "engine_unavailable"
    assert pool.choose("chat-a", "generate") is pool.replicas[1]
    assert [r.engine_model for r in pool.routes("generate")] == ["chat-a", "chat-b"]
    ready, details = pool.readiness()
    assert not ready
    assert details["models"]["chat-b"]["healthy_replicas"] == 0


async def test_failing_health_and_bad_model_list(http: HttpClient, servers: list[FakeVLLM]) -> None:
    pool = make_pool(http, servers)
    servers[1].faults.health_status = 503
    await pool.refresh()
    assert health(pool) == [True, False, True]
    assert pool.replicas[1].last_error == "GET /health answered HTTP 503"
    servers[1].faults.health_status = 200
    servers[1].set_models(("chat-a", "adapter-x"))
    await pool.refresh()
    assert health(pool) == [True, True, True]
    assert pool.choose("adapter-x", "generate") is pool.replicas[1]


async def test_mark_unhealthy_and_health_loop_revives(http: HttpClient, servers: list[FakeVLLM]) -> None:
    pool = make_pool(http, servers, interval=0.05)
    await pool.start()
    try:
        first = pool.replicas[0]
        pool.mark_unhealthy(first, "test says so")
        assert (first.healthy, first.last_error) == (False, "test says so")
        await wait_until(lambda: first.healthy)  # the engine is fine: the next check revives it
        await servers[0].stop()
        await wait_until(lambda: not first.healthy)
        await servers[0].start()
        await wait_until(lambda: first.healthy)
        assert first.last_error is None
    finally:
        await pool.stop()
    assert pool.readiness()[0]


async def test_down_replica_is_probed_with_backoff_not_every_interval(
    http: HttpClient, servers: list[FakeVLLM]
) -> None:
    """With a 60 s health interval, a replica that went down is back within a fraction of a second."""
    pool = EnginePool(http, [servers[0].url], [servers[2].url], timeouts=TIMEOUTS, health_interval=60.0,
                      recheck_initial=0.05)
    await pool.start()
    try:
        first = pool.replicas[0]
        await servers[0].stop()
        pool.mark_unhealthy(first, "connection refused")
        await wait_until(lambda: first.failures >= 4)  # 0.05 s, 0.1 s, 0.2 s: probes keep coming, slower
        loop = asyncio.get_running_loop()
        assert not first.healthy
        assert 0.1 < first.next_check - loop.time() <= 0.05 * 2 ** (first.failures - 1)
        await servers[0].start()
        await wait_until(lambda: first.healthy)
        assert (first.failures, first.last_error) == (0, None)
        assert first.next_check - loop.time() > 50  # healthy again: back to the slow interval
        assert pool.replicas[1].failures == 0 and pool.replicas[1].next_check - loop.time() > 50
    finally:
        await pool.stop()


async def test_probes_the_gateway_cannot_make_leave_every_replica_as_it_was(
    servers: list[FakeVLLM], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of file descriptors is this process's trouble: no replica changes state, one line is logged for the
    whole episode, and the probes come again soon."""
    http = HttpClient(connect_timeout=TIMEOUTS.connect, max_idle_per_origin=0)  # every probe connects anew
    try:
        pool = make_pool(http, servers)
        await servers[1].stop()
        await pool.refresh()
        assert health(pool) == [True, False, True]
        before = [(r.failures, r.last_error) for r in pool.replicas]
        loop = asyncio.get_running_loop()

        async def no_descriptors(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(loop, "create_connection", no_descriptors)
        with caplog.at_level(logging.INFO, logger="gateway.engines.pool"):
            await pool.refresh()
            await pool.refresh()
            assert health(pool) == [True, False, True]
            assert [(r.failures, r.last_error) for r in pool.replicas] == before
            assert all(r.next_check <= loop.time() + 0.25 for r in pool.replicas)  # soon, not in 5 s
            monkeypatch.undo()
            await pool.refresh()
        assert health(pool) == [True, False, True]
        assert [r.getMessage() for r in caplog.records] == [
            "cannot probe engines: Too many open files (a shortage in this process; engines keep their health state)",
            "engines can be probed again",
        ]
    finally:
        await http.close()


async def test_readiness_without_replicas_or_purpose(http: HttpClient, servers: list[FakeVLLM]) -> None:
    empty = EnginePool(http, [], [], timeouts=TIMEOUTS)
    await empty.refresh()
    assert empty.readiness() == (False, {"ready": False, "models": {}, "replicas": []})
    pool = make_pool(http, servers)
    await servers[2].stop()
    await pool.refresh()
    assert pool.readiness()[0] is False  # embeddings configured, none reachable, no model known


def test_replica_urls() -> None:
    replica = Replica("http://user:secret@engine:8000/", "generate")
    assert replica.url == "http://user:secret@engine:8000"
    assert replica.display_url == "http://engine:8000"
    origin = replica.origin
    assert (origin.tls, origin.host, origin.port, origin.base_path) == (False, "engine", 8000, b"")
    assert origin.fixed_headers == b"Host: engine:8000\r\nAuthorization: Basic dXNlcjpzZWNyZXQ=\r\n"
    behind_proxy = Replica("https://[::1]/vllm/a/", "embed").origin
    assert (behind_proxy.tls, behind_proxy.host, behind_proxy.port) == (True, "::1", 443)
    assert (behind_proxy.base_path, behind_proxy.fixed_headers) == (b"/vllm/a", b"Host: [::1]\r\n")
    with pytest.raises(ValueError, match="absolute"):
        Replica("engine:8000", "generate")
    with pytest.raises(ValueError, match="positive"):
        EngineTimeouts(connect=0)
