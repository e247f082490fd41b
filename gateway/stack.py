"""``tenantgate up``: the whole stack on one machine — embedded Postgres, local vLLM engines, the gateway.

With engine URLs (``--engine-url`` or ``TENANTGATE_ENGINE_URLS``) it uses those engines instead of
starting its own. Ctrl-C or SIGTERM stops the gateway, then the engines (their whole process groups),
then Postgres.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from gateway.auth import store
from gateway.auth.errors import TenantNotFoundError
from gateway.db.pool import open_pool
from gateway.settings import Settings

DEMO_TENANT = "demo"
LOCK_FILE = "tenantgate-up.lock"


class AlreadyRunningError(Exception):
    """Another ``tenantgate up`` holds this data directory."""


@contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``data_dir`` for one ``tenantgate up``; a second one is refused at once.

    ``flock`` is released by the kernel when the process ends, however it ends, so no stale lock remains.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise AlreadyRunningError(
                f"another `tenantgate up` (pid {holder}) is already running on the data directory {data_dir};"
                " stop it first, or give this one its own TENANTGATE_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def say(message: str) -> None:
    print(f"tenantgate: {message}", flush=True)


@contextmanager
def local_engines(settings: Settings) -> Iterator[Settings]:
    """Prepare the packaged models, start both vLLM engines, and yield settings that point at them."""
    from enginehost import (
        chat_engine_spec,
        embedding_engine_spec,
        embedding_model_path,
        prepare_chat_model,
        run_engines,
    )

    chat_model = prepare_chat_model(settings.data_path, progress=say)
    specs = [
        chat_engine_spec(chat_model, port=settings.local_chat_port, memory_fraction=settings.local_chat_memory),
        embedding_engine_spec(
            embedding_model_path(), port=settings.local_embedding_port,
            memory_fraction=settings.local_embedding_memory,
        ),
    ]
    with run_engines(specs, log_dir=settings.data_path / "logs", timeout=settings.local_engine_start_timeout,
                     progress=say) as engines:
        yield msgspec.structs.replace(
            settings, engine_urls=(engines["chat"].url,), embedding_urls=(engines["embeddings"].url,)
        )


async def ensure_demo_tenant(database_url: str) -> str | None:
    """Create the demo tenant and a user key on the first run; the key (shown once) or None."""
    pool = await open_pool(database_url)
    try:
        try:
            await store.tenant_by_name(pool, DEMO_TENANT)
            return None
        except TenantNotFoundError:
            tenant = await store.create_tenant(pool, DEMO_TENANT, actor="tenantgate-up")
            created = await store.create_key(pool, uuid.UUID(tenant.id), "user", name="demo", actor="tenantgate-up")
            return created.key
    finally:
        await pool.close()


def print_examples(settings: Settings, key: str | None, chat_model: str) -> None:
    base = f"http://{settings.host}:{settings.port}"
    if key is None:
        say(f"the '{DEMO_TENANT}' tenant exists; make a key with: tenantgate keys create --tenant {DEMO_TENANT}")
        key = "<your key>"
    else:
        say(f"created the '{DEMO_TENANT}' tenant; its API key (shown once): {key}")
    print(
        f"""
  Try it:

    curl {base}/v1/chat/completions \\
      -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
      -d '{{"model": "{chat_model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

    python -c 'from openai import OpenAI
    c = OpenAI(base_url="{base}/v1", api_key="{key}")
    print(c.chat.completions.create(model="{chat_model}",
          messages=[{{"role": "user", "content": "What is the capital of France?"}}]).choices[0].message.content)'
""",
        flush=True,
    )


def run_up(settings: Settings, database_url: str, *, local: bool) -> None:
    import signal

    from gateway.server import serve

    # A background job of a non-interactive shell starts with SIGINT ignored: Ctrl-C must still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    key = asyncio.run(ensure_demo_tenant(database_url))
    if not local:
        print_examples(settings, key, "<model>")
        serve(settings, database_url)
        return
    from enginehost import CHAT_MODEL_NAME

    with local_engines(settings) as served:
        say(f"engines ready: chat {served.engine_urls[0]}, embeddings {served.embedding_urls[0]}")
        print_examples(served, key, CHAT_MODEL_NAME)
        serve(served, database_url)


def engines_missing_message() -> str | None:
    from enginehost import engines_available, missing_engine_extra_message

    return None if engines_available() else missing_engine_extra_message()

