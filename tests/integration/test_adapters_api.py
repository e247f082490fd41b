"""``/v1/adapters`` on a real gateway, real Postgres and a store in a temp folder: uploads (archive and two
files), list/get/delete, names and clashes, tenants apart, roles, content-addressed storage, and rejections
that leave nothing behind (no row, no file)."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.vllm import FakeVLLM
from tests.integration.adapters_support import (
    ATTENTION,
    Adapter,
    leftovers,
    make_adapter,
    stored_folders,
    tar_gz,
    upload,
    write_base_model,
    zip_bytes,
)
from tests.integration.conftest import (
    CHAT_MODEL,
    Gateway,
    TenantKeys,
    free_port,
    gateway_settings,
    make_tenant,
    start_gateway,
    stop_gateway,
)

NO_CONFIG_MODEL = "fake-chat-no-config"  # served, but the gateway cannot read its config.json
MAX_BYTES = 200_000
CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass
class Env:
    gw: Gateway
    store: Path

    async def rows(self, tenant: TenantKeys) -> list[tuple[Any, ...]]:
        async with self.gw.services.db.connection() as conn:
            cur = await conn.execute(
                "SELECT name, status, engine_name, checksum FROM adapters WHERE tenant_id = %s ORDER BY created_at",
                (uuid.UUID(tenant.tenant_id),),
            )
            return await cur.fetchall()


@pytest.fixture(scope="module")
async def env(database_url: str, fakes: tuple[FakeVLLM, FakeVLLM]) -> AsyncIterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="tenantgate-adapters-"))
    base = write_base_model(root / "base")
    chat = FakeVLLM(models=(CHAT_MODEL, NO_CONFIG_MODEL))
    await chat.start()
    settings = gateway_settings(
        database_url, chat.url, fakes[1].url, port=free_port(), adapter_dir=str(root / "store"),
        adapter_base_model_dirs={CHAT_MODEL: str(base)}, adapter_max_bytes=MAX_BYTES, adapter_max_rank=16,
    )
    app, server, task = await start_gateway(settings)
    try:
        yield Env(Gateway(f"http://127.0.0.1:{settings.port}", app, chat, fakes[1]), root / "store")
    finally:
        await stop_gateway(server, task)
        await chat.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_upload_as_two_files_answers_the_adapter(env: Env) -> None:
    tenant = await make_tenant(env.gw)
    adapter = make_adapter(seed=1)
    async with env.gw.http(tenant.admin_key) as http:
        answer = await upload(http, "support", CHAT_MODEL, adapter=adapter)
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert set(body) == {
            "id", "object", "name", "base_model", "status", "rank", "target_modules", "bytes", "checksum",
            "created_at", "last_error",
        }
        assert re.fullmatch(r"adapter-[0-9a-f]{24}", body["id"])
        assert (body["object"], body["name"], body["base_model"], body["status"], body["rank"]) == (
            "adapter", "support", CHAT_MODEL, "ready", 8
        )
        assert sorted(body["target_modules"]) == sorted(ATTENTION)
        assert body["bytes"] == len(adapter.config) + len(adapter.weights)
        assert CHECKSUM.fullmatch(body["checksum"])
        assert isinstance(body["created_at"], int) and body["last_error"] is None

        got = await http.get("/v1/adapters/support")
        assert got.status_code == 200 and got.json() == body

    # Stored once, whole, by checksum; in this replica's directory at once, under an opaque engine name.
    digest = body["checksum"].removeprefix("sha256:")
    folder = env.store / "sha256" / digest[:2] / digest
    assert (folder / "adapter_config.json").read_bytes() == adapter.config
    assert (folder / "adapter_model.safetensors").read_bytes() == adapter.weights
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)
    assert oct((folder / "adapter_model.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert leftovers(env.store) == []
    entry = env.gw.services.adapters.lookup(uuid.UUID(tenant.tenant_id), "support")
    assert entry is not None
    assert (entry.id, entry.path, entry.base_model, entry.rank) == (body["id"], str(folder), CHAT_MODEL, 8)
    assert re.fullmatch(r"tga-[0-9a-f]{32}", entry.engine_name)
    assert "support" not in entry.engine_name and tenant.tenant_id.replace("-", "") not in entry.engine_name
    assert env.gw.services.adapters.by_engine_name(entry.engine_name) is entry


@pytest.mark.parametrize(
    "packer", [tar_gz, zip_bytes, lambda m: zip_bytes(m, file_type=False)], ids=["tar.gz", "zip", "python-zip"]
)
async def test_upload_as_an_archive(env: Env, packer: Any) -> None:
    tenant = await make_tenant(env.gw)
    adapter = make_adapter(seed=2)
    async with env.gw.http(tenant.admin_key) as http:
        answer = await upload(http, "packed", CHAT_MODEL, archive=packer(adapter.members()), archive_name="a.bin")
    assert answer.status_code == 201, answer.text
    assert answer.json()["bytes"] == len(adapter.config) + len(adapter.weights)
    assert leftovers(env.store) == []


async def test_same_bytes_under_two_names_are_one_folder_until_both_are_deleted(env: Env) -> None:
    tenant = await make_tenant(env.gw)
    other = await make_tenant(env.gw)
    adapter = make_adapter(seed=3)
    async with env.gw.http(tenant.admin_key) as http, env.gw.http(other.admin_key) as http_other:
        first = (await upload(http, "one", CHAT_MODEL, archive=tar_gz(adapter.members()))).json()
        second = (await upload(http, "two", CHAT_MODEL, adapter=adapter)).json()
        third = (await upload(http_other, "three", CHAT_MODEL, archive=zip_bytes(adapter.members()))).json()
        assert first["checksum"] == second["checksum"] == third["checksum"]
        digest = first["checksum"].removeprefix("sha256:")
        assert stored_folders(env.store).count(digest) == 1

        for name, client in (("one", http), ("three", http_other)):
            deleted = await client.delete(f"/v1/adapters/{name}")
            assert deleted.status_code == 200, deleted.text
            assert digest in stored_folders(env.store)  # another adapter still names those bytes
        deleted = await http.delete("/v1/adapters/two")
        assert deleted.json() == {"id": second["id"], "object": "adapter.deleted", "deleted": True}
    assert digest not in stored_folders(env.store)
    assert await env.rows(tenant) == [] and await env.rows(other) == []
    assert leftovers(env.store) == []


async def test_list_get_delete_and_paging(env: Env) -> None:
    tenant = await make_tenant(env.gw)
    async with env.gw.http(tenant.admin_key) as http:
        ids = []
        for i in range(3):
            answer = await upload(http, f"a{i}", CHAT_MODEL, adapter=make_adapter(seed=10 + i))
            ids.append(answer.json()["id"])
        listing = (await http.get("/v1/adapters")).json()
        assert listing["object"] == "list" and listing["has_more"] is False
        assert [a["id"] for a in listing["data"]] == ids[::-1]  # newest first
        assert (listing["first_id"], listing["last_id"]) == (ids[2], ids[0])
        page = (await http.get("/v1/adapters", params={"limit": 2, "order": "asc"})).json()
        assert [a["id"] for a in page["data"]] == ids[:2] and page["has_more"] is True
        rest = (await http.get("/v1/adapters", params={"limit": 2, "order": "asc", "after": ids[1]})).json()
        assert [a["id"] for a in rest["data"]] == ids[2:] and rest["has_more"] is False
        for bad in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}):
            refused = await http.get("/v1/adapters", params=bad)
            assert refused.status_code == 400, bad
            assert set(refused.json()["error"]) == {"message", "type", "param", "code"}

        deleted = await http.delete("/v1/adapters/a1")
        assert deleted.status_code == 200
        assert (await http.get("/v1/adapters/a1")).status_code == 404
        again = await http.delete("/v1/adapters/a1")
        assert again.status_code == 404 and again.json()["error"]["code"] == "adapter_not_found"
        assert [a["name"] for a in (await http.get("/v1/adapters")).json()["data"]] == ["a2", "a0"]
        for odd in ("no%20such", "x" * 65, "%2E%2E", "tga-" + "0" * 32):
            assert (await http.get(f"/v1/adapters/{odd}")).status_code == 404, odd
    assert env.gw.services.adapters.lookup(uuid.UUID(tenant.tenant_id), "a1") is None


async def test_names_clash_with_the_tenants_adapters_and_served_models_and_are_free_after_delete(env: Env) -> None:
    tenant = await make_tenant(env.gw)
    async with env.gw.http(tenant.admin_key) as http:
        first = (await upload(http, "voice", CHAT_MODEL, adapter=make_adapter(seed=20))).json()
        clash = await upload(http, "voice", CHAT_MODEL, adapter=make_adapter(seed=21))
        assert clash.status_code == 409
        assert (clash.json()["error"]["code"], clash.json()["error"]["param"]) == ("adapter_name_taken", "name")
        served = await upload(http, CHAT_MODEL, CHAT_MODEL, adapter=make_adapter(seed=22))
        assert served.status_code == 409 and served.json()["error"]["code"] == "adapter_name_taken"
        first_engine = env.gw.services.adapters.lookup(uuid.UUID(tenant.tenant_id), "voice")
        assert first_engine is not None

        assert (await http.delete("/v1/adapters/voice")).status_code == 200
        again = await upload(http, "voice", CHAT_MODEL, adapter=make_adapter(seed=20))  # the very same bytes
        assert again.status_code == 201
        assert again.json()["id"] != first["id"] and again.json()["checksum"] == first["checksum"]
    entry = env.gw.services.adapters.lookup(uuid.UUID(tenant.tenant_id), "voice")
    assert entry is not None and entry.engine_name != first_engine.engine_name
    assert [r[0] for r in await env.rows(tenant)] == ["voice"]


async def test_tenants_have_their_own_namespaces(env: Env) -> None:
    a, b = await make_tenant(env.gw, "a"), await make_tenant(env.gw, "b")
    async with env.gw.http(a.admin_key) as http_a, env.gw.http(b.admin_key) as http_b:
        mine = (await upload(http_a, "support", CHAT_MODEL, adapter=make_adapter(seed=30))).json()
        theirs = (await upload(http_b, "support", CHAT_MODEL, adapter=make_adapter(seed=31))).json()
        assert mine["id"] != theirs["id"]
        assert (await upload(http_a, "a-only", CHAT_MODEL, adapter=make_adapter(seed=32))).status_code == 201

        assert (await http_b.get("/v1/adapters/support")).json()["id"] == theirs["id"]
        for verb in (http_b.get, http_b.delete):
            hidden = await verb("/v1/adapters/a-only")
            assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "adapter_not_found"
        assert [x["name"] for x in (await http_b.get("/v1/adapters")).json()["data"]] == ["support"]
        assert (await http_b.get("/v1/adapters", params={"after": mine["id"]})).json()["data"] == []
        assert (await http_a.get("/v1/adapters/a-only")).status_code == 200  # B's delete touched nothing
    directory = env.gw.services.adapters
    entry_a = directory.lookup(uuid.UUID(a.tenant_id), "support")
    entry_b = directory.lookup(uuid.UUID(b.tenant_id), "support")
    assert entry_a is not None and entry_b is not None and entry_a.engine_name != entry_b.engine_name
    assert directory.lookup(uuid.UUID(b.tenant_id), "a-only") is None
    assert {e.name for e in directory.for_tenant(uuid.UUID(b.tenant_id))} == {"support"}


async def test_concurrent_uploads_of_one_name_make_one_adapter(env: Env) -> None:
    tenant = await make_tenant(env.gw)
    before = set(stored_folders(env.store))
    async with env.gw.http(tenant.admin_key) as http:
        answers = await asyncio.gather(
            *(upload(http, "race", CHAT_MODEL, adapter=make_adapter(seed=80 + i)) for i in range(4))
        )
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
    winner = next(a.json() for a in answers if a.status_code == 201)
    rows = await env.rows(tenant)
    assert [(r[0], r[3]) for r in rows] == [("race", winner["checksum"])]
    # Only the winner's bytes were kept: a loser refused at the insert stored nothing.
    assert set(stored_folders(env.store)) - before == {winner["checksum"].removeprefix("sha256:")}
    assert leftovers(env.store) == []


async def test_only_tenant_admins_upload_and_delete(env: Env) -> None:
    tenant = await make_tenant(env.gw)
    async with env.gw.http(tenant.admin_key) as admin:
        assert (await upload(admin, "kept", CHAT_MODEL, adapter=make_adapter(seed=40))).status_code == 201
    async with env.gw.http(tenant.user_key) as user:
        refused = await upload(user, "mine", CHAT_MODEL, adapter=make_adapter(seed=41))
        assert refused.status_code == 403
        assert (await user.delete("/v1/adapters/kept")).status_code == 403
        assert (await user.get("/v1/adapters/kept")).status_code == 200
        assert [x["name"] for x in (await user.get("/v1/adapters")).json()["data"]] == ["kept"]
    async with env.gw.http() as anonymous:
        assert (await anonymous.get("/v1/adapters")).status_code == 401
    assert [r[0] for r in await env.rows(tenant)] == ["kept"]


async def test_a_failing_unload_still_deletes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = await make_tenant(env.gw)
    retired: list[str] = []

    async def retire(entry: Any) -> None:
        retired.append(entry.engine_name)
        raise RuntimeError("engine down")

    monkeypatch.setattr(env.gw.services, "adapter_retire", retire)
    async with env.gw.http(tenant.admin_key) as http:
        created = (await upload(http, "gone", CHAT_MODEL, adapter=make_adapter(seed=50))).json()
        entry = env.gw.services.adapters.lookup(uuid.UUID(tenant.tenant_id), "gone")
        assert entry is not None
        assert (await http.delete("/v1/adapters/gone")).status_code == 200
    assert retired == [entry.engine_name]
    assert await env.rows(tenant) == []
    assert created["checksum"].removeprefix("sha256:") not in stored_folders(env.store)


# -- rejections: each a 4xx in OpenAI's shape, and nothing left behind -----------------------------------------

GOOD = make_adapter(seed=60)


def _with_config(**changes: Any) -> Adapter:
    import json

    config = {**json.loads(GOOD.config), **changes}
    return Adapter(json.dumps(config).encode(), GOOD.weights)


# (what is sent, status, code, param or None when not pinned here)
REJECTIONS: dict[str, tuple[dict[str, Any], int, str | None, str | None]] = {
    "bad name": ({"name": "no spaces!", "adapter": GOOD}, 400, "invalid_adapter", "name"),
    "dots only": ({"name": "..", "adapter": GOOD}, 400, "invalid_adapter", "name"),
    "name too long": ({"name": "x" * 65, "adapter": GOOD}, 400, "invalid_adapter", "name"),
    "unknown base model": ({"base_model": "no-such-model", "adapter": GOOD}, 400, "base_model_unavailable",
                           "base_model"),
    "base model config unreadable": ({"base_model": NO_CONFIG_MODEL, "adapter": GOOD}, 400,
                                     "base_model_unavailable", "base_model"),
    "neither file nor pair": ({}, 400, "invalid_adapter", "file"),
    "both file and pair": ({"adapter": GOOD, "archive": tar_gz(GOOD.members())}, 400, "invalid_adapter", "file"),
    "config without weights": ({"only_config": True}, 400, "invalid_adapter", "adapter_model"),
    "rank above the maximum": ({"adapter": make_adapter(rank=32, seed=61)}, 400, "invalid_adapter", None),
    "wrong tensor shape": ({"adapter": make_adapter(seed=62, shape_of={"q_proj": (65, 64)})}, 400,
                           "invalid_adapter", None),
    "module not in the base model": ({"adapter": _with_config(target_modules=["q_proj", "nope_proj"])}, 400,
                                     "invalid_adapter", None),
    "not LoRA": ({"adapter": _with_config(peft_type="PREFIX_TUNING")}, 400, "invalid_adapter", None),
    "pickle weights in the archive": (
        {"archive": tar_gz({"adapter_config.json": GOOD.config, "adapter_model.bin": b"\x80\x04K\x01."})}, 400,
        "invalid_adapter", None,
    ),
    "path traversal": ({"archive": tar_gz({**GOOD.members(), "../escape.txt": b"x"})}, 400, "invalid_adapter",
                       None),
    "symlink": ({"archive": tar_gz(GOOD.members(), symlink=("adapter_model.bin", "/etc/passwd"))}, 400,
                "invalid_adapter", None),
    "not an archive": ({"archive": b"just some bytes, no archive"}, 400, "invalid_adapter", None),
    "pickle as the weights file": ({"pickle_part": True}, 400, "invalid_adapter", "adapter_model"),
    "weights not safetensors": ({"adapter": Adapter(GOOD.config, b"\x80\x04K\x01." * 10)}, 400, "invalid_adapter",
                                None),
    "past adapter_max_bytes": ({"adapter": Adapter(GOOD.config, b"\0" * (MAX_BYTES + 1))}, 413,
                               "adapter_too_large", None),
    "past the body limit": ({"adapter": Adapter(GOOD.config, b"\0" * (MAX_BYTES + 100_000))}, 413, None, None),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_a_rejected_upload_leaves_no_row_and_no_file(env: Env, case: str) -> None:
    sent, status, code, param = REJECTIONS[case]
    tenant = await make_tenant(env.gw)
    before = stored_folders(env.store)
    async with env.gw.http(tenant.admin_key) as http:
        if sent.get("only_config"):
            answer = await http.post(
                "/v1/adapters", data={"name": "x", "base_model": CHAT_MODEL},
                files={"adapter_config": ("adapter_config.json", GOOD.config)},
            )
        elif sent.get("pickle_part"):
            answer = await http.post(
                "/v1/adapters", data={"name": "x", "base_model": CHAT_MODEL},
                files={"adapter_config": ("adapter_config.json", GOOD.config),
                       "adapter_model": ("adapter_model.bin", GOOD.weights)},
            )
        else:
            answer = await upload(
                http, sent.get("name", "rejected"), sent.get("base_model", CHAT_MODEL), adapter=sent.get("adapter"),
                archive=sent.get("archive"),
            )
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        if code is not None:
            assert error["code"] == code
        if param is not None:
            assert error["param"] == param
        assert (await http.get("/v1/adapters")).json()["data"] == []
    assert await env.rows(tenant) == []
    assert stored_folders(env.store) == before
    assert leftovers(env.store) == []


@pytest.mark.slow
async def test_the_adapter_routes_answer_as_documented_under_fuzzing(env: Env) -> None:
    from tests.integration.test_fuzz_openapi import run_schemathesis

    tenant = await make_tenant(env.gw)
    async with env.gw.http(tenant.admin_key) as http:  # something to find, read and delete
        assert (await upload(http, "fuzzed", CHAT_MODEL, adapter=make_adapter(seed=70))).status_code == 201
    code, out = await run_schemathesis(env.gw, tenant.admin_key, "--include-path-regex", "^/v1/adapters")
    assert code == 0, out[-6000:]
    assert leftovers(env.store) == []
