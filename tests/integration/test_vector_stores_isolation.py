"""Another tenant's vector store, attached file or batch is a 404 for every verb and every id format, never a
403, and no listing shows it (issue 10, item 8)."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import Gateway, TenantKeys, make_tenant
from tests.integration.vector_stores_support import (
    RecordingQueue,
    complete,
    fx_queue,  # noqa: F401  # the `queue` fixture
    upload,
)

BAD_IDS = ("nope", "vs_", "vs_" + "a" * 200, "vs_%00", "vs_doesnotexist", "vsfb_x", "file-x")


def routes(store: str, file_id: str, batch: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every vector store route (search aside) with the ids given."""
    base = f"/v1/vector_stores/{store}"
    return [
        ("GET", base, None),
        ("POST", base, {"name": "taken"}),
        ("DELETE", base, None),
        ("GET", f"{base}/files", None),
        ("POST", f"{base}/files", {"file_id": file_id}),
        ("GET", f"{base}/files/{file_id}", None),
        ("POST", f"{base}/files/{file_id}", {"attributes": {"x": 1}}),
        ("GET", f"{base}/files/{file_id}/content", None),
        ("DELETE", f"{base}/files/{file_id}", None),
        ("POST", f"{base}/file_batches", {"file_ids": [file_id]}),
        ("GET", f"{base}/file_batches/{batch}", None),
        ("GET", f"{base}/file_batches/{batch}/files", None),
        ("POST", f"{base}/file_batches/{batch}/cancel", None),
    ]


async def _owner_setup(gateway: Gateway) -> tuple[TenantKeys, str, str, str]:
    owner = await make_tenant(gateway)
    file_ids = await upload(gateway, owner.admin_key, 2)
    client = gateway.openai(owner.admin_key)
    store = await client.vector_stores.create(name="secret", file_ids=file_ids[:1])
    batch = await client.vector_stores.file_batches.create(store.id, file_ids=file_ids[1:])
    await complete(gateway, owner.tenant_id, store.id, file_ids[0], ["secret text"])
    return owner, store.id, file_ids[0], batch.id


async def test_another_tenant_gets_404_on_every_route(gateway: Gateway, queue: RecordingQueue) -> None:
    owner, store, file_id, batch = await _owner_setup(gateway)
    other = await make_tenant(gateway)
    (own_file,) = await upload(gateway, other.admin_key)
    own_store = (await gateway.openai(other.admin_key).vector_stores.create(name="mine")).id
    for key in (other.admin_key, other.user_key):
        async with gateway.http(key) as http:
            for method, path, body in routes(store, file_id, batch):
                answer = await http.request(method, path, json=body)
                if key == other.user_key and method in ("POST", "DELETE"):
                    assert answer.status_code in (403, 404), (method, path)  # role first, or not found
                    continue
                assert answer.status_code == 404, (method, path, answer.text)
                assert answer.json()["error"]["type"] == "invalid_request_error"
                assert "secret" not in answer.text
            # The other tenant's own store with the owner's file and batch ids: still not found.
            for method, path, body in routes(own_store, file_id, batch)[4:]:
                if key == other.user_key and method in ("POST", "DELETE"):
                    continue
                answer = await http.request(method, path, json=body)
                assert answer.status_code == 404, (method, path, answer.text)
            listed = (await http.get("/v1/vector_stores")).json()
            assert [s["id"] for s in listed["data"]] == [own_store]
            for cursor in ("after", "before"):
                page = (await http.get("/v1/vector_stores", params={cursor: store})).json()
                assert page["data"] == []
    # Nothing of the owner's changed.
    owner_client = gateway.openai(owner.user_key)
    kept = await owner_client.vector_stores.retrieve(store)
    assert (kept.name, kept.file_counts.total, kept.file_counts.completed) == ("secret", 2, 1)
    parts = [p.text async for p in owner_client.vector_stores.files.content(file_id, vector_store_id=store)]
    assert parts == ["secret text"]
    kept_batch = await owner_client.vector_stores.file_batches.retrieve(batch, vector_store_id=store)
    assert kept_batch.status == "in_progress"
    assert own_file not in [f.id async for f in owner_client.vector_stores.files.list(store)]


async def test_malformed_and_mismatched_ids_are_404(gateway: Gateway, queue: RecordingQueue) -> None:
    owner, store, file_id, batch = await _owner_setup(gateway)
    second = (await gateway.openai(owner.admin_key).vector_stores.create()).id
    async with gateway.http(owner.admin_key) as http:
        for bad in BAD_IDS:
            for method, path, body in routes(bad, file_id, batch):
                answer = await http.request(method, path, json=body)
                assert answer.status_code == 404, (method, path)
                assert answer.json()["error"]["type"] == "invalid_request_error"
            for method, path, body in routes(store, bad, bad)[5:]:
                if method == "POST" and path.endswith("/file_batches"):
                    continue  # a malformed file id in a batch body: 404 too, checked below
                answer = await http.request(method, path, json=body)
                assert answer.status_code == 404, (method, path)
        # The owner's own file and batch, asked for under another of its stores.
        for method, path, body in routes(second, file_id, batch)[5:]:
            answer = await http.request(method, path, json=body)
            if method == "POST" and path.endswith("/file_batches"):
                assert answer.status_code == 200  # attaching its own file to its other store is fine
                continue
            assert answer.status_code == 404, (method, path)
        bad_batch = await http.post(f"/v1/vector_stores/{store}/file_batches", json={"file_ids": [file_id, "x"]})
        assert bad_batch.status_code == 404 and bad_batch.json()["error"]["param"] == "file_ids"
