"""Errors of the database layer; ``gateway.errors`` maps them to HTTP."""

from __future__ import annotations


class DatabaseUnavailableError(Exception):
    """No working database connection within the pool's timeout, or the connection failed under a query (503).

    Raised by ``gateway.db.pool.DatabasePool`` in place of psycopg_pool's ``PoolTimeout`` and of psycopg's
    ``OperationalError`` on a connection found broken, so every database user answers the same retryable 503.
    """

    code = "database_unavailable"
    param: str | None = None

    def __init__(self, message: str = "The service's database is unavailable; retry shortly.") -> None:
        super().__init__(message)
        self.message = message
