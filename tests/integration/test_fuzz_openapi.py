"""Property-based fuzzing of the gateway's own OpenAPI document (schemathesis): no server error, ever.

schemathesis runs as a child process against the live gateway of this test session, so the event loop
that serves the gateway keeps running while it fires requests.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ADMIN_KEY, Gateway, TenantKeys

pytestmark = pytest.mark.slow


async def run_schemathesis(gw: Gateway, key: str, *extra: str) -> tuple[int, str]:
    st = Path(sys.executable).with_name("st")
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", f"{gw.url}/docs/openapi.json", "--checks", "not_a_server_error",
        "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--workers", "1",
        "--header", f"Authorization: Bearer {key}", "--seed", "1", "--no-color", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_tenant_api_has_no_server_errors_under_fuzzing(gateway: Gateway, tenant: TenantKeys) -> None:
    code, out = await run_schemathesis(gateway, tenant.admin_key, "--exclude-path-regex", "^/admin")
    assert code == 0, out[-6000:]
    assert "passed" in out.lower()


async def test_admin_api_has_no_server_errors_under_fuzzing(gateway: Gateway) -> None:
    code, out = await run_schemathesis(gateway, ADMIN_KEY, "--include-path-regex", "^/admin")
    assert code == 0, out[-6000:]
    assert "passed" in out.lower()
