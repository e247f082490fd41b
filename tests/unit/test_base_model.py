"""adapters.base_model: a base model's config.json read into the shapes LoRA adapters must match."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.base_model import CONFIG_MAX_BYTES, read_base_model
from adapters.errors import BaseModelUnavailable
from tests.data.adapters.crafted import SMOLLM2_CONFIG, TINY_LLAMA, TINY_SPEC

SMOLLM2 = SMOLLM2_CONFIG


def write_config(folder: Path, config: dict[str, Any] | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = config if isinstance(config, bytes) else json.dumps(config).encode()
    (folder / "config.json").write_bytes(data)
    return folder


def refused(folder: Path, model: str = "tiny-llama") -> BaseModelUnavailable:
    with pytest.raises(BaseModelUnavailable) as caught:
        read_base_model(folder, model)
    assert caught.value.param == "base_model"
    assert caught.value.code == "base_model_unavailable"
    assert str(folder) not in caught.value.message  # the server's layout is not the tenant's business
    return caught.value


def test_smollm2_shapes(tmp_path: Path) -> None:
    spec = read_base_model(write_config(tmp_path, SMOLLM2), "smollm2-135m")
    assert (spec.architecture, spec.num_hidden_layers, spec.head_dim, spec.vocab_size) == (
        "LlamaForCausalLM",
        30,
        64,
        49152,
    )
    assert spec.module_shapes() == {
        "q_proj": (576, 576),
        "k_proj": (576, 192),
        "v_proj": (576, 192),
        "o_proj": (576, 576),
        "gate_proj": (576, 1536),
        "up_proj": (576, 1536),
        "down_proj": (1536, 576),
    }


def test_tiny_llama_head_dim_defaults_to_hidden_over_heads(tmp_path: Path) -> None:
    assert "head_dim" not in TINY_LLAMA
    spec = read_base_model(write_config(tmp_path, TINY_LLAMA), "tiny-llama")
    assert spec == TINY_SPEC
    assert spec.module_shapes()["k_proj"] == (64, 32)  # 2 kv heads of 16


def test_explicit_head_dim_and_missing_kv_heads(tmp_path: Path) -> None:
    config = {**TINY_LLAMA, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32, "num_key_value_heads": None}
    spec = read_base_model(write_config(tmp_path, config), "qwen3-tiny")
    assert (spec.head_dim, spec.num_key_value_heads) == (32, 4)
    assert spec.module_shapes()["q_proj"] == (64, 128)
    assert spec.module_shapes()["o_proj"] == (128, 64)


def test_first_known_architecture_wins(tmp_path: Path) -> None:
    config = {**TINY_LLAMA, "architectures": ["SomethingElse", "MistralForCausalLM"]}
    assert read_base_model(write_config(tmp_path, config), "m").architecture == "MistralForCausalLM"


def test_missing_folder(tmp_path: Path) -> None:
    error = refused(tmp_path / "nowhere")
    assert "config.json is not readable" in error.message
    assert "'tiny-llama'" in error.message


def test_folder_without_config(tmp_path: Path) -> None:
    assert "no such file" in refused(tmp_path).message


def test_model_name_is_clipped(tmp_path: Path) -> None:
    error = refused(tmp_path, "m" * 500)
    assert "m" * 81 not in error.message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON array, not an object"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"hidden_size": NaN}', "NaN is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b" " * (CONFIG_MAX_BYTES + 1), "larger than"),
    ],
)
def test_unreadable_config(tmp_path: Path, data: bytes, fragment: str) -> None:
    assert fragment in refused(write_config(tmp_path, data)).message


@pytest.mark.parametrize(
    "field", ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
)
def test_missing_field(tmp_path: Path, field: str) -> None:
    config = {key: value for key, value in TINY_LLAMA.items() if key != field}
    assert f"has no {field}" in refused(write_config(tmp_path, config)).message


@pytest.mark.parametrize("value", [0, -4, True, "64", 6.5, 1 << 40])
def test_bad_dimension(tmp_path: Path, value: Any) -> None:
    config = {**TINY_LLAMA, "hidden_size": value}
    assert "hidden_size is not a positive integer" in refused(write_config(tmp_path, config)).message


def test_hidden_not_a_multiple_of_heads(tmp_path: Path) -> None:
    config = {**TINY_LLAMA, "num_attention_heads": 5}
    assert "not a multiple of num_attention_heads" in refused(write_config(tmp_path, config)).message


def test_heads_not_a_multiple_of_kv_heads(tmp_path: Path) -> None:
    config = {**TINY_LLAMA, "num_key_value_heads": 3}
    assert "not a multiple of num_key_value_heads" in refused(write_config(tmp_path, config)).message


@pytest.mark.parametrize("architectures", [["Phi3ForCausalLM"], ["GPT2LMHeadModel", "BertModel"]])
def test_unknown_architecture(tmp_path: Path, architectures: list[str]) -> None:
    config = {**TINY_LLAMA, "architectures": architectures}
    error = refused(write_config(tmp_path, config))
    assert f"architecture {architectures[0]} is not one adapters are supported for" in error.message
    assert "LlamaForCausalLM" in error.message


@pytest.mark.parametrize("architectures", [None, [], "LlamaForCausalLM", [1]])
def test_no_architectures(tmp_path: Path, architectures: Any) -> None:
    config = {**TINY_LLAMA, "architectures": architectures}
    assert "names no architectures" in refused(write_config(tmp_path, config)).message
