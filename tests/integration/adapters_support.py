"""Small crafted LoRA adapters for a tiny Llama, archives of them, and a gateway whose store is a temp folder.

The adapters are peft's layout (``adapter_config.json`` and ``adapter_model.safetensors`` with
``base_model.model.model.layers.N.<block>.<module>.lora_A/B.weight`` tensors), a few KB each, written by hand:
the safetensors header is JSON after its 8-byte length, the data float32 values from a seeded generator.
"""

from __future__ import annotations

import io
import json
import random
import struct
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
}

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def write_base_model(folder: Path, config: Mapping[str, Any] = TINY_LLAMA) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def module_shapes(config: Mapping[str, Any] = TINY_LLAMA) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each Llama projection."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    return {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def safetensors_bytes(tensors: Mapping[str, tuple[list[int], bytes]], dtype: str = "F32") -> bytes:
    header: dict[str, Any] = {}
    offset = 0
    for name, (shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(data for _, data in tensors.values())


@dataclass(frozen=True)
class Adapter:
    config: bytes
    weights: bytes

    def members(self) -> dict[str, bytes]:
        return {"adapter_config.json": self.config, "adapter_model.safetensors": self.weights}


def make_adapter(
    *, rank: int = 8, modules: tuple[str, ...] = ATTENTION, seed: int = 0, layers: int | None = None,
    base: Mapping[str, Any] = TINY_LLAMA, shape_of: Mapping[str, tuple[int, int]] | None = None,
    config_extra: Mapping[str, Any] | None = None,
) -> Adapter:
    """A LoRA adapter of ``rank`` on ``modules`` of every layer; ``shape_of`` overrides a module's (in, out)."""
    rng = random.Random(seed)
    shapes = {**module_shapes(base), **(shape_of or {})}
    tensors: dict[str, tuple[list[int], bytes]] = {}
    for layer in range(base["num_hidden_layers"] if layers is None else layers):
        for module in modules:
            block = "self_attn" if module in ATTENTION else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            in_f, out_f = shapes[module]
            for part, shape in (("lora_A", [rank, in_f]), ("lora_B", [out_f, rank])):
                count = shape[0] * shape[1]
                data = struct.pack(f"<{count}f", *(rng.uniform(-0.01, 0.01) for _ in range(count)))
                tensors[f"{prefix}.{part}.weight"] = (shape, data)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": list(modules), "lora_dropout": 0.0, "bias": "none", "base_model_name_or_path": "tiny",
        **(config_extra or {}),
    }
    return Adapter(json.dumps(config).encode(), safetensors_bytes(tensors))


def tar_gz(members: Mapping[str, bytes], *, symlink: tuple[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tar.addfile(info)
    return out.getvalue()


def zip_bytes(members: Mapping[str, bytes], *, file_type: bool = True) -> bytes:
    """A zip; ``file_type``: entries say they are regular files, as Info-ZIP's zip writes them (Python's
    ``writestr`` with a plain name says nothing of the type)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if not file_type:
                zf.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o100644 << 16  # a regular file, as Info-ZIP's zip writes it
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return out.getvalue()


async def upload(
    http: httpx.AsyncClient, name: str, base_model: str, *, archive: bytes | None = None,
    adapter: Adapter | None = None, archive_name: str = "adapter.tar.gz", extra: Mapping[str, Any] | None = None,
) -> httpx.Response:
    files: dict[str, Any] = {}
    if archive is not None:
        files["file"] = (archive_name, archive, "application/octet-stream")
    if adapter is not None:
        files["adapter_config"] = ("adapter_config.json", adapter.config, "application/json")
        files["adapter_model"] = ("adapter_model.safetensors", adapter.weights, "application/octet-stream")
    data = {"name": name, "base_model": base_model, **(extra or {})}
    return await http.post("/v1/adapters", data=data, files=files or None)


def stored_folders(root: Path) -> list[str]:
    """The checksum folders in the store (``sha256/ab/abcd...``), sorted."""
    top = root / "sha256"
    if not top.is_dir():
        return []
    return sorted(p.name for shard in top.iterdir() for p in shard.iterdir())


def leftovers(root: Path) -> list[str]:
    """Anything under the work areas (.incoming, .scratch, .trash) that is still there."""
    return sorted(
        str(p.relative_to(root)) for area in (".incoming", ".scratch", ".trash") if (root / area).is_dir()
        for p in (root / area).iterdir()
    )
