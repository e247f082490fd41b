"""Parse a .safetensors file's header safely, without loading any tensor."""

from __future__ import annotations

from pathlib import Path

__all__ = ["TensorInfo", "read_header"]

TensorInfo = tuple[str, tuple[int, ...]]  # (dtype, shape)


def read_header(path: Path, *, max_header_bytes: int = 16 << 20) -> dict[str, TensorInfo]:
    """``{tensor name: (dtype, shape)}``; :class:`adapters.errors.InvalidAdapter` (param ``adapter_model``)
    for anything the safetensors format does not allow or this gateway does not accept."""
    raise NotImplementedError
