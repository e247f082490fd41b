"""Parse a .safetensors file's header safely, without loading any tensor.

The format: 8 bytes little-endian header length ``N``, ``N`` bytes of a JSON object (UTF-8, may end in
spaces), then the data area. Each entry but ``__metadata__`` is ``{"dtype", "shape", "data_offsets":
[begin, end]}`` relative to the data area; sorted by offset the tensors must tile the data area exactly (no
gap, no overlap, nothing after the last). These are the checks the safetensors library makes, done here on
a bounded read so a hostile file costs at most ``max_header_bytes`` of memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from adapters._strict_json import StrictJsonError, clip, loads_object
from adapters.errors import InvalidAdapter

__all__ = ["ACCEPTED_DTYPES", "TensorInfo", "read_header"]

TensorInfo = tuple[str, tuple[int, ...]]  # (dtype, shape)
ACCEPTED_DTYPES: dict[str, int] = {"F16": 2, "BF16": 2, "F32": 4}  # dtype -> bytes per element
_PARAM = "adapter_model"
_MAX_DIMS = 8


def _bad(why: str) -> InvalidAdapter:
    return InvalidAdapter(f"adapter_model.safetensors is not a valid safetensors file: {why}", param=_PARAM)


def _read_exactly(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    left = count
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor(name: str, entry: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    shown = clip(name)
    if not isinstance(entry, dict):
        raise _bad(f"tensor {shown} is described by a JSON {type(entry).__name__}, not an object")
    extra = set(entry) - {"dtype", "shape", "data_offsets"}
    if extra:
        raise _bad(f"tensor {shown} has unknown fields ({clip(', '.join(sorted(extra)), 80)})")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise _bad(f"tensor {shown} has no dtype")
    if dtype not in ACCEPTED_DTYPES:
        raise InvalidAdapter(
            f"tensor {shown} has dtype {clip(dtype, 20)}; adapters must be F16, BF16 or F32", param=_PARAM
        )
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_is_count(dim) for dim in shape):
        raise _bad(f"tensor {shown} has no valid shape (a list of at most {_MAX_DIMS} non-negative integers)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise _bad(f"tensor {shown} has no valid data_offsets (two non-negative integers)")
    begin, end = offsets
    if begin > end or end > data_size:
        raise _bad(f"tensor {shown} has data_offsets [{begin}, {end}] outside the data area ({data_size} bytes)")
    if math.prod(shape) * ACCEPTED_DTYPES[dtype] != end - begin:
        raise _bad(f"tensor {shown}'s data_offsets span {end - begin} bytes, its dtype and shape need another size")
    return dtype, tuple(shape), begin, end


def read_header(path: Path, *, max_header_bytes: int = 16 << 20) -> dict[str, TensorInfo]:
    """``{tensor name: (dtype, shape)}`` of the file at ``path`` (opened without following a symlink).
    :class:`adapters.errors.InvalidAdapter` (param ``adapter_model``) for anything the safetensors format
    does not allow, for dtypes other than F16/BF16/F32, and for ``__metadata__`` that is not str -> str."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise InvalidAdapter(f"adapter_model.safetensors cannot be read ({exc.strerror})", param=_PARAM) from None
    try:
        size = os.fstat(fd).st_size
        prefix = _read_exactly(fd, 8)
        if len(prefix) < 8:
            raise _bad(f"it is {size} bytes, too short for the 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > max_header_bytes:
            raise _bad(f"its header length {length} is above the limit of {max_header_bytes} bytes")
        if length > size - 8:
            raise _bad(f"its header length {length} runs past the end of the file ({size} bytes)")
        head = _read_exactly(fd, length)
    finally:
        os.close(fd)
    if len(head) < length:
        raise _bad("the file is shorter than it was when opened")
    if not head.startswith(b"{"):
        raise _bad("its header does not start with '{'")
    try:
        header = loads_object(head.rstrip(b" "))
    except StrictJsonError as exc:
        raise _bad(f"its header is not a JSON object: {exc}") from None
    return _tensors(header, data_size=size - 8 - length)


def _tensors(header: dict[str, Any], *, data_size: int) -> dict[str, TensorInfo]:
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _bad("its __metadata__ is not an object of strings")
    spans: list[tuple[int, int, str]] = []
    result: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        dtype, shape, begin, end = _tensor(name, entry, data_size)
        result[name] = (dtype, shape)
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            where = "overlaps the tensor before it" if begin < cursor else f"leaves a gap after byte {cursor}"
            raise _bad(f"tensor {clip(name)} {where} (the tensors must tile the data area)")
        cursor = end
    if cursor != data_size:
        raise _bad(f"the data area has {data_size - cursor} bytes after the last tensor")
    return result
