"""Crafted LoRA adapters for a tiny fake Llama, and archives of them, for the validation unit tests.

Nothing here is committed as a binary: every test builds what it needs in ``tmp_path``. The safetensors
bytes are written by hand (8-byte little-endian header length, JSON header, zero bytes as data), so a test
can bend any part of the format.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adapters.base_model import BaseModelSpec

TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
}
TINY_SPEC = BaseModelSpec(
    model="tiny-llama",
    architecture="LlamaForCausalLM",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=256,
)
# SmolLM2-135M-Instruct's config.json as our engines prepare it (the fields that matter, verbatim).
SMOLLM2_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "head_dim": 64,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1}
# What peft 0.21 writes for LoraConfig(r=8, lora_alpha=16, target_modules=[q, k, v, o], task_type=CAUSAL_LM).
PEFT_CONFIG: dict[str, Any] = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
    "base_model_name_or_path": None, "bias": "none", "corda_config": None, "ensure_weight_tying": False,
    "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": False,
    "init_lora_weights": True, "kasa_config": None, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 16, "lora_bias": False, "lora_dropout": 0.0,
    "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
    "monteclora_config": None, "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 8,
    "rank_pattern": {}, "revision": None, "target_modules": ["v_proj", "q_proj", "k_proj", "o_proj"],
    "target_parameters": None, "task_type": "CAUSAL_LM", "trainable_token_indices": None, "use_bdlora": None,
    "use_dora": False, "use_qalora": False, "use_rslora": False, "velora_config": None,
}  # fmt: skip


def safetensors_bytes(
    tensors: Mapping[str, tuple[str, list[int]]], *, metadata: Mapping[str, str] | None = None, pad: int = 8
) -> bytes:
    """A valid safetensors file of zero-filled tensors ``{name: (dtype, shape)}``, in the given order."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = ITEMSIZE[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return raw_safetensors(json.dumps(header).encode(), offset, pad=pad)


def raw_safetensors(header: bytes, data_size: int, *, pad: int = 8) -> bytes:
    """Length prefix + ``header`` (space-padded to ``pad``) + ``data_size`` zero bytes."""
    header += b" " * (-len(header) % pad)
    return struct.pack("<Q", len(header)) + header + bytes(data_size)


def lora_tensors(
    *,
    rank: int = 8,
    modules: Iterable[str] = ATTENTION,
    layers: int = 2,
    dtype: str = "F32",
    spec: BaseModelSpec = TINY_SPEC,
) -> dict[str, tuple[str, list[int]]]:
    """peft's tensor names and shapes for ``modules`` in ``layers`` decoder layers."""
    shapes = spec.module_shapes()
    tensors: dict[str, tuple[str, list[int]]] = {}
    for layer in range(layers):
        for module in modules:
            block = "self_attn" if module in ATTENTION else "mlp"
            stem = f"base_model.model.model.layers.{layer}.{block}.{module}"
            in_features, out_features = shapes[module]
            tensors[f"{stem}.lora_A.weight"] = (dtype, [rank, in_features])
            tensors[f"{stem}.lora_B.weight"] = (dtype, [out_features, rank])
    return tensors


def adapter_config(**changes: Any) -> dict[str, Any]:
    """A small peft LoRA config (rank 8, attention modules); ``changes`` override (None values stay)."""
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": list(ATTENTION),
        "bias": "none",
        "lora_dropout": 0.0,
    }
    config.update(changes)
    return config


def adapter_members(
    config: Mapping[str, Any] | bytes | None = None, tensors: Mapping[str, tuple[str, list[int]]] | bytes | None = None
) -> dict[str, bytes]:
    """``{"adapter_config.json": ..., "adapter_model.safetensors": ...}`` of a valid adapter, or of the given
    config / tensors (raw bytes pass through)."""
    config_bytes = config if isinstance(config, bytes) else json.dumps(config or adapter_config()).encode()
    weights = tensors if isinstance(tensors, bytes) else safetensors_bytes(tensors or lora_tensors())
    return {"adapter_config.json": config_bytes, "adapter_model.safetensors": weights}


def write_files(folder: Path, members: Mapping[str, bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in members.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    return paths


def tar_bytes(
    members: Mapping[str, bytes] | Iterable[tarfile.TarInfo | tuple[str, bytes]],
    *,
    compression: str = "gz",
    tar_format: int = tarfile.PAX_FORMAT,
) -> bytes:
    """A tar (``compression`` "gz" or "") of regular files; TarInfo items go in as they are (links, devices)."""
    items = members.items() if isinstance(members, Mapping) else members
    out = io.BytesIO()
    mode: Any = f"w:{compression}"  # "w:gz" or "w:"
    with tarfile.open(fileobj=out, mode=mode, format=tar_format) as tar:
        for item in items:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
                continue
            name, data = item
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_bytes(members: Mapping[str, bytes] | Iterable[tuple[str | zipfile.ZipInfo, bytes]], *, level: int = 6) -> bytes:
    items = members.items() if isinstance(members, Mapping) else members
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, data in items:
            archive.writestr(name, data)
    return out.getvalue()


def tree(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted (what a test compares before and after)."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))
