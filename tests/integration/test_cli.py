"""The ``tenantgate`` command line against a real database, and on an embedded one it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import psutil
import pytest


def tenantgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, check=False)


def test_tenants_and_keys_from_the_shell(clean_database_url: str) -> None:
    env = {"TENANTGATE_DATABASE_URL": clean_database_url}
    created = tenantgate("tenants", "create", "shell-co", env=env)
    assert created.returncode == 0, created.stderr
    assert msgspec.json.decode(created.stdout)["name"] == "shell-co"
    key = tenantgate("keys", "create", "--tenant", "shell-co", "--role", "admin", env=env)
    assert key.returncode == 0 and key.stdout.strip().startswith("sk-tg-")
    listed = msgspec.json.decode(tenantgate("tenants", "list", env=env).stdout)
    assert [t["name"] for t in listed] == ["shell-co"]
    disabled = msgspec.json.decode(tenantgate("tenants", "disable", "shell-co", env=env).stdout)
    assert disabled["status"] == "disabled"
    again = tenantgate("tenants", "create", "shell-co", env=env)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = tenantgate("tenants", "create", "Bad Name; DROP", env=env)
    assert bad.returncode == 1 and "Invalid tenant name" in bad.stderr
    missing = tenantgate("keys", "create", "--tenant", "nobody", env=env)
    assert missing.returncode == 1 and "No tenant named 'nobody'" in missing.stderr


def test_a_wrong_setting_stops_the_cli_with_its_name(clean_database_url: str) -> None:
    result = tenantgate("db", "upgrade", env={"TENANTGATE_DATABASE_URL": clean_database_url,
                                              "TENANTGATE_PORT": "not-a-port"})
    assert result.returncode == 2 and "TENANTGATE_PORT" in result.stderr


@pytest.mark.slow
def test_db_upgrade_on_embedded_postgres_starts_and_stops_it(tmp_path: Path) -> None:
    env = {"TENANTGATE_DATA_DIR": str(tmp_path)}
    first = tenantgate("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied [1]" in first.stdout
    second = tenantgate("db", "upgrade", env=env)
    assert "applied nothing; schema version 1" in second.stdout
    pgdata = str(tmp_path / "postgres")
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if pgdata in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
