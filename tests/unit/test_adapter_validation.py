"""adapters.validation.validate_adapter: peft LoRA config and safetensors weights against a base model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from adapters.base_model import read_base_model
from adapters.errors import AdapterTooLarge, InvalidAdapter
from adapters.validation import AdapterFiles, UploadLimits, ValidatedAdapter, validate_adapter
from tests.data.adapters.crafted import (
    ATTENTION,
    PEFT_CONFIG,
    SMOLLM2_CONFIG,
    TINY_SPEC,
    adapter_config,
    adapter_members,
    lora_tensors,
    raw_safetensors,
    safetensors_bytes,
    tree,
    write_files,
)

MLP = ("gate_proj", "up_proj", "down_proj")
ALL = ATTENTION + MLP


def files_of(folder: Path, config: dict[str, Any] | bytes | None = None, tensors: Any = None) -> AdapterFiles:
    paths = write_files(folder, adapter_members(config, tensors))
    return AdapterFiles(config=paths["adapter_config.json"], weights=paths["adapter_model.safetensors"])


def validate(files: AdapterFiles, *, max_rank: int = 16, limits: UploadLimits | None = None) -> ValidatedAdapter:
    return validate_adapter(files, TINY_SPEC, max_rank=max_rank, limits=limits or UploadLimits())


def refused(
    tmp_path: Path,
    fragment: str,
    *,
    param: str,
    config: dict[str, Any] | bytes | None = None,
    tensors: Any = None,
    max_rank: int = 16,
    limits: UploadLimits | None = None,
    error: type[Exception] = InvalidAdapter,
) -> str:
    files = files_of(tmp_path / "scratch", config, tensors)
    before = tree(tmp_path)
    with pytest.raises(error) as caught:
        validate(files, max_rank=max_rank, limits=limits)
    message: str = caught.value.message  # type: ignore[attr-defined]
    assert caught.value.param == param  # type: ignore[attr-defined]
    assert fragment in message, message
    assert tree(tmp_path) == before  # validation writes nothing, anywhere
    return message


def expected_checksum(config: bytes, weights: bytes) -> str:
    framed = (
        b"adapter_config.json\0" + len(config).to_bytes(8, "little") + config
        + b"adapter_model.safetensors\0" + len(weights).to_bytes(8, "little") + weights
    )  # fmt: skip
    return "sha256:" + hashlib.sha256(framed).hexdigest()


# --- valid adapters ---


def test_valid_adapter(tmp_path: Path) -> None:
    files = files_of(tmp_path)
    before = tree(tmp_path)
    result = validate(files)
    config, weights = files.config.read_bytes(), files.weights.read_bytes()
    assert result == ValidatedAdapter(
        files=files,
        rank=8,
        lora_alpha=16.0,
        target_modules=ATTENTION,
        bytes=len(config) + len(weights),
        checksum=expected_checksum(config, weights),
    )
    assert tree(tmp_path) == before


def test_same_bytes_same_checksum_one_byte_changed_another(tmp_path: Path) -> None:
    first = validate(files_of(tmp_path / "a")).checksum
    assert validate(files_of(tmp_path / "b")).checksum == first
    files = files_of(tmp_path / "c")
    data = bytearray(files.weights.read_bytes())
    data[-1] ^= 0x01  # one byte of tensor data
    files.weights.write_bytes(bytes(data))
    assert validate(files).checksum != first


def test_checksum_frames_each_file(tmp_path: Path) -> None:
    """Moving a byte from the end of the config to the start of the weights changes the checksum."""
    files = files_of(tmp_path)
    config, weights = files.config.read_bytes(), files.weights.read_bytes()
    assert validate(files).checksum != "sha256:" + hashlib.sha256(config + weights).hexdigest()


def test_peft_written_config_with_every_field(tmp_path: Path) -> None:
    result = validate(files_of(tmp_path, PEFT_CONFIG))
    assert (result.rank, result.lora_alpha, result.target_modules) == (8, 16.0, ATTENTION)


def test_all_modules_in_canonical_order_mixed_dtypes(tmp_path: Path) -> None:
    tensors = {**lora_tensors(modules=MLP, dtype="BF16"), **lora_tensors(modules=ATTENTION, dtype="F16")}
    config = adapter_config(target_modules=["down_proj", *ATTENTION, "gate_proj", "up_proj"], r=4)
    tensors = {**lora_tensors(rank=4, modules=MLP, dtype="BF16"), **lora_tensors(rank=4, dtype="F16")}
    result = validate(files_of(tmp_path, config, tensors))
    assert (result.rank, result.target_modules) == (4, ALL)


def test_all_linear_expands_to_the_base_models_modules(tmp_path: Path) -> None:
    config = adapter_config(target_modules="all-linear")
    result = validate(files_of(tmp_path, config, lora_tensors(modules=ALL)))
    assert result.target_modules == ALL


def test_module_paths_as_peft_writes_them_for_all_linear(tmp_path: Path) -> None:
    """peft saves ``all-linear`` as the matched modules' paths, every layer's, in no order."""
    paths = [f"model.layers.{i}.{'self_attn' if m in ATTENTION else 'mlp'}.{m}" for i in (1, 0) for m in ALL]
    result = validate(files_of(tmp_path, adapter_config(target_modules=paths), lora_tensors(modules=ALL)))
    assert result.target_modules == ALL


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("model.layers.2.self_attn.q_proj", 'target module "model.layers.2.self_attn.q_proj" is not a path in tiny'),
        ("model.layers.0.mlp.q_proj", "is not a path in tiny-llama"),
        ("model.layers.0.self_attn.qkv_proj", "is not a linear module of LlamaForCausalLM"),
        ("vision.q_proj", 'target module "vision.q_proj" is not a path in LlamaForCausalLM'),
        ("model.embed_tokens", "is not supported (only the decoder layers' projections)"),
    ],
)
def test_refused_module_paths(tmp_path: Path, target: str, fragment: str) -> None:
    config = adapter_config(target_modules=["q_proj", target])
    refused(tmp_path, fragment, param="adapter_config", config=config)


def test_single_module_name_as_a_string(tmp_path: Path) -> None:
    config = adapter_config(target_modules="q_proj", task_type=None, use_rslora=True, lora_alpha=0.5)
    result = validate(files_of(tmp_path, config, lora_tensors(modules=["q_proj"])))
    assert (result.target_modules, result.lora_alpha) == (("q_proj",), 0.5)


def test_rank_at_the_maximum(tmp_path: Path) -> None:
    config = adapter_config(r=16)
    assert validate(files_of(tmp_path, config, lora_tensors(rank=16))).rank == 16


def test_smollm2_shaped_adapter(tmp_path: Path) -> None:
    """The real base's dimensions: what TRAIN's adapter (r=8 on q/k/v/o, 30 layers) must pass."""
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    spec = read_base_model(base_dir, "smollm2-135m")
    files = files_of(tmp_path / "adapter", PEFT_CONFIG, lora_tensors(layers=30, spec=spec, dtype="F32"))
    result = validate_adapter(files, spec, max_rank=16, limits=UploadLimits())
    assert result.bytes > 3_500_000  # about the 3.7 MB peft writes for this config
    with pytest.raises(InvalidAdapter, match=r"has shape \[8, 64\], expected \[8, 576\]"):
        validate_adapter(files_of(tmp_path / "tiny", PEFT_CONFIG), spec, max_rank=16, limits=UploadLimits())


# --- the config ---


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"peft_type": None}, "peft_type is null; only 'LORA'"),
        ({"peft_type": "IA3"}, 'peft_type is "IA3"'),
        ({"peft_type": "lora"}, 'peft_type is "lora"'),
        ({"task_type": "SEQ_CLS"}, 'task_type is "SEQ_CLS"'),
        ({"r": 0}, "r (the rank) is 0"),
        ({"r": "8"}, 'r (the rank) is "8"'),
        ({"r": True}, "r (the rank) is true"),
        ({"r": 8.0}, "r (the rank) is 8.0"),
        ({"r": None}, "r (the rank) is null"),
        ({"r": 64}, "rank 64 is above this gateway's maximum 16 (the engine's --max-lora-rank)"),
        ({"lora_alpha": 0}, "lora_alpha is 0; a positive number"),
        ({"lora_alpha": -1.5}, "lora_alpha is -1.5"),
        ({"lora_alpha": "16"}, 'lora_alpha is "16"'),
        ({"lora_alpha": False}, "lora_alpha is false"),
        ({"lora_alpha": None}, "lora_alpha is null"),
        ({"target_modules": ".*proj"}, 'target_modules is the regular expression ".*proj"; list the module names'),
        ({"target_modules": []}, "target_modules must be a non-empty list"),
        ({"target_modules": None}, "target_modules must be a non-empty list"),
        ({"target_modules": ["q_proj", 3]}, "target_modules must be a non-empty list"),
        ({"target_modules": {"q_proj": 1}}, "target_modules must be a non-empty list"),
        ({"target_modules": ["q_proj", "qkv_proj"]}, 'target module "qkv_proj" is not a linear module of Llama'),
        ({"target_modules": ["lm_head"]}, 'target module "lm_head" is not supported'),
        ({"target_modules": ["embed_tokens"]}, 'target module "embed_tokens" is not supported'),
        ({"bias": "all"}, "bias is \"all\"; only 'none'"),
        ({"bias": "lora_only"}, 'bias is "lora_only"'),
        ({"use_rslora": "yes"}, "use_rslora is not a boolean"),
        ({"use_dora": True}, "DoRA (use_dora) is not supported"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"layers_to_transform": [0]}, "layers_to_transform is not supported"),
        ({"layers_to_transform": 0}, "layers_to_transform is not supported"),
        ({"layers_pattern": "layers"}, "layers_pattern is not supported"),
        ({"rank_pattern": {"q_proj": 4}}, "rank_pattern (per-module ranks) is not supported"),
        ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern (per-module alphas) is not supported"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out is not supported"),
        ({"lora_bias": True}, "lora_bias is not supported"),
        ({"layer_replication": [[0, 2]]}, "layer_replication is not supported"),
        ({"target_parameters": ["x"]}, "target_parameters is not supported"),
        ({"trainable_token_indices": [1, 2]}, "trainable_token_indices"),
        ({"exclude_modules": ["q_proj"]}, "exclude_modules is not supported"),
        ({"alora_invocation_tokens": [1]}, "activated LoRA"),
        ({"use_qalora": True}, "QALoRA"),
        ({"use_bdlora": {"x": 1}}, "use_bdlora"),
    ],
)
def test_refused_config(tmp_path: Path, changes: dict[str, Any], fragment: str) -> None:
    message = refused(tmp_path, fragment, param="adapter_config", config=adapter_config(**changes))
    assert message.startswith("adapter_config.json is refused: ")


def test_missing_peft_type(tmp_path: Path) -> None:
    config = {key: value for key, value in adapter_config().items() if key != "peft_type"}
    refused(tmp_path, "peft_type is missing", param="adapter_config", config=config)


def test_rank_limit_is_the_callers(tmp_path: Path) -> None:
    refused(tmp_path, "rank 8 is above this gateway's maximum 4", param="adapter_config", max_rank=4)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'["LORA"]', "JSON array, not an object"),
        (b'{"r": 8, "r": 64}', "duplicate key 'r'"),
        (b'{"r": Infinity}', "Infinity is not JSON"),
        (b'{"r": 8}\x00', "NUL byte"),
        (b'{"r": ' + b"9" * 5000 + b"}", "not usable JSON"),
        (b" " * ((1 << 20) + 1), "at most 1048576 are accepted"),
    ],
)
def test_unreadable_config(tmp_path: Path, data: bytes, fragment: str) -> None:
    refused(tmp_path, fragment, param="adapter_config", config=data)


def test_user_strings_are_clipped(tmp_path: Path) -> None:
    message = refused(
        tmp_path, "is not a linear module", param="adapter_config", config=adapter_config(target_modules=["x" * 9000])
    )
    assert len(message) < 400


# --- the weights ---


def test_wrong_lora_a_shape(tmp_path: Path) -> None:
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"] = ("F32", [8, 32])
    refused(
        tmp_path,
        "tensor base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight has shape [8, 32], expected [8, 64]",
        param="adapter_model",
        tensors=tensors,
    )


def test_wrong_lora_b_shape(tmp_path: Path) -> None:
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] = ("F32", [64, 8])
    refused(
        tmp_path, "v_proj.lora_B.weight has shape [64, 8], expected [32, 8]", param="adapter_model", tensors=tensors
    )


def test_weights_of_another_rank_than_the_config(tmp_path: Path) -> None:
    refused(tmp_path, "has shape [4, 64], expected [8, 64]", param="adapter_model", tensors=lora_tensors(rank=4))


def test_missing_lora_b(tmp_path: Path) -> None:
    tensors = lora_tensors()
    del tensors["base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"]
    refused(
        tmp_path,
        "tensor base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight is missing: the config targets "
        "q_proj, k_proj, v_proj, o_proj in all 2 layers",
        param="adapter_model",
        tensors=tensors,
    )


def test_module_in_config_without_weights(tmp_path: Path) -> None:
    config = adapter_config(target_modules=[*ATTENTION, "up_proj"])
    refused(tmp_path, "mlp.up_proj.lora_A.weight is missing (and 3 more)", param="adapter_model", config=config)


def test_fewer_layers_than_the_base(tmp_path: Path) -> None:
    refused(
        tmp_path,
        "layers.1.self_attn.q_proj.lora_A.weight is missing",
        param="adapter_model",
        tensors=lora_tensors(layers=1),
    )


def test_more_layers_than_the_base(tmp_path: Path) -> None:
    refused(
        tmp_path,
        "tensor base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight is not one",
        param="adapter_model",
        tensors=lora_tensors(layers=3),
    )


def test_weights_for_a_module_not_in_the_config(tmp_path: Path) -> None:
    tensors = lora_tensors(modules=[*ATTENTION, "gate_proj"])
    refused(
        tmp_path,
        "mlp.gate_proj.lora_A.weight is not one the config's target modules",
        param="adapter_model",
        tensors=tensors,
    )


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("base_model.model.lm_head.weight", "lm_head/embed_tokens delta; those are not supported"),
        ("base_model.model.model.embed_tokens.weight", "lm_head/embed_tokens delta"),
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "DoRA magnitude"),
        ("base_model.model.model.embed_tokens.lora_embedding_A", "lm_head/embed_tokens delta"),
        ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", "is not one the config"),
        ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", "is not one the config"),
    ],
)
def test_extra_tensor(tmp_path: Path, name: str, fragment: str) -> None:
    tensors = {**lora_tensors(), name: ("F32", [4, 4])}
    refused(tmp_path, fragment, param="adapter_model", tensors=tensors)


def test_f64_weights(tmp_path: Path) -> None:
    refused(
        tmp_path,
        "has dtype F64; adapters must be F16, BF16 or F32",
        param="adapter_model",
        tensors=lora_tensors(dtype="F64"),
    )


def test_damaged_safetensors(tmp_path: Path) -> None:
    weights = safetensors_bytes(lora_tensors())[:-1]
    refused(tmp_path, "is not a valid safetensors file", param="adapter_model", tensors=weights)


def test_header_above_the_limit(tmp_path: Path) -> None:
    refused(tmp_path, "above the limit of 512 bytes", param="adapter_model", limits=UploadLimits(max_header_bytes=512))


def test_empty_weights(tmp_path: Path) -> None:
    refused(tmp_path, "is missing", param="adapter_model", tensors=raw_safetensors(b"{}", 0))


def test_too_large(tmp_path: Path) -> None:
    message = refused(
        tmp_path,
        "the limit is 10000",
        param="adapter_model",
        limits=UploadLimits(max_bytes=10_000),
        error=AdapterTooLarge,
    )
    assert "the adapter is " in message


def test_symlinked_files_are_refused(tmp_path: Path) -> None:
    files = files_of(tmp_path / "real")
    link = tmp_path / "adapter_model.safetensors"
    os.symlink(files.weights, link)
    with pytest.raises(InvalidAdapter, match="cannot be read") as caught:
        validate(AdapterFiles(config=files.config, weights=link))
    assert caught.value.param == "adapter_model"


def test_missing_config_file(tmp_path: Path) -> None:
    files = files_of(tmp_path)
    files.config.unlink()
    with pytest.raises(InvalidAdapter, match=r"adapter_config\.json cannot be read") as caught:
        validate(files)
    assert caught.value.param == "adapter_config"
