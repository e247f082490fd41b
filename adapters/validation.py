"""Validation of an uploaded peft LoRA adapter against a base model, before anything is stored.

Synchronous and CPU/disk bound: callers run it in a thread. Nothing here imports torch, peft or safetensors:
the weights are never loaded, only the safetensors header is parsed (:mod:`adapters.safetensors_header`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.archive import extract_adapter
from adapters.base_model import BaseModelSpec

__all__ = ["AdapterFiles", "UploadLimits", "ValidatedAdapter", "unpack_archive", "validate_adapter"]


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """Bounds on one upload: total bytes (archive, each member, the unpacked total, the two files), archive
    entries, a zip member's expansion ratio, and the safetensors header length."""

    max_bytes: int = 1 << 30
    max_entries: int = 16
    max_ratio: float = 100.0
    max_header_bytes: int = 16 << 20


@dataclass(frozen=True, slots=True)
class AdapterFiles:
    """The two files of an adapter, inside a scratch folder the caller owns."""

    config: Path
    weights: Path


@dataclass(frozen=True, slots=True)
class ValidatedAdapter:
    """An adapter that passed validation: what the registry records about it."""

    files: AdapterFiles
    rank: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    bytes: int
    checksum: str


def unpack_archive(archive: Path, scratch: Path, limits: UploadLimits) -> AdapterFiles:
    """Unpack a ``.tar.gz``/``.tgz``/``.tar`` or ``.zip`` (told by its content) into ``scratch``, writing only
    there; see :func:`adapters.archive.extract_adapter`."""
    config, weights = extract_adapter(archive, scratch, limits)
    return AdapterFiles(config=config, weights=weights)


def validate_adapter(
    files: AdapterFiles, base: BaseModelSpec, *, max_rank: int, limits: UploadLimits
) -> ValidatedAdapter:
    """Check ``adapter_config.json`` and the weights' safetensors header against ``base`` and the limits;
    compute ``bytes`` and ``checksum``. :class:`adapters.errors.InvalidAdapter` (or ``AdapterTooLarge``)
    saying exactly what is wrong."""
    raise NotImplementedError
