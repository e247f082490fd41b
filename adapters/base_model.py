"""A base model's architecture, read from its ``config.json``: the shapes a LoRA adapter must match."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.errors import BaseModelUnavailable

__all__ = ["BaseModelSpec", "read_base_model"]


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
        """``(in_features, out_features)`` of each linear module a LoRA adapter may target, per layer."""
        raise NotImplementedError


def read_base_model(folder: Path, model: str) -> BaseModelSpec:
    """Read ``folder/config.json`` (bounded). :class:`BaseModelUnavailable` (param ``base_model``) when it is
    missing, unreadable, lacks a field or names an architecture this gateway does not know."""
    raise BaseModelUnavailable(f"not implemented for {model!r} at {folder}", param="base_model")
