"""Shared fixtures: one real Postgres per test session (embedded, or ``TG_TEST_DATABASE_URL``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.migrations import upgrade
from gateway.db.pool import open_pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The real vLLM engines that tests/local, tests/e2e and later real-engine suites share (one pair per session).
pytest_plugins = ["tests.realengines", "tests.trained_adapter"]

# `.ci/run` sets this: there every test must run, so a skip (say, the real-engine suites not finding the
# engines they were installed with) fails the run instead of passing it quietly.
FAIL_ON_SKIP = os.environ.get("TG_FAIL_ON_SKIP") == "1"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if FAIL_ON_SKIP and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, and TG_FAIL_ON_SKIP=1 allows no skip: {report.longrepr}"
    return report


# Tables holding data, emptied between tests (schema_migrations stays).
DATA_TABLES = (
    "chunks", "vector_store_files", "vector_store_file_batches", "vector_stores", "file_parts", "files",
    "usage_events", "audit_log", "api_keys", "platform_admin_key", "tenants",
)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database: the server named by TG_TEST_DATABASE_URL, else an embedded one."""
    external = os.environ.get("TG_TEST_DATABASE_URL")
    if external:
        _run_upgrade(external)
        yield external
        return
    # Not under pytest's rotating tmp dirs: a concurrent pytest run may prune those while we use them.
    root = Path(tempfile.mkdtemp(prefix="tenantgate-test-pg-"))
    server = EmbeddedPostgres(root / "data")
    url = server.start()
    try:
        _run_upgrade(url)
        yield url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _run_upgrade(url: str) -> None:
    import asyncio

    asyncio.run(upgrade(url))


def truncate_all(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(DATA_TABLES) + " RESTART IDENTITY CASCADE")


@pytest.fixture
def clean_database_url(database_url: str) -> str:
    """The session database, emptied of rows before the test."""
    truncate_all(database_url)
    return database_url


@pytest.fixture
async def db_pool(clean_database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = await open_pool(clean_database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()
