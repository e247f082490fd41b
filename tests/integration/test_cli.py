"""The ``tenantgate`` command line against a real database, and on an embedded one it starts itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import psutil
import pytest

MIGRATIONS = Path(__file__).resolve().parents[2] / "gateway" / "db" / "migrations"


def tenantgate(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout, check=False)


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
    versions = sorted(int(p.name.split("_")[0]) for p in MIGRATIONS.glob("*.sql"))
    assert f"applied {versions}" in first.stdout
    second = tenantgate("db", "upgrade", env=env)
    assert f"applied nothing; schema version {versions[-1]}" in second.stdout
    pgdata = str(tmp_path / "postgres")
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if pgdata in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


def test_up_with_the_port_taken_stops_at_once_and_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tenantgate("up", "--engine-url", "http://127.0.0.1:9", "--port", str(port),
                            env={"TENANTGATE_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "TENANTGATE_PORT" in result.stderr
    assert "--port" in result.stderr
    assert not (tmp_path / "postgres").exists()  # nothing was started before the check
    assert "Try it" not in result.stdout


def test_a_second_up_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    from gateway.stack import hold_data_dir

    with hold_data_dir(tmp_path):  # as a running `tenantgate up` holds it
        result = tenantgate("up", "--engine-url", "http://127.0.0.1:9", env={"TENANTGATE_DATA_DIR": str(tmp_path)},
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert "already running" in result.stderr and str(os.getpid()) in result.stderr
    assert not (tmp_path / "postgres").exists()
    with hold_data_dir(tmp_path):  # released with its holder: free again
        pass
