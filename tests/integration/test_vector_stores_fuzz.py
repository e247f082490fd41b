"""Schemathesis over the vector store routes with their path ids narrowed to a real store, attached file and
batch of the tenant (random ids only reach the 404s): every answer as the OpenAPI document says."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.integration.conftest import Gateway, TenantKeys
from tests.integration.test_fuzz_openapi import _fetch, run_schemathesis
from tests.integration.vector_stores_support import (
    RecordingQueue,
    complete,
    fx_queue,  # noqa: F401  # the `queue` fixture
    upload,
)

pytestmark = pytest.mark.slow


async def test_vector_store_routes_answer_as_documented_for_real_ids(
    gateway: Gateway, tenant: TenantKeys, queue: RecordingQueue, tmp_path: Path
) -> None:
    file_ids = await upload(gateway, tenant.admin_key, 2)
    client = gateway.openai(tenant.admin_key)
    store = await client.vector_stores.create(name="fuzzed", file_ids=file_ids[:1])
    batch = await client.vector_stores.file_batches.create(store.id, file_ids=file_ids[1:])
    await complete(gateway, tenant.tenant_id, store.id, file_ids[0], ["some text", "more text"])
    ids = {"vector_store_id": store.id, "file_id": file_ids[0], "batch_id": batch.id}
    doc = json.loads(await asyncio.to_thread(_fetch, f"{gateway.url}/docs/openapi.json"))
    for path, operations in doc["paths"].items():
        if not path.startswith("/v1/vector_stores/{") or path.endswith("/search"):
            continue
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] in ids:
                    parameter["schema"] = {"type": "string", "enum": [ids[parameter["name"]]]}
            if method == "delete":
                operation["x-skip"] = True
    doc["paths"] = {
        p: {m: op for m, op in ops.items() if not (isinstance(op, dict) and op.get("x-skip"))}
        for p, ops in doc["paths"].items()
    }
    target = tmp_path / "openapi.json"
    target.write_text(json.dumps(doc))
    code, out = await run_schemathesis(
        gateway, tenant.admin_key, "--include-path-regex", r"^/v1/vector_stores/\{vector_store_id\}(?!/search)",
        document=target,
    )
    assert code == 0, out[-6000:]
    assert "passed" in out.lower()
