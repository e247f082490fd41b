"""OpenAI's vector store objects and request bodies, in OpenAI's exact shapes, and the checks on what they carry.

References: https://platform.openai.com/docs/api-reference/vector-stores,
``/vector-stores-files`` and ``/vector-stores-file-batches`` (the openai-python SDK's ``types/vector_store.py``,
``types/vector_stores/*.py`` were read field by field). Request fields a client may set to ``null`` to clear
(modify) are ``UNSET`` when absent, so "not sent" and "null" differ.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from retrieval.errors import InvalidRequest

# --- Limits (OpenAI's) -----------------------------------------------------------------------------------------

MAX_PAIRS = 16  # metadata pairs, attribute keys
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
MAX_NAME_CHARS = 256
MAX_DESCRIPTION_CHARS = 512
MIN_CHUNK_TOKENS = 100
MAX_CHUNK_TOKENS = 4096
AUTO_CHUNK_TOKENS = 800  # what `auto` means before ingestion caps it at the embedding model's input
AUTO_OVERLAP_TOKENS = 400
MAX_EXPIRY_DAYS = 365

Status = Literal["in_progress", "completed", "cancelled", "failed"]
STATUSES: tuple[str, ...] = ("in_progress", "completed", "cancelled", "failed")
AttributeValue = str | int | float | bool
Attributes = dict[str, AttributeValue]


class InvalidChunkingStrategy(InvalidRequest):
    code = "invalid_chunking_strategy"


class InvalidMetadata(InvalidRequest):
    code = "invalid_metadata"


class InvalidAttributes(InvalidRequest):
    code = "invalid_attributes"


class InvalidValue(InvalidRequest):
    code = "invalid_value"


# --- Chunking strategies ----------------------------------------------------------------------------------------


class StaticChunking(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int


class AutoChunkingStrategy(msgspec.Struct, frozen=True, tag_field="type", tag="auto", forbid_unknown_fields=True):
    """The default: static 800/400, capped by ingestion at what the embedding engine accepts."""


class StaticChunkingStrategy(
    msgspec.Struct, frozen=True, tag_field="type", tag="static", forbid_unknown_fields=True
):
    static: StaticChunking


ChunkingStrategyParam = AutoChunkingStrategy | StaticChunkingStrategy

AUTO = StaticChunkingStrategy(StaticChunking(AUTO_CHUNK_TOKENS, AUTO_OVERLAP_TOKENS))


def effective_chunking(
    strategy: ChunkingStrategyParam | None, param: str = "chunking_strategy"
) -> StaticChunkingStrategy:
    """The strategy a file is stored with: ``auto`` (or none) becomes static 800/400; a static one is checked
    against OpenAI's bounds (100..4096 tokens a chunk, overlap at most half of that)."""
    if strategy is None or isinstance(strategy, AutoChunkingStrategy):
        return AUTO
    size, overlap = strategy.static.max_chunk_size_tokens, strategy.static.chunk_overlap_tokens
    if not MIN_CHUNK_TOKENS <= size <= MAX_CHUNK_TOKENS:
        raise InvalidChunkingStrategy(
            f"max_chunk_size_tokens must be between {MIN_CHUNK_TOKENS} and {MAX_CHUNK_TOKENS}.",
            param=f"{param}.static.max_chunk_size_tokens",
        )
    if overlap < 0 or overlap > size // 2:
        raise InvalidChunkingStrategy(
            "chunk_overlap_tokens must be non-negative and not exceed half of max_chunk_size_tokens.",
            param=f"{param}.static.chunk_overlap_tokens",
        )
    return strategy


def chunking_to_json(strategy: StaticChunkingStrategy) -> str:
    return msgspec.json.encode(strategy).decode()


def chunking_from_row(value: Any) -> StaticChunkingStrategy:
    """The stored strategy (jsonb, as ingestion last wrote it) as OpenAI's object."""
    return msgspec.convert(value, StaticChunkingStrategy)


# --- Metadata and attributes ------------------------------------------------------------------------------------


def _no_nul(value: str, param: str, error: type[InvalidRequest]) -> None:
    """Postgres text and jsonb cannot hold NUL characters."""
    if "\x00" in value:
        raise error(f"{param} must not contain NUL characters.", param=param)


def check_metadata(metadata: dict[str, str] | None, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata: at most 16 pairs, keys at most 64 characters, string values at most 512."""
    if metadata is None:
        return {}
    if len(metadata) > MAX_PAIRS:
        raise InvalidMetadata(f"{param} may hold at most {MAX_PAIRS} pairs.", param=param)
    for key, value in metadata.items():
        if not key or len(key) > MAX_KEY_CHARS:
            raise InvalidMetadata(f"{param} keys must be 1 to {MAX_KEY_CHARS} characters.", param=param)
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidMetadata(
                f"{param}['{key}'] is longer than {MAX_VALUE_CHARS} characters.", param=param
            )
        _no_nul(key + value, param, InvalidMetadata)
    return metadata


def check_attributes(attributes: Attributes | None, param: str = "attributes") -> Attributes:
    """OpenAI's attributes: at most 16 keys of at most 64 characters; values strings (at most 512 characters),
    numbers or booleans."""
    if attributes is None:
        return {}
    if len(attributes) > MAX_PAIRS:
        raise InvalidAttributes(f"{param} may hold at most {MAX_PAIRS} keys.", param=param)
    for key, value in attributes.items():
        if not key or len(key) > MAX_KEY_CHARS:
            raise InvalidAttributes(f"{param} keys must be 1 to {MAX_KEY_CHARS} characters.", param=param)
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise InvalidAttributes(
                f"{param}['{key}'] is longer than {MAX_VALUE_CHARS} characters.", param=param
            )
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
            raise InvalidAttributes(f"{param}['{key}'] is too large a number.", param=param)
        _no_nul(key + value if isinstance(value, str) else key, param, InvalidAttributes)
    return attributes


def check_text(value: str | None, param: str, max_chars: int) -> str | None:
    if value is not None and len(value) > max_chars:
        raise InvalidValue(f"{param} is longer than {max_chars} characters.", param=param)
    if value is not None:
        _no_nul(value, param, InvalidValue)
    return value


# --- Vector stores ----------------------------------------------------------------------------------------------


class ExpiresAfter(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    anchor: Literal["last_active_at"]
    days: int


def check_expires_after(value: ExpiresAfter | None) -> int | None:
    """Days after the last activity (1..365); ``None``: never expires."""
    if value is None:
        return None
    if not 1 <= value.days <= MAX_EXPIRY_DAYS:
        raise InvalidValue(f"expires_after.days must be between 1 and {MAX_EXPIRY_DAYS}.", param="expires_after.days")
    return value.days


class FileCounts(msgspec.Struct, frozen=True):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class VectorStoreObject(msgspec.Struct, kw_only=True, frozen=True):
    """https://platform.openai.com/docs/api-reference/vector-stores/object (``description`` is ours)."""

    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str
    description: str | None
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    expires_after: ExpiresAfter | None
    expires_at: int | None
    last_active_at: int | None
    metadata: dict[str, str]


class VectorStoreDeleted(msgspec.Struct, frozen=True):
    id: str
    object: Literal["vector_store.deleted"] = "vector_store.deleted"
    deleted: bool = True


class CreateVectorStoreRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str | None = None
    description: str | None = None
    file_ids: list[str] | None = None
    metadata: dict[str, str] | None = None
    chunking_strategy: ChunkingStrategyParam | None = None
    expires_after: ExpiresAfter | None = None


class UpdateVectorStoreRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Modify: a field left out is kept, a field sent as ``null`` is cleared."""

    name: str | msgspec.UnsetType | None = msgspec.UNSET
    metadata: dict[str, str] | msgspec.UnsetType | None = msgspec.UNSET
    expires_after: ExpiresAfter | msgspec.UnsetType | None = msgspec.UNSET


# --- Vector store files -----------------------------------------------------------------------------------------


class LastError(msgspec.Struct, frozen=True):
    code: Literal["server_error", "unsupported_file", "invalid_file"]
    message: str


class VectorStoreFileObject(msgspec.Struct, kw_only=True, frozen=True):
    """https://platform.openai.com/docs/api-reference/vector-stores-files/file-object"""

    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: Status
    last_error: LastError | None
    chunking_strategy: StaticChunkingStrategy
    attributes: Attributes


class VectorStoreFileDeleted(msgspec.Struct, frozen=True):
    id: str
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"
    deleted: bool = True


class CreateVectorStoreFileRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategyParam | None = None


class UpdateVectorStoreFileRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    attributes: Attributes | None


class ContentPart(msgspec.Struct, frozen=True):
    text: str
    type: Literal["text"] = "text"


class FileContentPage(msgspec.Struct, frozen=True):
    """The parsed text of an attached file, as its chunks hold it (``vector_store.file_content.page``)."""

    data: list[ContentPart]
    object: Literal["vector_store.file_content.page"] = "vector_store.file_content.page"
    has_more: bool = False
    next_page: str | None = None


# --- File batches -----------------------------------------------------------------------------------------------


class FileBatchObject(msgspec.Struct, kw_only=True, frozen=True):
    """https://platform.openai.com/docs/api-reference/vector-stores-file-batches/batch-object"""

    id: str
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    created_at: int
    vector_store_id: str
    status: Status
    file_counts: FileCounts


class FileBatchEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    file_id: str
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategyParam | None = None


class CreateFileBatchRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``file_ids`` (with the top-level attributes and strategy) or ``files`` (each its own), not both."""

    file_ids: list[str] | None = None
    files: list[FileBatchEntry] | None = None
    attributes: Attributes | None = None
    chunking_strategy: ChunkingStrategyParam | None = None


# --- Lists ------------------------------------------------------------------------------------------------------


class VectorStoreList(msgspec.Struct, frozen=True):
    data: list[VectorStoreObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class VectorStoreFileList(msgspec.Struct, frozen=True):
    data: list[VectorStoreFileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"
