"""Files attached to a vector store, through the official SDK: attach (and attach again), list with the status
filter, retrieve, update attributes (chunks too), detach (chunks go), content, the poll header and the SDK's
``*_and_poll`` helpers."""

from __future__ import annotations

import openai
import pytest

from tests.integration.conftest import Gateway, TenantKeys, make_tenant
from tests.integration.vector_stores_support import (
    RecordingQueue,
    chunk_rows,
    complete,
    fx_queue,  # noqa: F401  # the `queue` fixture
    set_status,
    upload,
)


async def test_attach_retrieve_update_detach(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    (file_id,) = await upload(gateway, tenant.admin_key)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(name="s")
    attached = await client.vector_stores.files.create(
        store.id, file_id=file_id, attributes={"lang": "en", "year": 2024, "draft": False, "score": 0.5}
    )
    assert (attached.id, attached.object, attached.vector_store_id, attached.status) == (
        file_id, "vector_store.file", store.id, "in_progress"
    )
    assert attached.attributes == {"lang": "en", "year": 2024, "draft": False, "score": 0.5}
    assert attached.last_error is None and attached.usage_bytes == 0
    assert attached.chunking_strategy is not None and attached.chunking_strategy.model_dump() == {
        "type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}
    }
    assert queue.files() == [file_id]

    await complete(gateway, tenant.tenant_id, store.id, file_id, ["first part", "second part"])
    done = await gateway.openai(tenant.user_key).vector_stores.files.retrieve(file_id, vector_store_id=store.id)
    assert done.status == "completed" and done.usage_bytes > 0

    updated = await client.vector_stores.files.update(file_id, vector_store_id=store.id, attributes={"lang": "de"})
    assert updated.attributes == {"lang": "de"} and updated.status == "completed"
    assert [a for _, a in await chunk_rows(gateway, store.id, file_id)] == [{"lang": "de"}, {"lang": "de"}]
    cleared = await client.vector_stores.files.update(file_id, vector_store_id=store.id, attributes=None)
    assert cleared.attributes == {}
    assert [a for _, a in await chunk_rows(gateway, store.id, file_id)] == [{}, {}]

    deleted = await client.vector_stores.files.delete(file_id, vector_store_id=store.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (file_id, "vector_store.file.deleted", True)
    assert await chunk_rows(gateway, store.id) == []
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.files.retrieve(file_id, vector_store_id=store.id)
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.files.delete(file_id, vector_store_id=store.id)
    assert (await client.files.retrieve(file_id)).id == file_id  # the file itself stays
    assert (await client.vector_stores.retrieve(store.id)).file_counts.total == 0


async def test_attaching_again(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    (file_id,) = await upload(gateway, tenant.admin_key)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create()
    first = await client.vector_stores.files.create(store.id, file_id=file_id, attributes={"v": 1})
    # In progress or completed: the same row, not ingested again.
    same = await client.vector_stores.files.create(store.id, file_id=file_id, attributes={"v": 2})
    assert same.attributes == {"v": 1} and same.created_at == first.created_at
    await complete(gateway, tenant.tenant_id, store.id, file_id, ["x"])
    assert (await client.vector_stores.files.create(store.id, file_id=file_id)).status == "completed"
    assert queue.files() == [file_id]
    # Failed: attached anew (a retry), with what this attach asked for.
    await set_status(gateway, store.id, file_id, "failed", '{"code": "unsupported_file", "message": "no"}')
    failed = await client.vector_stores.files.retrieve(file_id, vector_store_id=store.id)
    assert failed.last_error is not None and failed.last_error.model_dump() == {
        "code": "unsupported_file", "message": "no"
    }
    retried = await client.vector_stores.files.create(
        store.id, file_id=file_id, attributes={"v": 3},
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}},
    )
    assert (retried.status, retried.last_error, retried.attributes) == ("in_progress", None, {"v": 3})
    assert retried.chunking_strategy is not None
    assert retried.chunking_strategy.static.max_chunk_size_tokens == 100  # type: ignore[union-attr]
    assert queue.files() == [file_id, file_id]


async def test_listing_filters_and_pages(gateway: Gateway, queue: RecordingQueue) -> None:
    tenant = await make_tenant(gateway)
    file_ids = await upload(gateway, tenant.admin_key, 5)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create()
    for file_id in file_ids:
        await client.vector_stores.files.create(store.id, file_id=file_id)
    await complete(gateway, tenant.tenant_id, store.id, file_ids[0], ["a"])
    await set_status(gateway, store.id, file_ids[1], "failed")
    await set_status(gateway, store.id, file_ids[2], "cancelled")
    user = gateway.openai(tenant.user_key)
    assert [f.id async for f in user.vector_stores.files.list(store.id)] == file_ids[::-1]
    assert [f.id async for f in user.vector_stores.files.list(store.id, limit=2, order="asc")] == file_ids
    for status, expected in (("completed", [file_ids[0]]), ("failed", [file_ids[1]]),
                             ("cancelled", [file_ids[2]]), ("in_progress", [file_ids[4], file_ids[3]])):
        assert [f.id async for f in user.vector_stores.files.list(store.id, filter=status)] == expected  # type: ignore[arg-type]
    counts = (await user.vector_stores.retrieve(store.id)).file_counts
    assert counts.model_dump() == {"in_progress": 2, "completed": 1, "failed": 1, "cancelled": 1, "total": 5}
    async with gateway.http(tenant.user_key) as http:
        page = (await http.get(f"/v1/vector_stores/{store.id}/files", params={"limit": 2, "before": file_ids[1]}))
        assert [f["id"] for f in page.json()["data"]] == [file_ids[3], file_ids[2]]
        for bad in ({"filter": "done"}, {"limit": 0}, {"limit": 101}, {"order": "sideways"}):
            answer = await http.get(f"/v1/vector_stores/{store.id}/files", params=bad)
            assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"


async def test_content_is_the_chunks_text_in_order(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 2)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(file_ids=file_ids)
    assert [p async for p in client.vector_stores.files.content(file_ids[0], vector_store_id=store.id)] == []
    # Chunks that overlap by their offsets: the overlap is given once.
    await complete(gateway, tenant.tenant_id, store.id, file_ids[0], ["Hello big ", "big world"],
                   spans=[(0, 10), (6, 15)])
    parts = [p async for p in client.vector_stores.files.content(file_ids[0], vector_store_id=store.id)]
    assert [(p.type, p.text) for p in parts] == [("text", "Hello big "), ("text", "world")]
    # Chunks whose text is not their span (normalised) are given whole.
    await complete(gateway, tenant.tenant_id, store.id, file_ids[1], ["A  b", "b c"], spans=[(0, 3), (2, 5)])
    async with gateway.http(tenant.user_key) as http:
        raw = (await http.get(f"/v1/vector_stores/{store.id}/files/{file_ids[1]}/content")).json()
    assert raw == {
        "data": [{"text": "A  b", "type": "text"}, {"text": " c", "type": "text"}],
        "object": "vector_store.file_content.page", "has_more": False, "next_page": None,
    }


async def test_poll_header_while_in_progress(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    (file_id,) = await upload(gateway, tenant.admin_key)
    store = await gateway.openai(tenant.admin_key).vector_stores.create()
    async with gateway.http(tenant.admin_key) as http:
        created = await http.post(f"/v1/vector_stores/{store.id}/files", json={"file_id": file_id})
        assert created.status_code == 200 and created.headers["openai-poll-after-ms"] == "500"
        fetched = await http.get(f"/v1/vector_stores/{store.id}/files/{file_id}")
        assert fetched.headers["openai-poll-after-ms"] == "500"
        await complete(gateway, tenant.tenant_id, store.id, file_id, ["x"])
        done = await http.get(f"/v1/vector_stores/{store.id}/files/{file_id}")
        assert done.json()["status"] == "completed" and "openai-poll-after-ms" not in done.headers


async def test_sdk_upload_and_poll(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    queue.gateway = gateway  # ingests each submitted file a little later
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(name="polled")
    done = await client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("notes.txt", b"some notes"), poll_interval_ms=100
    )
    assert done.status == "completed"
    (other,) = await upload(gateway, tenant.admin_key)
    polled = await client.vector_stores.files.create_and_poll(other, vector_store_id=store.id)  # header's 500 ms
    assert polled.status == "completed"
    assert (await client.vector_stores.retrieve(store.id)).file_counts.completed == 2


async def test_attach_needs_the_tenants_own_file_and_store(gateway: Gateway, queue: RecordingQueue) -> None:
    owner = await make_tenant(gateway)
    other = await make_tenant(gateway)
    (foreign_file,) = await upload(gateway, other.admin_key)
    client = gateway.openai(owner.admin_key)
    store = await client.vector_stores.create()
    for bad in (foreign_file, "file-doesnotexist", "nope", "x" * 300):
        with pytest.raises(openai.NotFoundError) as exc:
            await client.vector_stores.files.create(store.id, file_id=bad)
        assert exc.value.body["param"] == "file_id"  # type: ignore[index]
    assert queue.submitted == []
    (own,) = await upload(gateway, owner.admin_key)
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.files.create("vs_doesnotexist", file_id=own)
    with pytest.raises(openai.PermissionDeniedError):
        await gateway.openai(owner.user_key).vector_stores.files.create(store.id, file_id=own)
    async with gateway.http(owner.admin_key) as http:
        for body, param in (({"file_id": own, "attributes": {f"k{i}": i for i in range(17)}}, "attributes"),
                            ({"file_id": own, "attributes": {"k": "v" * 513}}, "attributes"),
                            ({"file_id": own, "attributes": {"k" * 65: 1}}, "attributes"),
                            ({"file_id": own, "chunking_strategy": {"type": "static"}}, None),
                            ({"attributes": {}}, None)):
            answer = await http.post(f"/v1/vector_stores/{store.id}/files", json=body)
            assert answer.status_code == 400, body
            if param:
                assert answer.json()["error"]["param"] == param
        nested = await http.post(f"/v1/vector_stores/{store.id}/files", json={"file_id": own, "attributes": {"k": [1]}})
        assert nested.status_code == 400
        update = await http.post(f"/v1/vector_stores/{store.id}/files/{own}", json={"attributes": {}})
        assert update.status_code == 404  # not attached
    assert (await client.vector_stores.retrieve(store.id)).file_counts.total == 0


async def test_a_failed_hand_off_still_attaches(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    """The rows are the truth: the queue's sweep finds a file whose hand-off failed."""
    queue.fail = True
    (file_id,) = await upload(gateway, tenant.admin_key)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create()
    attached = await client.vector_stores.files.create(store.id, file_id=file_id)
    assert attached.status == "in_progress" and queue.submitted == []


async def test_nul_cursors_match_nothing(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    (file_id,) = await upload(gateway, tenant.admin_key)
    store = await gateway.openai(tenant.admin_key).vector_stores.create(file_ids=[file_id])
    async with gateway.http(tenant.user_key) as http:
        for path in ("/v1/vector_stores", f"/v1/vector_stores/{store.id}/files"):
            for cursor in ("after", "before"):
                answer = await http.get(path, params={cursor: "vs_\x00"})
                assert answer.status_code == 200 and answer.json()["data"] == [], (path, cursor)
