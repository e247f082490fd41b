"""File batches through the official SDK: create (file_ids with shared attributes, or files each with their
own), the derived status and counts, cancel, list files, 2,000 files, the SDK's pollers."""

from __future__ import annotations

import json
import uuid

import openai
import pytest

from tests.integration.conftest import Gateway, TenantKeys
from tests.integration.vector_stores_support import (
    RecordingQueue,
    complete,
    fx_queue,  # noqa: F401  # the `queue` fixture
    set_status,
    upload,
)


async def test_batch_with_shared_attributes_and_its_status(
    gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue
) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 3)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create()
    batch = await client.vector_stores.file_batches.create(
        store.id, file_ids=file_ids, attributes={"src": "wiki"},
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 300, "chunk_overlap_tokens": 50}},
    )
    assert batch.id.startswith("vsfb_") and batch.object == "vector_store.files_batch"
    assert (batch.vector_store_id, batch.status) == (store.id, "in_progress")
    assert batch.file_counts.model_dump() == {"in_progress": 3, "completed": 0, "failed": 0, "cancelled": 0, "total": 3}
    assert queue.submitted == [(uuid.UUID(tenant.tenant_id), store.id, file_ids)]
    files = [f async for f in client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)]
    assert sorted(f.id for f in files) == sorted(file_ids)
    assert all(f.attributes == {"src": "wiki"} for f in files)
    assert all(f.chunking_strategy.static.max_chunk_size_tokens == 300 for f in files)  # type: ignore[union-attr]

    await complete(gateway, tenant.tenant_id, store.id, file_ids[0], ["a"])
    await set_status(gateway, store.id, file_ids[1], "failed")
    user = gateway.openai(tenant.user_key)
    assert (await user.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id)).status == "in_progress"
    await complete(gateway, tenant.tenant_id, store.id, file_ids[2], ["c"])
    done = await user.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id)
    assert done.status == "completed"  # some failed: completed, the failure is in file_counts
    assert (done.file_counts.completed, done.file_counts.failed) == (2, 1)
    failed = [f.id async for f in user.vector_stores.file_batches.list_files(
        batch.id, vector_store_id=store.id, filter="failed")]
    assert failed == [file_ids[1]]


async def test_batch_of_files_each_with_its_own(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 2)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create()
    batch = await client.vector_stores.file_batches.create(
        store.id,
        files=[
            {"file_id": file_ids[0], "attributes": {"n": 1}},
            {"file_id": file_ids[1], "chunking_strategy": {
                "type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}}},
        ],
        attributes={"ignored": True},
    )
    first = await client.vector_stores.files.retrieve(file_ids[0], vector_store_id=store.id)
    second = await client.vector_stores.files.retrieve(file_ids[1], vector_store_id=store.id)
    assert (first.attributes, second.attributes) == ({"n": 1}, {})
    assert first.chunking_strategy.static.max_chunk_size_tokens == 800  # type: ignore[union-attr]
    assert second.chunking_strategy.static.chunk_overlap_tokens == 50  # type: ignore[union-attr]
    # Every file failed: the batch failed.
    for file_id in file_ids:
        await set_status(gateway, store.id, file_id, "failed")
    assert (await client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id)).status == "failed"


async def test_cancel_stops_what_is_in_progress(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 3)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create()
    batch = await client.vector_stores.file_batches.create(store.id, file_ids=file_ids)
    await complete(gateway, tenant.tenant_id, store.id, file_ids[0], ["done"])
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.openai(tenant.user_key).vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    cancelled = await client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    assert cancelled.status == "cancelled"
    assert cancelled.file_counts.model_dump() == {
        "in_progress": 0, "completed": 1, "failed": 0, "cancelled": 2, "total": 3
    }
    # Ingestion finishing afterwards writes nothing: the rows are no longer in progress.
    assert not await complete(gateway, tenant.tenant_id, store.id, file_ids[1], ["late"])
    assert (await client.vector_stores.files.retrieve(file_ids[1], vector_store_id=store.id)).status == "cancelled"
    again = await client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    assert again.status == "cancelled" and again.file_counts == cancelled.file_counts
    # A finished batch: cancelling changes nothing.
    (other,) = await upload(gateway, tenant.admin_key)
    finished = await client.vector_stores.file_batches.create(store.id, file_ids=[other])
    await complete(gateway, tenant.tenant_id, store.id, other, ["x"])
    assert (await client.vector_stores.file_batches.cancel(finished.id, vector_store_id=store.id)).status == "completed"
    # A cancelled file put in a new batch is attached anew.
    retry = await client.vector_stores.file_batches.create(store.id, file_ids=[file_ids[1], file_ids[0]])
    assert retry.file_counts.model_dump() == {
        "in_progress": 1, "completed": 1, "failed": 0, "cancelled": 0, "total": 2
    }
    assert queue.submitted[-1][2] == [file_ids[1]]


async def test_poll_header_and_sdk_pollers(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 2)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create()
    async with gateway.http(tenant.admin_key) as http:
        created = await http.post(f"/v1/vector_stores/{store.id}/file_batches", json={"file_ids": file_ids[:1]})
        assert created.headers["openai-poll-after-ms"] == "500"
        batch_id = created.json()["id"]
        fetched = await http.get(f"/v1/vector_stores/{store.id}/file_batches/{batch_id}")
        assert fetched.headers["openai-poll-after-ms"] == "500"
        await complete(gateway, tenant.tenant_id, store.id, file_ids[0], ["x"])
        done = await http.get(f"/v1/vector_stores/{store.id}/file_batches/{batch_id}")
        assert done.json()["status"] == "completed" and "openai-poll-after-ms" not in done.headers
    queue.gateway = gateway
    polled = await client.vector_stores.file_batches.create_and_poll(store.id, file_ids=file_ids[1:])
    assert polled.status == "completed" and polled.file_counts.completed == 1
    uploaded = await client.vector_stores.file_batches.upload_and_poll(
        store.id, files=[("a.txt", b"alpha"), ("b.txt", b"beta")], poll_interval_ms=100
    )
    assert uploaded.status == "completed" and uploaded.file_counts.completed == 2


async def test_two_thousand_files(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    """The largest batch OpenAI allows; one more is a 400. The files are made with SQL (2,000 uploads would
    only test the Files API)."""
    prefix = uuid.uuid4().hex[:6]  # short ids: the test gateway's body limit is 64 KiB
    ids = [f"file-{prefix}{i:04d}" for i in range(2001)]
    async with gateway.services.db.connection() as conn:
        await conn.execute(
            "INSERT INTO files (id, tenant_id, filename, purpose, bytes, sha256)"
            " SELECT id, %s, 'f.txt', 'assistants', 1, sha256(id::bytea) FROM unnest(%s::text[]) AS id",
            (tenant.tenant_id, ids),
        )
    store = await gateway.openai(tenant.admin_key).vector_stores.create()
    async with gateway.http(tenant.admin_key) as http:
        too_many = await http.post(f"/v1/vector_stores/{store.id}/file_batches", json={"file_ids": ids})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "file_ids"
        created = await http.post(f"/v1/vector_stores/{store.id}/file_batches", json={"file_ids": ids[:2000]})
    assert created.status_code == 200, created.text
    assert created.json()["file_counts"]["total"] == 2000
    assert len(queue.files()) == 2000
    page = await gateway.openai(tenant.user_key).vector_stores.file_batches.list_files(
        created.json()["id"], vector_store_id=store.id, limit=100, order="asc"
    )
    assert [f.id for f in page.data] == ids[:100] and page.has_more


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"file_ids": []},
        {"files": []},
        {"file_ids": ["FILE"], "files": [{"file_id": "FILE"}]},
        {"file_ids": ["FILE", "FILE"]},
        {"files": [{"file_id": "FILE", "attributes": {"k": {"nested": 1}}}]},
        {"files": [{"file_id": "FILE", "chunking_strategy": {"type": "static", "static": {
            "max_chunk_size_tokens": 100, "chunk_overlap_tokens": 51}}}]},
        {"files": [{"file_id": "FILE", "extra": 1}]},
        {"file_ids": ["FILE"], "attributes": {f"k{i}": i for i in range(17)}},
    ],
)
async def test_bad_batches_are_400_and_attach_nothing(
    gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue, body: dict[str, object]
) -> None:
    (file_id,) = await upload(gateway, tenant.admin_key)
    store = await gateway.openai(tenant.admin_key).vector_stores.create()
    payload = json.loads(json.dumps(body).replace("FILE", file_id))
    async with gateway.http(tenant.admin_key) as http:
        answer = await http.post(f"/v1/vector_stores/{store.id}/file_batches", json=payload)
    assert answer.status_code == 400, answer.text
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert (await gateway.openai(tenant.user_key).vector_stores.retrieve(store.id)).file_counts.total == 0
    assert queue.submitted == []
