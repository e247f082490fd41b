"""OpenAI's Files API through the official SDK: round trip, pagination, roles, tenant isolation, limits."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import openai
import pytest

from retrieval.files import PART_BYTES
from tests.integration.conftest import (
    Gateway,
    TenantKeys,
    free_port,
    gateway_settings,
    make_tenant,
    start_gateway,
    stop_gateway,
)


async def test_round_trip_keeps_every_byte(gateway: Gateway, tenant: TenantKeys) -> None:
    data = os.urandom(3 * PART_BYTES + 12345) + b"\x00" * 100  # several pieces, NULs included
    client = gateway.openai(tenant.admin_key)
    created = await client.files.create(file=("dir/sub/data.bin", data), purpose="assistants")
    assert created.id.startswith("file-") and len(created.id) >= 5 + 24
    assert (created.object, created.bytes, created.filename, created.purpose, created.status) == (
        "file", len(data), "data.bin", "assistants", "processed"
    )
    assert created.expires_at is None and created.status_details is None

    user = gateway.openai(tenant.user_key)
    fetched = await user.files.retrieve(created.id)
    assert fetched == created
    content = await user.files.content(created.id)
    assert content.content == data
    assert content.response.headers["content-type"] == "application/octet-stream"
    assert 'filename="data.bin"' in content.response.headers["content-disposition"]

    deleted = await client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        await user.files.retrieve(created.id)
    async with gateway.http(tenant.admin_key) as http:
        remaining = await http.get(f"/v1/files/{created.id}/content")
    assert remaining.status_code == 404


async def test_unusual_names_are_kept_and_named_safely(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.admin_key)
    created = await client.files.create(file=('..\\up/"naïve" notes.txt', b"hello"), purpose="user_data")
    assert created.filename == '"naïve" notes.txt'
    async with gateway.http(tenant.user_key) as http:
        answer = await http.get(f"/v1/files/{created.id}/content")
    assert answer.content == b"hello"
    disposition = answer.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="_na_ve_ notes.txt"; ')
    assert "filename*=UTF-8''%22na%C3%AFve%22%20notes.txt" in disposition


async def test_listing_pages_orders_and_filters(gateway: Gateway) -> None:
    tenant = await make_tenant(gateway)
    client = gateway.openai(tenant.admin_key)
    ids = []
    for i in range(5):
        created = await client.files.create(
            file=(f"f{i}.txt", b"x" * (i + 1)), purpose="assistants" if i % 2 == 0 else "batch"
        )
        ids.append(created.id)
    user = gateway.openai(tenant.user_key)

    everything = await user.files.list()
    assert [f.id for f in everything.data] == ids[::-1]  # newest first by default

    async with gateway.http(tenant.user_key) as http:
        first = (await http.get("/v1/files", params={"limit": 2, "order": "asc"})).json()
        assert first["object"] == "list" and first["has_more"] is True
        assert [f["id"] for f in first["data"]] == ids[:2]
        assert (first["first_id"], first["last_id"]) == (ids[0], ids[1])
        second = (await http.get("/v1/files", params={"limit": 2, "order": "asc", "after": ids[1]})).json()
        assert [f["id"] for f in second["data"]] == ids[2:4] and second["has_more"] is True
        last = (await http.get("/v1/files", params={"limit": 2, "order": "asc", "after": ids[3]})).json()
        assert [f["id"] for f in last["data"]] == ids[4:] and last["has_more"] is False
        desc = (await http.get("/v1/files", params={"limit": 2, "after": ids[2]})).json()
        assert [f["id"] for f in desc["data"]] == [ids[1], ids[0]]
        for bad in ({"limit": 0}, {"limit": 10001}, {"order": "up"}):
            assert (await http.get("/v1/files", params=bad)).status_code == 400

    # The SDK's auto-pagination walks every page.
    walked = [f.id async for f in user.files.list(limit=2, order="asc")]
    assert walked == ids
    batch = await user.files.list(purpose="batch")
    assert [f.id for f in batch.data] == [ids[3], ids[1]]


async def test_users_read_but_only_admins_write(gateway: Gateway, tenant: TenantKeys) -> None:
    user = gateway.openai(tenant.user_key)
    with pytest.raises(openai.PermissionDeniedError):
        await user.files.create(file=("a.txt", b"a"), purpose="assistants")
    created = await gateway.openai(tenant.admin_key).files.create(file=("a.txt", b"a"), purpose="assistants")
    with pytest.raises(openai.PermissionDeniedError):
        await user.files.delete(created.id)
    assert (await user.files.retrieve(created.id)).id == created.id


async def test_another_tenants_file_is_not_found_for_every_verb(gateway: Gateway) -> None:
    owner = await make_tenant(gateway)
    other = await make_tenant(gateway)
    created = await gateway.openai(owner.admin_key).files.create(file=("secret.txt", b"secret"), purpose="assistants")
    await gateway.openai(other.admin_key).files.create(file=("mine.txt", b"mine"), purpose="assistants")
    for key in (other.user_key, other.admin_key):
        client = gateway.openai(key)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.content(created.id)
        listed = [f.id async for f in client.files.list()]
        assert created.id not in listed and len(listed) == 1
        async with gateway.http(key) as http:
            after = (await http.get("/v1/files", params={"after": created.id})).json()
            assert after["data"] == []
    with pytest.raises(openai.NotFoundError):
        await gateway.openai(other.admin_key).files.delete(created.id)
    assert (await gateway.openai(owner.user_key).files.content(created.id)).content == b"secret"
    for bad_id in ("nope", "file-", "file-" + "a" * 200, "file-%00"):
        async with gateway.http(owner.admin_key) as http:
            answer = await http.get(f"/v1/files/{bad_id}")
            assert answer.status_code == 404, bad_id
            assert answer.json()["error"]["type"] == "invalid_request_error"


async def test_bad_uploads_are_400(gateway: Gateway, tenant: TenantKeys) -> None:
    client = gateway.openai(tenant.admin_key)
    with pytest.raises(openai.BadRequestError) as exc:
        await client.files.create(file=("a.txt", b"a"), purpose="vision")
    assert exc.value.body["param"] == "purpose"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as exc:
        await client.files.create(file=("a.txt", b""), purpose="assistants")
    assert exc.value.body["param"] == "file"  # type: ignore[index]
    async with gateway.http(tenant.admin_key) as http:
        no_file = await http.post("/v1/files", data={"purpose": "assistants"}, files={"other": ("a.txt", b"a")})
        assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
        as_field = await http.post("/v1/files", data={"purpose": "assistants", "file": "text"}, files={"x": b"1"})
        assert as_field.status_code == 400
        json_body = await http.post("/v1/files", json={"purpose": "assistants"})
        assert json_body.status_code == 400
        not_text = await http.post("/v1/files", files={"file": (None, b"\x89PNG\xff"), "purpose": (None, b"\xff")})
        assert not_text.status_code == 400 and not_text.json()["error"]["param"] == "purpose"
    assert [f async for f in gateway.openai(tenant.user_key).files.list()] == []


@pytest.fixture
async def small_files_gateway(database_url: str, gateway: Gateway) -> AsyncIterator[Gateway]:
    settings = gateway_settings(
        database_url, gateway.chat.url, gateway.embed.url, port=free_port(), max_file_bytes=1000
    )
    app, server, task = await start_gateway(settings)
    yield Gateway(f"http://127.0.0.1:{settings.port}", app, gateway.chat, gateway.embed)
    await stop_gateway(server, task)


async def test_a_file_past_the_limit_is_413(small_files_gateway: Gateway) -> None:
    tenant = await make_tenant(small_files_gateway)
    client = small_files_gateway.openai(tenant.admin_key)
    assert (await client.files.create(file=("ok.bin", b"a" * 1000), purpose="batch")).bytes == 1000
    for size in (1001, 200_000):  # past the file limit; past the route's body limit too
        with pytest.raises(openai.APIStatusError) as exc:
            await client.files.create(file=("big.bin", b"a" * size), purpose="batch")
        assert exc.value.status_code == 413, size
    listed = [f.filename async for f in client.files.list()]
    assert listed == ["ok.bin"]


async def test_uploads_are_not_bound_by_the_json_body_limit(gateway: Gateway, tenant: TenantKeys) -> None:
    size = gateway.services.settings.max_body_bytes * 4
    created = await gateway.openai(tenant.admin_key).files.create(file=("big.bin", b"z" * size), purpose="evals")
    assert created.bytes == size
