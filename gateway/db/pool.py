"""The async connection pool (psycopg 3) shared by everything that talks to Postgres in one process."""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool


async def open_pool(conninfo: str, *, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    """Open a pool and wait until its first connection works, so a bad URL fails at start-up."""
    pool = AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True},
        name="tenantgate",
    )
    await pool.open(wait=True, timeout=15.0)
    return pool
