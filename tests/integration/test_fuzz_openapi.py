"""Property-based fuzzing of the gateway's own OpenAPI document (schemathesis): no server error, ever, and
every answer as the document says: a declared status, a declared content type, a body that matches the
declared schema (OpenAI's objects, OpenAI's error shape) and the declared headers. The document cannot drift
from what the gateway answers without failing here.

schemathesis runs as a child process against the live gateway of this test session, so the event loop
that serves the gateway keeps running while it fires requests.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import ADMIN_KEY, CHAT_MODEL, EMBED_MODEL, Gateway, TenantKeys

pytestmark = pytest.mark.slow

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
])


async def run_schemathesis(gw: Gateway, key: str, *extra: str, document: Path | None = None) -> tuple[int, str]:
    st = Path(sys.executable).with_name("st")
    location = [str(document), "--url", gw.url] if document is not None else [f"{gw.url}/docs/openapi.json"]
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", *location, "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--workers", "1",
        "--header", f"Authorization: Bearer {key}", "--seed", "1", "--no-color", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    return proc.returncode or 0, out.decode(errors="replace")


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


async def served_models_document(gw: Gateway, tmp_path: Path) -> Path:
    """The gateway's document with each inference route's ``model`` narrowed to the model the fake engine
    serves: a random name is a 404 before any engine call, so only this way do the fuzzed requests reach
    the engine and check its answers (JSON and streams) against the declared 200. ``max_tokens`` is kept
    small too: the fake writes as many words as asked (a real engine refuses more than its context), and
    ``retrieval`` is left out."""
    doc = json.loads(await asyncio.to_thread(_fetch, f"{gw.url}/docs/openapi.json"))
    for path, model in (("/v1/chat/completions", CHAT_MODEL), ("/v1/completions", CHAT_MODEL),
                        ("/v1/embeddings", EMBED_MODEL)):
        properties = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
        properties["model"] = {"type": "string", "enum": [model]}
        # A fuzzed `retrieval` names no store of this tenant: a 404 before any engine call. Grounded requests
        # have their own tests (test_grounded_chat.py); the tenant API fuzz test above still sends it.
        properties.pop("retrieval", None)
        for name in ("max_tokens", "max_completion_tokens"):
            if name in properties:
                properties[name] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 64}, {"type": "null"}]}
    target = tmp_path / "openapi.json"
    target.write_text(json.dumps(doc))
    return target


async def test_tenant_api_answers_as_documented_under_fuzzing(gateway: Gateway, tenant: TenantKeys) -> None:
    code, out = await run_schemathesis(gateway, tenant.admin_key, "--exclude-path-regex", "^/admin")
    assert code == 0, out[-6000:]
    assert "passed" in out.lower()


async def test_inference_answers_as_documented_for_a_served_model(
    gateway: Gateway, tenant: TenantKeys, tmp_path: Path
) -> None:
    document = await served_models_document(gateway, tmp_path)
    code, out = await run_schemathesis(
        gateway, tenant.admin_key, "--include-path-regex", "^/v1/(chat/completions|completions|embeddings)$",
        document=document,
    )
    assert code == 0, out[-6000:]
    assert "passed" in out.lower()
    # The answers checked include the engine's own: JSON and streams of both engines.
    assert gateway.chat.streams_finished > 0
    assert gateway.chat.request_count > gateway.chat.streams_started
    assert gateway.embed.request_count > 0


async def test_admin_api_answers_as_documented_under_fuzzing(gateway: Gateway) -> None:
    code, out = await run_schemathesis(gateway, ADMIN_KEY, "--include-path-regex", "^/admin")
    assert code == 0, out[-6000:]
    assert "passed" in out.lower()
