"""OpenAI's Files: a tenant's uploaded files, stored in Postgres (tables ``files`` and ``file_parts``).

The bytes are kept as pieces of ``PART_BYTES`` so an upload is written, and a download or an ingestion
worker reads, one piece at a time: no 100 MB value is ever held in memory. Every function takes the tenant
and filters by it, inside a tenant-scoped transaction (``retrieval.tenancy``: row-level security as a second
wall); another tenant's file, like a malformed id, is :class:`FileNotFound`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Literal

import msgspec
from psycopg_pool import AsyncConnectionPool

from retrieval.errors import FileNotFound, FileTooLarge, InvalidFile
from retrieval.tenancy import tenant_transaction

PART_BYTES = 1024 * 1024
PURPOSES = ("assistants", "batch", "evals", "fine-tune", "user_data")
MAX_FILENAME_CHARS = 255
MAX_LIST_LIMIT = 10_000

_ID = re.compile(r"file-[A-Za-z0-9_-]{1,64}")


class FileObject(msgspec.Struct, kw_only=True, frozen=True):
    """OpenAI's File object (https://platform.openai.com/docs/api-reference/files/object)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FilePage(msgspec.Struct, frozen=True):
    data: list[FileObject]
    has_more: bool


def new_file_id() -> str:
    return "file-" + secrets.token_urlsafe(18)  # 24 characters, 144 random bits


def is_file_id(file_id: str) -> bool:
    return _ID.fullmatch(file_id) is not None


def check_purpose(purpose: str | None) -> str:
    if purpose not in PURPOSES:
        raise InvalidFile(
            f"Invalid purpose '{(purpose or '')[:64]}'; expected one of: {', '.join(PURPOSES)}.", param="purpose"
        )
    return purpose


def clean_filename(filename: str | None) -> str:
    """The name as given, without any directory part; no NUL or control characters, at most 255 characters."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name in (".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidFile("The file needs a name without control characters.", param="file")
    if len(name) > MAX_FILENAME_CHARS:
        raise InvalidFile(f"The file name is longer than {MAX_FILENAME_CHARS} characters.", param="file")
    return name


_COLS = "id, bytes, extract(epoch FROM created_at)::bigint, filename, purpose"


def _file(row: tuple[str, int, int, str, str]) -> FileObject:
    return FileObject(id=row[0], bytes=row[1], created_at=row[2], filename=row[3], purpose=row[4])


def _not_found(file_id: str) -> FileNotFound:
    return FileNotFound(f"No such File object: {file_id[:80]}", param="file_id")


async def create_file(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, *, filename: str | None, purpose: str | None,
    content: AsyncIterable[bytes], max_bytes: int,
) -> FileObject:
    """Store an upload read from ``content``, one piece at a time, in one transaction: a file too large
    (:class:`FileTooLarge`) or empty leaves nothing behind."""
    purpose = check_purpose(purpose)
    name = clean_filename(filename)
    file_id = new_file_id()
    digest = hashlib.sha256()
    size = 0
    seq = 0
    pending = bytearray()
    async with tenant_transaction(pool, tenant_id) as conn:
        await conn.execute(
            "INSERT INTO files (id, tenant_id, filename, purpose, bytes) VALUES (%s, %s, %s, %s, 0)",
            (file_id, tenant_id, name, purpose),
        )

        async def write(piece: bytes) -> None:
            nonlocal seq
            await conn.execute(
                "INSERT INTO file_parts (file_id, tenant_id, seq, data) VALUES (%s, %s, %s, %s)",
                (file_id, tenant_id, seq, piece),
            )
            seq += 1

        async for chunk in content:
            size += len(chunk)
            if size > max_bytes:
                raise FileTooLarge(f"The file is larger than the limit of {max_bytes} bytes.", param="file")
            digest.update(chunk)
            pending += chunk
            while len(pending) >= PART_BYTES:
                await write(bytes(pending[:PART_BYTES]))
                del pending[:PART_BYTES]
        if size == 0:
            raise InvalidFile("The file is empty.", param="file")
        if pending:
            await write(bytes(pending))
        cur = await conn.execute(
            f"UPDATE files SET bytes = %s, sha256 = %s WHERE id = %s AND tenant_id = %s RETURNING {_COLS}",
            (size, digest.digest(), file_id, tenant_id),
        )
        row = await cur.fetchone()
    assert row is not None
    return _file(row)


async def get_file(pool: AsyncConnectionPool, tenant_id: uuid.UUID, file_id: str) -> FileObject:
    if not is_file_id(file_id):
        raise _not_found(file_id)
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(f"SELECT {_COLS} FROM files WHERE id = %s AND tenant_id = %s", (file_id, tenant_id))
        row = await cur.fetchone()
    if row is None:
        raise _not_found(file_id)
    return _file(row)


async def list_files(
    pool: AsyncConnectionPool, tenant_id: uuid.UUID, *, after: str | None = None, limit: int = MAX_LIST_LIMIT,
    order: Literal["asc", "desc"] = "desc", purpose: str | None = None,
) -> FilePage:
    """A page of the tenant's files by creation time; ``after`` is the last id of the previous page (an id not
    of this tenant gives an empty page)."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidFile(f"limit must be between 1 and {MAX_LIST_LIMIT}.", param="limit")
    where = ["tenant_id = %s"]
    params: list[object] = [tenant_id]
    if purpose is not None:
        where.append("purpose = %s")
        params.append(purpose)
    if after is not None:
        op = ">" if order == "asc" else "<"
        where.append(f"(created_at, id) {op} (SELECT created_at, id FROM files WHERE tenant_id = %s AND id = %s)")
        params += [tenant_id, after]
    direction = "ASC" if order == "asc" else "DESC"
    params.append(limit + 1)
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute(
            f"SELECT {_COLS} FROM files WHERE {' AND '.join(where)}"
            f" ORDER BY created_at {direction}, id {direction} LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    return FilePage([_file(r) for r in rows[:limit]], len(rows) > limit)


async def read_content(pool: AsyncConnectionPool, tenant_id: uuid.UUID, file: FileObject) -> AsyncIterator[bytes]:
    """The file's bytes, one piece per query (a file deleted meanwhile ends early)."""
    parts = -(-file.bytes // PART_BYTES)
    for seq in range(parts):
        async with tenant_transaction(pool, tenant_id) as conn:
            cur = await conn.execute(
                "SELECT data FROM file_parts WHERE file_id = %s AND tenant_id = %s AND seq = %s",
                (file.id, tenant_id, seq),
            )
            row = await cur.fetchone()
        if row is None:
            return
        yield bytes(row[0])


async def delete_file(pool: AsyncConnectionPool, tenant_id: uuid.UUID, file_id: str) -> None:
    if not is_file_id(file_id):
        raise _not_found(file_id)
    async with tenant_transaction(pool, tenant_id) as conn:
        cur = await conn.execute("DELETE FROM files WHERE id = %s AND tenant_id = %s", (file_id, tenant_id))
        if cur.rowcount == 0:
            raise _not_found(file_id)
