"""A base model's architecture, read from its ``config.json``: the shapes a LoRA adapter must match.

Only the Llama family's layout is known here (separate ``q/k/v/o_proj`` attention and ``gate/up/down_proj``
MLP in every decoder layer); architectures with fused projections (Phi-3's ``qkv_proj``) are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters._strict_json import StrictJsonError, clip, loads_object
from adapters.errors import BaseModelUnavailable

__all__ = ["SUPPORTED_ARCHITECTURES", "BaseModelSpec", "read_base_model"]

CONFIG_MAX_BYTES = 1 << 20
SUPPORTED_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
    }
)
_MAX_DIMENSION = 1 << 24  # far above any real model; keeps arithmetic on hostile configs sane


@dataclass(frozen=True, slots=True)
class BaseModelSpec:
    """What validation needs of a decoder-only base model (the Llama family's projection layout)."""

    model: str
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each linear module a LoRA adapter may target, per layer, in
        peft's usual order (attention, then MLP)."""
        hidden, inter = self.hidden_size, self.intermediate_size
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_key_value_heads * self.head_dim
        return {
            "q_proj": (hidden, q_out),
            "k_proj": (hidden, kv_out),
            "v_proj": (hidden, kv_out),
            "o_proj": (q_out, hidden),
            "gate_proj": (hidden, inter),
            "up_proj": (hidden, inter),
            "down_proj": (inter, hidden),
        }


def _unavailable(model: str, why: str) -> BaseModelUnavailable:
    return BaseModelUnavailable(
        f"base model {clip(model, 80)!r}: {why}; adapters for it cannot be validated here", param="base_model"
    )


def _read_config(folder: Path, model: str) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # operator's folder: symlinks (HF cache) are fine
    except FileNotFoundError:
        raise _unavailable(model, "its config.json is not readable by the gateway (no such file)") from None
    except OSError as exc:
        raise _unavailable(model, f"its config.json is not readable by the gateway ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        data = file.read(CONFIG_MAX_BYTES + 1)
    if len(data) > CONFIG_MAX_BYTES:
        raise _unavailable(model, f"its config.json is larger than {CONFIG_MAX_BYTES} bytes")
    try:
        return loads_object(data)
    except StrictJsonError as exc:
        raise _unavailable(model, f"its config.json is unusable: {exc}") from None


def _positive_int(config: dict[str, Any], field: str, model: str) -> int:
    value = config.get(field)
    if value is None:
        raise _unavailable(model, f"its config.json has no {field}")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX_DIMENSION:
        raise _unavailable(model, f"its config.json's {field} is not a positive integer")
    return value


def _architecture(config: dict[str, Any], model: str) -> str:
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise _unavailable(model, "its config.json names no architectures")
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return str(name)
    known = ", ".join(sorted(SUPPORTED_ARCHITECTURES))
    raise _unavailable(model, f"its architecture {clip(names[0], 80)} is not one adapters are supported for ({known})")


def read_base_model(folder: Path, model: str) -> BaseModelSpec:
    """Read ``folder/config.json`` (at most 1 MiB).
    :class:`BaseModelUnavailable` (param ``base_model``) when it is missing, unreadable, lacks a field or
    names an architecture this gateway does not know. Messages name the model, never the folder."""
    config = _read_config(folder, model)
    architecture = _architecture(config, model)
    hidden = _positive_int(config, "hidden_size", model)
    heads = _positive_int(config, "num_attention_heads", model)
    kv_heads = heads
    if config.get("num_key_value_heads") is not None:
        kv_heads = _positive_int(config, "num_key_value_heads", model)
    if config.get("head_dim") is not None:
        head_dim = _positive_int(config, "head_dim", model)
    elif hidden % heads:
        raise _unavailable(model, "its config.json's hidden_size is not a multiple of num_attention_heads")
    else:
        head_dim = hidden // heads
    if heads % kv_heads:
        raise _unavailable(model, "its config.json's num_attention_heads is not a multiple of num_key_value_heads")
    return BaseModelSpec(
        model=model,
        architecture=architecture,
        hidden_size=hidden,
        intermediate_size=_positive_int(config, "intermediate_size", model),
        num_hidden_layers=_positive_int(config, "num_hidden_layers", model),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=_positive_int(config, "vocab_size", model),
    )
