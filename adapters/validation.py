"""Validation of an uploaded peft LoRA adapter against a base model, before anything is stored.

Synchronous and CPU/disk bound: callers run it in a thread. Nothing here imports torch, peft or safetensors:
the weights are never loaded, only the safetensors header is parsed (:mod:`adapters.safetensors_header`).
What is accepted is what vLLM serves as peft wrote it: plain LoRA on the base model's linear projections,
the same rank and alpha everywhere, every decoder layer adapted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters._strict_json import StrictJsonError, clip, loads_object
from adapters.archive import CONFIG_NAME, WEIGHTS_NAME, extract_adapter
from adapters.base_model import BaseModelSpec
from adapters.errors import AdapterTooLarge, InvalidAdapter
from adapters.safetensors_header import TensorInfo, read_header

__all__ = ["AdapterFiles", "UploadLimits", "ValidatedAdapter", "checksum_files", "unpack_archive", "validate_adapter"]

CONFIG_MAX_BYTES = 1 << 20
_CHUNK = 1 << 20
_ATTENTION = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
_PREFIX = "base_model.model.model.layers."
_MODULE_PATH = re.compile(r"model\.layers\.(?P<layer>[0-9]{1,6})\.(?P<block>self_attn|mlp)\.(?P<module>\w+)")
# Options peft may write that vLLM does not honour (or that change what the weights mean): each must be
# absent, null, false or empty. The message says what the option is.
_UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA (use_dora) is not supported by the engine",
    "modules_to_save": "modules_to_save (fully trained extra modules) is not supported by the engine",
    "layers_to_transform": "layers_to_transform is not supported: adapt every layer",
    "layers_pattern": "layers_pattern is not supported: adapt every layer",
    "rank_pattern": "rank_pattern (per-module ranks) is not supported by the engine",
    "alpha_pattern": "alpha_pattern (per-module alphas) is not supported by the engine",
    "fan_in_fan_out": "fan_in_fan_out is not supported (Conv1D-style weights)",
    "lora_bias": "lora_bias is not supported by the engine",
    "layer_replication": "layer_replication is not supported by the engine",
    "target_parameters": "target_parameters is not supported by the engine",
    "trainable_token_indices": "trainable_token_indices (token embedding deltas) is not supported",
    "exclude_modules": "exclude_modules is not supported: list the target modules instead",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported by the engine",
    "use_qalora": "QALoRA (use_qalora) is not supported by the engine",
    "use_bdlora": "use_bdlora is not supported by the engine",
}


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
    """Unpack a ``.tar.gz``/``.tgz``/``.tar`` or ``.zip`` (told by its content) into a new folder inside
    ``scratch``, writing nothing elsewhere; see :func:`adapters.archive.extract_adapter`."""
    config, weights = extract_adapter(archive, scratch, limits)
    return AdapterFiles(config=config, weights=weights)


def validate_adapter(
    files: AdapterFiles, base: BaseModelSpec, *, max_rank: int, limits: UploadLimits
) -> ValidatedAdapter:
    """Check ``adapter_config.json`` and the weights' safetensors header against ``base`` and the limits;
    compute ``bytes`` and ``checksum``. :class:`adapters.errors.InvalidAdapter` (param ``adapter_config``
    or ``adapter_model``) or :class:`adapters.errors.AdapterTooLarge` saying exactly what is wrong."""
    config_size, weights_size = _size(files.config, "adapter_config"), _size(files.weights, "adapter_model")
    if config_size + weights_size > limits.max_bytes:
        raise AdapterTooLarge(
            f"the adapter is {config_size + weights_size} bytes; the limit is {limits.max_bytes}",
            param="adapter_model",
        )
    if config_size > CONFIG_MAX_BYTES:
        raise _config(f"it is {config_size} bytes; at most {CONFIG_MAX_BYTES} are accepted")
    config = _read_config(files.config)
    rank, alpha, modules = _check_config(config, base, max_rank)
    _check_tensors(read_header(files.weights, max_header_bytes=limits.max_header_bytes), base, rank, modules)
    checksum, total = checksum_files(files)
    return ValidatedAdapter(
        files=files, rank=rank, lora_alpha=alpha, target_modules=modules, bytes=total, checksum=checksum
    )


def checksum_frame(name: str, size: int) -> bytes:
    """What precedes each file's bytes in the checksum: its name, NUL, its size as 8 bytes little-endian."""
    return name.encode() + b"\0" + size.to_bytes(8, "little")


def checksum_files(files: AdapterFiles) -> tuple[str, int]:
    """``("sha256:<hex>", bytes)`` over both files, each framed by its name and 8-byte little-endian length,
    read in 1 MiB pieces (design.md: the stored folder's name)."""
    digest = hashlib.sha256()
    total = 0
    for name, path, param in (
        (CONFIG_NAME, files.config, "adapter_config"),
        (WEIGHTS_NAME, files.weights, "adapter_model"),
    ):
        fd = _open(path, param)
        with os.fdopen(fd, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            digest.update(checksum_frame(name, size))
            count = 0
            while chunk := file.read(_CHUNK):
                count += len(chunk)
                digest.update(chunk)
        if count != size:
            raise InvalidAdapter(f"{name} changed while it was read", param=param)
        total += size
    return "sha256:" + digest.hexdigest(), total


def _config(why: str) -> InvalidAdapter:
    return InvalidAdapter(f"{CONFIG_NAME} is refused: {why}", param="adapter_config")


def _open(path: Path, param: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        name = CONFIG_NAME if param == "adapter_config" else WEIGHTS_NAME
        raise InvalidAdapter(f"{name} cannot be read ({exc.strerror})", param=param) from None


def _size(path: Path, param: str) -> int:
    fd = _open(path, param)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _read_config(path: Path) -> dict[str, Any]:
    with os.fdopen(_open(path, "adapter_config"), "rb") as file:
        data = file.read(CONFIG_MAX_BYTES + 1)
    if len(data) > CONFIG_MAX_BYTES:
        raise _config(f"it is larger than {CONFIG_MAX_BYTES} bytes")
    try:
        return loads_object(data)
    except StrictJsonError as exc:
        raise _config(str(exc)) from None


def _shown(config: dict[str, Any], field: str) -> str:
    """A config value as JSON, clipped (``missing`` when absent), for messages."""
    if field not in config:
        return "missing"
    return clip(json.dumps(config[field]), 40)


def _is_empty(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {} or value == ""


def _check_config(config: dict[str, Any], base: BaseModelSpec, max_rank: int) -> tuple[int, float, tuple[str, ...]]:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise _config(f"peft_type is {_shown(config, 'peft_type')}; only 'LORA' adapters are accepted")
    task_type = config.get("task_type")
    if task_type not in (None, "CAUSAL_LM"):
        raise _config(f"task_type is {_shown(config, 'task_type')}; only 'CAUSAL_LM' adapters are accepted")
    for field, why in _UNSUPPORTED.items():
        if not _is_empty(config.get(field)):
            raise _config(why)
    bias = config.get("bias", "none")
    if bias != "none":
        raise _config(f"bias is {_shown(config, 'bias')}; only 'none' is supported by the engine")
    if config.get("use_rslora") not in (None, True, False):
        raise _config("use_rslora is not a boolean")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise _config(f"r (the rank) is {_shown(config, 'r')}; a positive integer is required")
    if rank > max_rank:
        raise _config(f"rank {rank} is above this gateway's maximum {max_rank} (the engine's --max-lora-rank)")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not (math.isfinite(alpha) and alpha > 0):
        raise _config(f"lora_alpha is {_shown(config, 'lora_alpha')}; a positive number is required")
    return rank, float(alpha), _target_modules(config.get("target_modules"), base)


def _module_of(name: str, base: BaseModelSpec, known: dict[str, tuple[int, int]]) -> str:
    """The module a target names: ``q_proj``, or a path peft writes for ``all-linear``
    (``model.layers.3.self_attn.q_proj``)."""
    shown = json.dumps(clip(name, 80))
    path = _MODULE_PATH.fullmatch(name)
    module = path.group("module") if path else name.rpartition(".")[2]
    if module in ("lm_head", "embed_tokens"):
        raise _config(f"target module {shown} is not supported (only the decoder layers' projections)")
    if module not in known:
        raise _config(
            f"target module {shown} is not a linear module of {base.architecture} (any of {', '.join(known)})"
        )
    if path is None and module != name:
        raise _config(f"target module {shown} is not a path in {base.architecture} (model.layers.N.<block>.<module>)")
    if path is not None:
        block = "self_attn" if module in _ATTENTION else "mlp"
        if path.group("block") != block or int(path.group("layer")) >= base.num_hidden_layers:
            raise _config(f"target module {shown} is not a path in {clip(base.model, 80)}")
    return module


def _target_modules(value: Any, base: BaseModelSpec) -> tuple[str, ...]:
    known = base.module_shapes()
    if isinstance(value, str):
        if value == "all-linear":
            return tuple(known)
        if value not in known:
            raise _config(
                f"target_modules is the regular expression {json.dumps(clip(value, 80))}; list the module "
                f"names instead (any of {', '.join(known)})"
            )
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(name, str) for name in value):
        raise _config("target_modules must be a non-empty list of module names")
    wanted = {_module_of(name, base, known) for name in value}
    return tuple(name for name in known if name in wanted)


def _weights(why: str) -> InvalidAdapter:
    return InvalidAdapter(f"{WEIGHTS_NAME} is refused: {why}", param="adapter_model")


def _expected(base: BaseModelSpec, rank: int, modules: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    shapes = base.module_shapes()
    expected: dict[str, tuple[int, int]] = {}
    for layer in range(base.num_hidden_layers):
        for module in modules:
            block = "self_attn" if module in _ATTENTION else "mlp"
            in_features, out_features = shapes[module]
            stem = f"{_PREFIX}{layer}.{block}.{module}"
            expected[f"{stem}.lora_A.weight"] = (rank, in_features)
            expected[f"{stem}.lora_B.weight"] = (out_features, rank)
    return expected


def _unexpected(name: str) -> InvalidAdapter:
    shown = clip(name)
    if "lm_head" in name or "embed_tokens" in name:
        return _weights(f"tensor {shown} is an lm_head/embed_tokens delta; those are not supported")
    if "lora_magnitude_vector" in name:
        return _weights(f"tensor {shown} is a DoRA magnitude; DoRA is not supported")
    if "lora_embedding" in name:
        return _weights(f"tensor {shown} is an embedding LoRA; those are not supported")
    return _weights(f"tensor {shown} is not one the config's target modules and the base model's layers explain")


def _check_tensors(tensors: dict[str, TensorInfo], base: BaseModelSpec, rank: int, modules: tuple[str, ...]) -> None:
    expected = _expected(base, rank, modules)
    for name, (_dtype, shape) in tensors.items():
        want = expected.get(name)
        if want is None:
            raise _unexpected(name)
        if shape != want:
            raise _weights(
                f"tensor {clip(name)} has shape [{', '.join(map(str, shape))}], expected [{want[0]}, {want[1]}]"
            )
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _weights(
            f"tensor {clip(missing[0])} is missing{more}: the config targets {', '.join(modules)} "
            f"in all {base.num_hidden_layers} layers of {clip(base.model, 80)}"
        )
