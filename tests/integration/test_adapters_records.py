"""The adapters table and its files on real Postgres, without HTTP: rows and folders stay consistent, tenants
apart (row-level security too), the platform secret, and the directory following changes made elsewhere."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool

from adapters import records
from adapters.directory import AdapterDirectory
from adapters.errors import AdapterNameTaken, AdapterNotFound
from adapters.records import NewAdapter
from adapters.storage import AdapterStore
from adapters.validation import AdapterFiles
from retrieval.paging import PageQuery
from retrieval.tenancy import tenant_transaction
from tests.integration.search_fixtures import add_tenant


def _checksum(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def _new(name: str, n: int = 1) -> NewAdapter:
    return NewAdapter(name=name, base_model="base", checksum=_checksum(n), bytes=10, rank=8,
                      target_modules=("q_proj", "v_proj"))


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


@pytest.fixture
def files(tmp_path: Path) -> AdapterFiles:
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(b"{}")
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    return AdapterFiles(folder / "adapter_config.json", folder / "adapter_model.safetensors")


@pytest.fixture
async def tenants(db_pool: AsyncConnectionPool) -> tuple[uuid.UUID, uuid.UUID]:
    async with db_pool.connection() as conn:
        return await add_tenant(conn), await add_tenant(conn)


async def test_rows_and_files_live_and_go_together(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = tenants
    one = await records.create(db_pool, store, a, _new("one"), files)
    two = await records.create(db_pool, store, b, _new("two"), files)
    assert store.has(_checksum(1)) and one.engine_name != two.engine_name

    with pytest.raises(AdapterNameTaken):
        await records.create(db_pool, store, a, _new("one", n=2), files)
    assert not store.folder(_checksum(2)).exists()  # refused before anything was stored

    gone = await records.begin_delete(db_pool, a, "one")
    assert gone.id == one.id
    with pytest.raises(AdapterNotFound):
        await records.get(db_pool, a, "one")
    # The name is free as soon as the delete begins, while the old row still holds its files.
    again = await records.create(db_pool, store, a, _new("one"), files)
    assert again.engine_name not in (one.engine_name, two.engine_name)
    assert await records.finish_delete(db_pool, store, a, gone) is False
    assert store.has(_checksum(1))

    await records.finish_delete(db_pool, store, a, await records.begin_delete(db_pool, a, "one"))
    assert store.has(_checksum(1))  # tenant b's adapter has the same bytes
    assert await records.finish_delete(db_pool, store, b, await records.begin_delete(db_pool, b, "two")) is True
    assert not store.folder(_checksum(1)).exists()
    async with db_pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) FROM adapters")).fetchone() == (0,)


async def test_a_delete_racing_an_upload_of_the_same_bytes_never_leaves_a_row_without_files(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = tenants
    for round_ in range(15):
        old = await records.create(db_pool, store, a, _new(f"old{round_}", n=6), files)
        doomed = await records.begin_delete(db_pool, a, old.name)
        if round_ % 2:  # both orders of starting
            _, new = await asyncio.gather(
                records.finish_delete(db_pool, store, a, doomed),
                records.create(db_pool, store, b, _new(f"new{round_}", n=6), files),
            )
        else:
            new, _ = await asyncio.gather(
                records.create(db_pool, store, b, _new(f"new{round_}", n=6), files),
                records.finish_delete(db_pool, store, a, doomed),
            )
        assert store.has(_checksum(6)), round_  # the new row's files are there
        await records.finish_delete(db_pool, store, b, await records.begin_delete(db_pool, b, new.name))
        assert not store.folder(_checksum(6)).exists()


async def test_deletes_left_unfinished_are_finished_later(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = tenants
    await records.create(db_pool, store, a, _new("left", n=4), files)
    await records.create(db_pool, store, b, _new("recent", n=5), files)
    await records.begin_delete(db_pool, a, "left")
    await records.begin_delete(db_pool, b, "recent")
    async with db_pool.connection() as conn:
        await conn.execute("UPDATE adapters SET updated_at = now() - interval '1 hour' WHERE name = 'left'")
    assert await records.finish_stale_deletes(db_pool, store) == 1
    assert not store.folder(_checksum(4)).exists() and store.has(_checksum(5))  # a recent one may be in progress
    async with db_pool.connection() as conn:
        assert await (await conn.execute("SELECT name FROM adapters")).fetchall() == [("recent",)]


async def test_a_failure_after_storing_removes_the_files_again(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _ = tenants

    async def broken_notify(conn: object, adapter_id: str) -> None:
        raise RuntimeError("lost the connection")

    monkeypatch.setattr(records, "_notify", broken_notify)
    with pytest.raises(RuntimeError):
        await records.create(db_pool, store, a, _new("x", n=3), files)
    assert not store.folder(_checksum(3)).exists()
    async with db_pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) FROM adapters")).fetchone() == (0,)


async def test_another_tenants_adapters_are_invisible_even_without_a_filter(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, b = tenants
    mine = await records.create(db_pool, store, a, _new("mine"), files)
    await records.create(db_pool, store, b, _new("theirs"), files)
    async with tenant_transaction(db_pool, a) as conn:
        cur = await conn.execute("SELECT id FROM adapters")  # no WHERE at all
        assert await cur.fetchall() == [(mine.id,)]
        cur = await conn.execute("UPDATE adapters SET status = 'failed' WHERE name = 'theirs' RETURNING id")
        assert await cur.fetchall() == []
    for call in (records.get, records.begin_delete):
        with pytest.raises(AdapterNotFound):
            await call(db_pool, a, "theirs")
    rows, more = await records.list_adapters(db_pool, a, PageQuery())
    assert [r.name for r in rows] == ["mine"] and more is False
    assert await records.mark_failed(db_pool, a, (await records.get(db_pool, b, "theirs")).id, "x", "y") is False


async def test_mark_failed_keeps_why_and_leaves_the_served_set(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, _ = tenants
    row = await records.create(db_pool, store, a, _new("bad"), files)
    assert await records.mark_failed(db_pool, a, row.id, "adapter_load_failed", "the engine said no") is True
    assert await records.mark_failed(db_pool, a, row.id, "again", "no change") is False  # failed already
    assert await records.mark_failed(db_pool, a, "not-an-id", "x", "y") is False
    public = (await records.get(db_pool, a, "bad")).public()
    assert public.status == "failed"
    assert public.last_error == records.LastError("adapter_load_failed", "the engine said no")
    assert [r.id for r in await records.ready_rows(db_pool)] == []


async def test_the_platform_secret_is_one_random_32_byte_key(db_pool: AsyncConnectionPool) -> None:
    async with db_pool.connection() as conn:
        rows = await (await conn.execute("SELECT cache_salt_key FROM platform_secrets")).fetchall()
    assert len(rows) == 1
    key = bytes(rows[0][0])
    assert len(key) == 32 and len(set(key)) > 8


# -- the directory ------------------------------------------------------------------------------------------------


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
async def followed(
    db_pool: AsyncConnectionPool, store: AdapterStore
) -> AsyncIterator[tuple[AdapterDirectory, asyncio.Task[None]]]:
    directory = AdapterDirectory(store.folder)
    task = asyncio.get_running_loop().create_task(directory.follow(db_pool, interval=60.0))
    yield directory, task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_directory_follows_changes_another_replica_makes(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID],
    followed: tuple[AdapterDirectory, asyncio.Task[None]],
) -> None:
    directory, _ = followed
    a, b = tenants
    row = await records.create(db_pool, store, a, _new("voice"), files)
    await _until(lambda: directory.lookup(a, "voice") is not None, "the new adapter appears")
    entry = directory.lookup(a, "voice")
    assert entry is not None
    assert (entry.id, entry.engine_name, entry.path) == (row.id, row.engine_name, str(store.folder(row.checksum)))
    assert directory.lookup(b, "voice") is None and directory.for_tenant(b) == []
    assert directory.by_engine_name(row.engine_name) is entry

    await records.mark_failed(db_pool, a, row.id, "adapter_load_failed", "no")
    await _until(lambda: directory.lookup(a, "voice") is None, "a failed adapter leaves")
    other = await records.create(db_pool, store, a, _new("other"), files)
    await _until(lambda: directory.lookup(a, "other") is not None, "the next one appears")
    await records.begin_delete(db_pool, a, "other")
    await _until(lambda: directory.by_engine_name(other.engine_name) is None, "a deleting adapter leaves")


async def test_the_directory_reconnects_when_its_connection_dies(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID],
    followed: tuple[AdapterDirectory, asyncio.Task[None]],
) -> None:
    directory, task = followed
    a, _ = tenants
    await records.create(db_pool, store, a, _new("before"), files)
    await _until(lambda: directory.lookup(a, "before") is not None, "following")
    async with db_pool.connection() as conn:
        cur = await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN tenantgate_adapters%'"
        )
        assert await cur.fetchall() == [(True,)]
    await records.create(db_pool, store, a, _new("after"), files)
    await _until(lambda: directory.lookup(a, "after") is not None, "following again after the reconnection")
    assert not task.done()


async def test_own_changes_apply_at_once_and_a_refresh_keeps_unchanged_entries(
    db_pool: AsyncConnectionPool, store: AdapterStore, files: AdapterFiles, tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, _ = tenants
    directory = AdapterDirectory(store.folder)
    row = await records.create(db_pool, store, a, _new("mine"), files)
    entry = directory.entry(row.id, a, row.name, row.base_model, row.engine_name, row.checksum, row.rank)
    directory.apply(entry)
    assert directory.lookup(a, "mine") is entry  # no database round trip, no notification needed
    await directory.refresh(db_pool)
    assert directory.lookup(a, "mine") is entry  # equal row: the same object, so routes cached on it hold
    directory.drop(row.id)
    assert directory.lookup(a, "mine") is None and len(directory) == 0
    await directory.refresh(db_pool)
    assert directory.lookup(a, "mine") == entry  # the row is still ready in the database


async def test_the_directory_reloads_everything_now_and_then(
    db_pool: AsyncConnectionPool, store: AdapterStore, tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, _ = tenants
    directory = AdapterDirectory(store.folder)
    task = asyncio.get_running_loop().create_task(directory.follow(db_pool, interval=0.2))
    try:
        async with db_pool.connection() as conn:  # a change that sent no notification
            await conn.execute(
                "INSERT INTO adapters (id, tenant_id, name, base_model, engine_name, checksum, bytes, rank,"
                " target_modules, status) VALUES (%s, %s, 'quiet', 'base', %s, %s, 1, 8, '{q_proj}', 'ready')",
                (records.new_adapter_id(), a, records.new_engine_name(), _checksum(9)),
            )
        await _until(lambda: directory.lookup(a, "quiet") is not None, "the periodic reload finds it")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
