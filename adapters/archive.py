"""Safe unpacking of an uploaded adapter archive (tar, tar.gz or zip) into a scratch folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.validation import UploadLimits

__all__ = ["extract_adapter"]


def extract_adapter(archive: Path, scratch: Path, limits: UploadLimits) -> tuple[Path, Path]:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` from ``archive`` into ``scratch`` and
    return their paths (config, weights)."""
    raise NotImplementedError
