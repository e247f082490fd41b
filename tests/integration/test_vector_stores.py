"""OpenAI's vector stores through the official SDK: create, list, retrieve, modify, delete, status and counts,
expiry, roles, and bad input answered 400 in OpenAI's error shape."""

from __future__ import annotations

import uuid

import openai
import pytest

from retrieval import vector_stores
from tests.integration.conftest import Gateway, TenantKeys, make_tenant
from tests.integration.vector_stores_support import (
    RecordingQueue,
    chunk_rows,
    complete,
    fx_queue,  # noqa: F401  # the `queue` fixture
    set_status,
    upload,
)


async def test_create_with_files_hands_them_to_ingestion(
    gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue
) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 2)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(
        name="Support FAQ", description="answers", file_ids=file_ids, metadata={"team": "support"},
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 100}},
        expires_after={"anchor": "last_active_at", "days": 7},
    )
    assert store.id.startswith("vs_") and store.object == "vector_store"
    assert (store.name, store.metadata, store.status) == ("Support FAQ", {"team": "support"}, "in_progress")
    assert store.file_counts.model_dump() == {
        "in_progress": 2, "completed": 0, "failed": 0, "cancelled": 0, "total": 2
    }
    assert store.usage_bytes == 0
    assert store.expires_after is not None and store.expires_after.days == 7
    assert store.last_active_at is not None and store.expires_at == store.last_active_at + 7 * 86400
    assert queue.submitted == [(uuid.UUID(tenant.tenant_id), store.id, file_ids)]
    listed = [f async for f in client.vector_stores.files.list(store.id, order="asc")]
    assert [f.id for f in listed] == file_ids
    assert all(f.chunking_strategy is not None and f.chunking_strategy.model_dump() == {
        "type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 100}
    } for f in listed)

    # Statuses and usage come from the files: one completes, one fails.
    assert await complete(gateway, tenant.tenant_id, store.id, file_ids[0], ["alpha", "beta"])
    await set_status(gateway, store.id, file_ids[1], "failed", '{"code": "invalid_file", "message": "bad"}')
    again = await gateway.openai(tenant.user_key).vector_stores.retrieve(store.id)
    assert again.status == "completed"
    assert (again.file_counts.completed, again.file_counts.failed, again.file_counts.total) == (1, 1, 2)
    assert again.usage_bytes == 9 + 2 * 1536


async def test_defaults_without_files(gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue) -> None:
    store = await gateway.openai(tenant.admin_key).vector_stores.create()
    assert (store.name, store.metadata, store.status, store.usage_bytes) == ("", {}, "completed", 0)
    assert store.expires_after is None and store.expires_at is None
    assert store.file_counts.total == 0 and queue.submitted == []
    async with gateway.http(tenant.user_key) as http:
        raw = (await http.get(f"/v1/vector_stores/{store.id}")).json()
    assert set(raw) == {
        "id", "object", "created_at", "name", "description", "usage_bytes", "file_counts", "status",
        "expires_after", "expires_at", "last_active_at", "metadata",
    }


async def test_listing_pages_both_ways(gateway: Gateway) -> None:
    tenant = await make_tenant(gateway)
    client = gateway.openai(tenant.admin_key)
    ids = [(await client.vector_stores.create(name=f"s{i}")).id for i in range(5)]
    user = gateway.openai(tenant.user_key)
    assert [s.id for s in (await user.vector_stores.list()).data] == ids[::-1]
    assert [s.id async for s in user.vector_stores.list(limit=2, order="asc")] == ids
    async with gateway.http(tenant.user_key) as http:
        page = (await http.get("/v1/vector_stores", params={"limit": 2, "order": "asc", "after": ids[0]})).json()
        assert [s["id"] for s in page["data"]] == ids[1:3] and page["has_more"] is True
        assert (page["first_id"], page["last_id"], page["object"]) == (ids[1], ids[2], "list")
        before = (await http.get("/v1/vector_stores", params={"limit": 2, "order": "asc", "before": ids[4]})).json()
        assert [s["id"] for s in before["data"]] == ids[2:4] and before["has_more"] is True
        before_desc = (await http.get("/v1/vector_stores", params={"limit": 10, "before": ids[2]})).json()
        assert [s["id"] for s in before_desc["data"]] == [ids[4], ids[3]] and before_desc["has_more"] is False
        between = (await http.get("/v1/vector_stores", params={"after": ids[0], "before": ids[3], "order": "asc"}))
        assert [s["id"] for s in between.json()["data"]] == ids[1:3]
        for bad in ({"limit": 0}, {"limit": 101}, {"order": "up"}):
            answer = await http.get("/v1/vector_stores", params=bad)
            assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"


async def test_modify_changes_what_was_sent(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(name="a", metadata={"k": "v"})
    renamed = await client.vector_stores.update(store.id, name="b")
    assert (renamed.name, renamed.metadata) == ("b", {"k": "v"})
    expiring = await client.vector_stores.update(store.id, expires_after={"anchor": "last_active_at", "days": 2})
    assert expiring.expires_at == expiring.last_active_at + 2 * 86400  # type: ignore[operator]
    assert expiring.name == "b"
    cleared = await client.vector_stores.update(store.id, metadata=None, expires_after=None, name=None)
    assert (cleared.name, cleared.metadata, cleared.expires_after, cleared.expires_at) == ("", {}, None, None)
    with pytest.raises(openai.BadRequestError) as exc:
        await client.vector_stores.update(store.id, metadata={f"k{i}": "v" for i in range(17)})
    assert exc.value.body["param"] == "metadata"  # type: ignore[index]


async def test_delete_drops_files_rows_and_chunks_but_not_files(
    gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue
) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 1)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(file_ids=file_ids)
    await complete(gateway, tenant.tenant_id, store.id, file_ids[0], ["one", "two"])
    assert len(await chunk_rows(gateway, store.id)) == 2
    deleted = await client.vector_stores.delete(store.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (store.id, "vector_store.deleted", True)
    assert await chunk_rows(gateway, store.id) == []
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.retrieve(store.id)
    with pytest.raises(openai.NotFoundError):
        await client.vector_stores.delete(store.id)
    assert (await client.files.retrieve(file_ids[0])).id == file_ids[0]


async def test_expiry_keeps_the_store_listed_as_expired_without_files(
    gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue
) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 2)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(file_ids=file_ids, expires_after={"anchor": "last_active_at", "days": 1})
    kept = await client.vector_stores.create(file_ids=file_ids, expires_after={"anchor": "last_active_at", "days": 1})
    for file_id in file_ids:
        await complete(gateway, tenant.tenant_id, store.id, file_id, ["words"])
    async with gateway.services.db.connection() as conn:
        await conn.execute(
            "UPDATE vector_stores SET last_active_at = now() - interval '2 days',"
            " expires_at = now() - interval '1 day' WHERE id = %s", (store.id,),
        )
    expired = await client.vector_stores.retrieve(store.id)
    assert expired.status == "expired"
    assert await vector_stores.expire_due(gateway.services.db) >= 1
    assert await chunk_rows(gateway, store.id) == []
    after = await client.vector_stores.retrieve(store.id)
    assert (after.status, after.file_counts.total, after.usage_bytes) == ("expired", 0, 0)
    assert store.id in [s.id async for s in client.vector_stores.list()]
    assert (await client.vector_stores.retrieve(kept.id)).file_counts.total == 2  # not due: untouched
    assert await vector_stores.expire_due(gateway.services.db) == 0  # nothing left to clean
    # Expiry is final: no new files, no new policy; the name can still change.
    with pytest.raises(openai.BadRequestError) as exc:
        await client.vector_stores.files.create(store.id, file_id=file_ids[0])
    assert exc.value.code == "vector_store_expired"
    with pytest.raises(openai.BadRequestError):
        await client.vector_stores.update(store.id, expires_after={"anchor": "last_active_at", "days": 30})
    assert (await client.vector_stores.update(store.id, name="old")).status == "expired"


async def test_users_read_but_only_admins_write(gateway: Gateway, tenant: TenantKeys) -> None:
    user = gateway.openai(tenant.user_key)
    with pytest.raises(openai.PermissionDeniedError):
        await user.vector_stores.create(name="x")
    store = await gateway.openai(tenant.admin_key).vector_stores.create(name="x")
    with pytest.raises(openai.PermissionDeniedError):
        await user.vector_stores.update(store.id, name="y")
    with pytest.raises(openai.PermissionDeniedError):
        await user.vector_stores.delete(store.id)
    assert (await user.vector_stores.retrieve(store.id)).name == "x"
    assert [s.id async for s in user.vector_stores.list()] == [store.id]


def _static(size: int, overlap: int) -> dict[str, object]:
    return {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "n" * 257}, "name"),
        ({"description": "d" * 513}, "description"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata[...]"),
        ({"name": "a\x00b"}, "name"),  # Postgres text holds no NUL
        ({"metadata": {"k\x00": "v"}}, "metadata"),
        ({"expires_after": {"anchor": "last_active_at", "days": 0}}, "expires_after.days"),
        ({"expires_after": {"anchor": "created_at", "days": 1}}, "expires_after.anchor"),
        ({"chunking_strategy": _static(99, 0)},
         "chunking_strategy.static.max_chunk_size_tokens"),
        ({"chunking_strategy": _static(4097, 0)},
         "chunking_strategy.static.max_chunk_size_tokens"),
        ({"chunking_strategy": _static(200, 101)},
         "chunking_strategy.static.chunk_overlap_tokens"),
        ({"chunking_strategy": _static(200, -1)},
         "chunking_strategy.static.chunk_overlap_tokens"),
        ({"chunking_strategy": {"type": "other"}}, "chunking_strategy.type"),
        ({"file_ids": ["file-nope"]}, "file_ids"),
        ({"unknown": 1}, None),
    ],
)
async def test_bad_create_bodies_are_400(
    gateway: Gateway, tenant: TenantKeys, body: dict[str, object], param: str | None
) -> None:
    async with gateway.http(tenant.admin_key) as http:
        answer = await http.post("/v1/vector_stores", json=body)
        listed = (await http.get("/v1/vector_stores")).json()["data"]
    error = answer.json()["error"]
    expected = 404 if body.get("file_ids") else 400
    assert answer.status_code == expected, error
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert listed == []  # nothing half-made


async def test_malformed_bodies_are_400(gateway: Gateway, tenant: TenantKeys) -> None:
    async with gateway.http(tenant.admin_key) as http:
        store = (await http.post("/v1/vector_stores", json={})).json()
        for path in ("/v1/vector_stores", f"/v1/vector_stores/{store['id']}"):
            for content in (b"", b"{", b"[]", b'{"name": 5}'):
                answer = await http.post(path, content=content, headers={"content-type": "application/json"})
                assert answer.status_code == 400, (path, content)
                assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
            assert (await http.post(path, content=b"{}", headers={"content-type": "text/plain"})).status_code == 415
