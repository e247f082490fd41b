"""The embedded Postgres starts with the gateway's ``shared_buffers`` (written into ``tenantgate.conf`` before each
start, included once by ``postgresql.conf``), and a new value takes effect at the next start."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.db.embedded import CONF_FILE, EmbeddedPostgres


@pytest.fixture
def pgdata() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="tenantgate-embedded-"))
    try:
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _shared_buffers(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW shared_buffers").fetchone()
    assert row is not None
    return str(row[0])


def test_the_server_starts_with_the_configured_shared_buffers_and_takes_a_new_value_at_restart(pgdata: Path) -> None:
    first = EmbeddedPostgres(pgdata, shared_buffers="48MB")
    try:
        assert _shared_buffers(first.start()) == "48MB"
    finally:
        first.stop()

    second = EmbeddedPostgres(pgdata, shared_buffers="64MB")
    try:
        assert _shared_buffers(second.start()) == "64MB"
    finally:
        second.stop()

    includes = [line for line in (pgdata / "postgresql.conf").read_text().splitlines() if CONF_FILE in line
                and not line.lstrip().startswith("#")]
    assert includes == [f"include_if_exists = '{CONF_FILE}'"]
    assert "shared_buffers = '64MB'" in (pgdata / CONF_FILE).read_text()


@pytest.mark.parametrize("value", ["", "1", "lots", "1 GB", "0MB", "1GB; fsync = off", "1GB'\nfsync = 'off"])
def test_a_value_that_is_not_a_memory_size_is_refused_before_anything_is_written(pgdata: Path, value: str) -> None:
    with pytest.raises(ValueError, match="shared_buffers"):
        EmbeddedPostgres(pgdata, shared_buffers=value)
    assert not pgdata.exists()
