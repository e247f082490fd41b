"""The async connection pool (psycopg 3) shared by everything that talks to Postgres in one process.

``DatabasePool`` is psycopg_pool's pool with what a database outage costs changed:

- A caller waits at most ``timeout`` seconds for a connection (``TENANTGATE_DB_POOL_TIMEOUT``), then gets
  ``DatabaseUnavailableError``, a 503 with Retry-After (psycopg_pool's default: 30 s, then a 500). A query
  whose connection breaks under it raises the same error.
- A connection is checked before it is handed out: an idle one with input waiting (a restarting server
  says goodbye to each, then closes) must answer an empty query; one found dead is dropped and the next
  one tried at once, so a restart fails no request. A quiet connection costs one ``poll``, no round trip.
  (psycopg_pool's own ``check=`` costs a round trip each time and sleeps a doubling back-off after each
  dead connection, so a few stale ones would outlast the timeout.)
- A connection that cannot be reopened is retried with back-off for at most ``reconnect_timeout`` seconds,
  then its slot is given up, and the next caller that has to wait starts a fresh attempt at once: the pool
  works again within about a second of the database's return. psycopg_pool's default keeps one attempt
  going for five minutes with a back-off that doubles past a minute (recovery took about 35 s).
- One warning when the database becomes unavailable and one line when it is back, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import monotonic

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests

from gateway.db.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[TupleRow]

# The least time an empty query gets to answer, even when the caller's deadline has passed meanwhile: a
# healthy connection answers in well under a millisecond, and closing one for a late start would be waste.
_MIN_CHECK_S = 0.1

# libpq's own bound on opening a connection (whole seconds, at least 2): without it a database host that
# drops packets holds the pool's one reconnection attempt for the operating system's TCP timeout.
_CONNECT_TIMEOUT_S = 5


class _Availability:
    """Whether the database answered the last time a connection was wanted; logs the changes only."""

    __slots__ = ("down_since", "refused")

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.refused = 0

    def lost(self, reason: str) -> None:
        self.refused += 1
        if self.down_since is None:
            self.down_since = monotonic()
            log.warning("database unavailable (%s): answering 503 until it is back", reason)

    def working(self) -> None:
        if self.down_since is not None:
            log.info(
                "database available again after %.1f s (%d calls refused meanwhile)",
                monotonic() - self.down_since, self.refused,
            )
            self.down_since = None
            self.refused = 0


class DatabasePool(AsyncConnectionPool):
    """psycopg_pool's pool with bounded waits, live connections only and one log line per outage."""

    def __init__(
        self, conninfo: str, *, min_size: int, max_size: int, timeout: float, reconnect_timeout: float
    ) -> None:
        super().__init__(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_S},
            name="tenantgate",
            timeout=timeout,
            reconnect_timeout=reconnect_timeout,
        )
        self.availability = _Availability()

    @property
    def available(self) -> bool:
        """False from a failed wait for a connection until the next connection is handed out."""
        return self.availability.down_since is None

    async def getconn(self, timeout: float | None = None) -> Connection:  # noqa: ASYNC109 (psycopg_pool's API)
        """A connection that answered an empty query, within ``timeout`` (default: the pool's) or a 503."""
        wait = self.timeout if timeout is None else timeout
        deadline = monotonic() + wait
        while True:
            try:
                conn = await super().getconn(deadline - monotonic())
            except (PoolTimeout, TooManyRequests):
                self.availability.lost(f"no working connection within {wait:g} s")
                raise DatabaseUnavailableError() from None
            except PoolClosed:
                raise DatabaseUnavailableError("The service is shutting down; retry shortly.") from None
            try:
                alive = await _alive(conn, deadline)
            except BaseException:
                await self.putconn(conn)
                raise
            if alive:
                self.availability.working()
                return conn
            # Dead (the server ended it): the pool drops it and opens a replacement; try the next one now.
            await self.putconn(conn)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Connection]:  # noqa: ASYNC109
        """As psycopg_pool's, but a connection that breaks under a query raises ``DatabaseUnavailableError``."""
        async with super().connection(timeout) as conn:
            try:
                yield conn
            except psycopg.OperationalError as exc:
                if not conn.broken:
                    raise  # the database answered (a cancelled statement, say): not an outage
                self.availability.lost(f"connection lost: {type(exc).__name__}")
                raise DatabaseUnavailableError() from exc


def _has_input(conn: Connection) -> bool:
    """Whether an idle connection has something to read: the server ended it (its last message, then EOF)
    or, rarely, sent a notice. One ``poll`` with no wait, no round trip (``select`` would fail past fd 1023)."""
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


async def _alive(conn: Connection, deadline: float) -> bool:
    """Whether ``conn`` can serve: it has nothing unread, or it answers an empty query before ``deadline``."""
    if conn.broken or conn.closed:
        return False
    if not _has_input(conn):
        return True
    try:
        async with asyncio.timeout(max(deadline - monotonic(), _MIN_CHECK_S)):
            await conn.execute("")
    except psycopg.OperationalError:
        return False
    except TimeoutError:  # a host that drops packets: give the connection up rather than wait on it
        await conn.close()
        return False
    return True


async def open_pool(
    conninfo: str, *, min_size: int = 1, max_size: int = 10, acquire_timeout: float = 2.0,
    reconnect_timeout: float = 2.0,
) -> DatabasePool:
    """Open a pool and wait until its first connection works, so a bad URL fails at start-up.

    ``acquire_timeout``: the longest a caller waits for a connection (then ``DatabaseUnavailableError``);
    ``reconnect_timeout``: how long one reconnection attempt backs off before its slot is given up.
    """
    pool = DatabasePool(
        conninfo, min_size=min_size, max_size=max_size, timeout=acquire_timeout, reconnect_timeout=reconnect_timeout
    )
    await pool.open(wait=True, timeout=15.0)
    return pool
