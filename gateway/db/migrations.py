"""Versioned schema migrations kept in ``gateway/db/migrations/NNNN_name.sql``.

Each file runs once, in its own transaction, in version order. A Postgres advisory lock serialises
concurrent upgrades, so many gateway replicas may start at once against one database. The ingestion
queue's tables (procrastinate's) are installed or upgraded under the same lock (:func:`upgrade_queue_schema`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg

log = logging.getLogger(__name__)

_LOCK_ID = 7_346_110_201  # arbitrary, fixed: "tenantgate migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """A migration failed or the database holds a version this code does not know."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("gateway.db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return found


async def upgrade(conninfo: str) -> list[int]:
    """Apply every pending migration; return the versions applied now."""
    applied_now: list[int] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            known = available_migrations()
            unknown = done - {m.version for m in known}
            if unknown:
                raise MigrationError(
                    f"the database has schema version(s) {sorted(unknown)} that this tenantgate does not know:"
                    " it was upgraded by a newer release"
                )
            for migration in known:
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied_now.append(migration.version)
            await upgrade_queue_schema(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now


# -- the job queue's own schema (procrastinate) ------------------------------------------------------------

_QUEUE_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)_")


def _version_tuple(text: str) -> tuple[int, int, int]:
    parts = re.findall(r"\d+", text)[:3]
    return (int(parts[0]), int(parts[1]), int(parts[2])) if len(parts) == 3 else (0, 0, 0)


def _queue_migrations(folder: str, after: str, upto: str) -> list[str]:
    """procrastinate's migration files of releases after ``after`` up to ``upto``, in order."""
    have, want = _version_tuple(after), _version_tuple(upto)
    return [
        path.read_text(encoding="utf-8")
        for path in sorted(Path(folder).glob("*.sql"))
        if _QUEUE_VERSION.match(path.name) and have < _version_tuple(path.name) <= want
    ]


async def upgrade_queue_schema(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """Install procrastinate's tables (the ingestion queue) once, or bring them to the installed release.

    Runs inside :func:`upgrade`'s advisory lock. ``queue_schema`` records the procrastinate release whose
    schema is in place: a fresh database gets the release's whole ``schema.sql``; a database set up by an
    older release gets the library's own migration files newer than that release, in order. Returns the
    release applied now, or None when nothing was to do."""
    import procrastinate
    from procrastinate.schema import SchemaManager

    installed = procrastinate.__version__
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS queue_schema ("
        " library text PRIMARY KEY, version text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    cur = await conn.execute("SELECT version FROM queue_schema WHERE library = 'procrastinate'")
    row = await cur.fetchone()
    if row is not None and _version_tuple(row[0]) >= _version_tuple(installed):
        return None
    async with conn.transaction():
        if row is None:
            await conn.execute(SchemaManager.get_schema().encode())
        else:
            for sql in _queue_migrations(SchemaManager.get_migrations_path(), row[0], installed):
                await conn.execute(sql.encode())
        await conn.execute(
            "INSERT INTO queue_schema (library, version) VALUES ('procrastinate', %s)"
            " ON CONFLICT (library) DO UPDATE SET version = excluded.version, applied_at = now()",
            (installed,),
        )
    log.info("job queue schema at procrastinate %s", installed)
    return installed


async def current_version(conninfo: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = await cur.fetchone()
        if not row or not row[0]:
            return None
        cur = await conn.execute("SELECT max(version) FROM schema_migrations")
        row = await cur.fetchone()
        return None if row is None else row[0]
