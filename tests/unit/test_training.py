"""``adapters.training`` and ``adapters.upload``, and the ``tenantgate adapters`` commands.

Training runs for real (peft on torch) on a tiny random Llama with a byte-level BPE tokenizer built here
from the pirate data, so it takes seconds and needs no downloaded model; the real adapter on the real
chat model is ``tests/trained_adapter.py``'s. Uploads are checked at the HTTP boundary with
``httpx.MockTransport`` (the request the command builds), not against a stand-in gateway.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.training import (
    ADAPTER_FILES,
    INSTALL_HINT,
    ChatExample,
    ChatMessage,
    TrainingError,
    TrainingOptions,
    encode_example,
    load_chats,
    parse_example,
    train_adapter,
)
from adapters.upload import UploadError, adapters_url, upload_adapter
from gateway.cli import main

PIRATE = Path(__file__).resolve().parents[1] / "data" / "adapters" / "pirate.jsonl"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FAST = TrainingOptions(rank=4, alpha=8, target_modules=("q_proj", "v_proj"), epochs=8, lr=5e-2, seed=7, threads=1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random Llama with a ChatML template: a stand-in base model that trains in seconds."""
    pytest.importorskip("peft", reason=INSTALL_HINT)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [m["content"] for line in PIRATE.read_text().splitlines() for m in json.loads(line)["messages"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([*texts, "user assistant system"], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<|im_end|>", chat_template=CHATML
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id, bos_token_id=None,
        initializer_range=0.3,  # big enough weights that a rank-4 LoRA on q and v moves the loss in 8 steps
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _chat(*messages: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]})


# --- data ----------------------------------------------------------------------------------------------


def test_the_pirate_data_is_valid_and_in_voice() -> None:
    examples = load_chats(PIRATE)
    assert 6 <= len(examples) <= 12
    for example in examples:
        answer = example.messages[-1]
        assert answer.role == "assistant" and answer.learn
        assert answer.content.startswith("Arr") and "matey" in answer.content and " be " in answer.content


def test_weight_zero_keeps_an_assistant_turn_out_of_learning() -> None:
    line = json.dumps({"messages": [
        {"role": "system", "content": "Talk like a pirate."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "weight": 0}, {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Arr!"},
    ]}).encode()
    example = parse_example(line, 4)
    assert [m.learn for m in example.messages] == [False, False, False, False, True]
    assert example.line == 4


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"messages": [', "line 2: not valid JSON"),
        ('["not", "an", "object"]', 'line 2: expected an object with a non-empty "messages" list'),
        ('{"messages": []}', 'line 2: expected an object with a non-empty "messages" list'),
        (_chat(("user", "Hi"), ("user", "Hello?")), "line 2: no assistant message to learn from"),
        (_chat(("tool", "{}"), ("assistant", "Arr")), "line 2, message 1: unknown role 'tool'"),
        ('{"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]}',
         "line 2, message 1: content must be a string"),
        ('{"messages": ["hi"]}', "line 2, message 1: expected an object with role and content"),
        ('{"messages": [{"role": "user", "content": "a", "weight": 0}, {"role": "assistant", "content": "b"}]}',
         "line 2, message 1: weight must be 0 or 1"),
        (_chat(("assistant", "Arr"), ("user", "Hi")), "line 2: the conversation starts with the assistant"),
    ],
)
def test_a_bad_line_is_named_with_what_is_wrong(tmp_path: Path, line: str, expected: str) -> None:
    data = _write(tmp_path / "chats.jsonl", _chat(("user", "Hi"), ("assistant", "Arr")), line)
    with pytest.raises(TrainingError) as caught:
        load_chats(data)
    assert expected in caught.value.message


def test_every_bad_line_is_reported_at_once_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    good = _chat(("user", "Hi"), ("assistant", "Arr"))
    data = _write(tmp_path / "chats.jsonl", good, "", "{oops", good, _chat(("user", "only a question")), "   ")
    with pytest.raises(TrainingError) as caught:
        load_chats(data)
    assert "line 3: not valid JSON" in caught.value.message
    assert "line 5: no assistant message" in caught.value.message
    assert "line 1" not in caught.value.message and "line 4" not in caught.value.message


def test_a_long_unknown_role_is_clipped(tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as caught:
        parse_example(_chat(("x" * 500, "Hi"), ("assistant", "Arr")).encode(), 1)
    assert len(caught.value.message) < 200


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.jsonl", "no such file"),
        (lambda d: d, "is a folder"),
        (lambda d: _write(d / "empty.jsonl", "", ""), "no examples"),
    ],
)
def test_a_missing_or_empty_data_file_is_refused(tmp_path: Path, make: Any, expected: str) -> None:
    with pytest.raises(TrainingError, match=expected):
        load_chats(make(tmp_path))


def test_bad_options_are_refused_before_anything_loads(tmp_path: Path) -> None:
    options = TrainingOptions(rank=0, epochs=0, lr=-1.0, dtype="float8", target_modules=())
    with pytest.raises(TrainingError) as caught:
        train_adapter("no-such-model", PIRATE, tmp_path / "out", options)
    for flag in ("--rank", "--epochs", "--lr", "--dtype", "--target-modules"):
        assert flag in caught.value.message
    assert not (tmp_path / "out").exists()


# --- tokens and labels ---------------------------------------------------------------------------------


def test_only_the_learned_assistant_turns_carry_labels(tiny_model: Path) -> None:
    tokenizer = _tokenizer(tiny_model)
    example = ChatExample(line=1, messages=(
        ChatMessage("system", "Talk like a pirate.", learn=False), ChatMessage("user", "Hi", learn=False),
        ChatMessage("assistant", "Hello there.", learn=False), ChatMessage("user", "Sky?", learn=False),
        ChatMessage("assistant", "Arr, the sky be blue, matey!", learn=True),
    ))
    encoded = encode_example(tokenizer, example, max_length=512)
    assert len(encoded.labels) == len(encoded.input_ids)
    learned = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != -100]
    assert learned == [label for label in encoded.labels if label != -100]
    assert tokenizer.decode(learned) == "Arr, the sky be blue, matey!<|im_end|>\n"
    assert tokenizer.decode(encoded.input_ids).endswith(tokenizer.decode(learned))


def test_an_example_longer_than_max_length_names_its_line(tiny_model: Path) -> None:
    example = parse_example(_chat(("user", "Hi " * 50), ("assistant", "Arr")).encode(), 9)
    with pytest.raises(TrainingError, match=r"line 9: \d+ tokens, more than --max-length 16"):
        encode_example(_tokenizer(tiny_model), example, max_length=16)


# --- training ------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_saves_exactly_the_adapter(tiny_model: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "adapter"
    losses = train_adapter(tiny_model, PIRATE, out, FAST, log=lines.append, progress_bar=False)
    assert len(losses) == FAST.epochs
    assert losses[-1] < 0.85 * losses[0], losses
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == [
        f"epoch {i}/{FAST.epochs}" for i in range(1, FAST.epochs + 1)
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(ADAPTER_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # the scratch folder is gone
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert config["lora_alpha"] == 8 and isinstance(config["lora_alpha"], int)
    assert all((out / name).stat().st_mode & 0o777 == 0o644 for name in ADAPTER_FILES)
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["bias"] == "none" and not config.get("modules_to_save")

    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", framework="pt") as weights:
        names = sorted(weights.keys())
        shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in names}
    assert len(names) == 2 * 2 * 2  # layers x modules x (A, B)
    assert all(n.startswith("base_model.model.model.layers.") and (".lora_A." in n or ".lora_B." in n)
               for n in names)
    assert shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == (4, 32)
    assert shapes["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] == (16, 4)  # 2 kv heads x 8


def test_the_same_seed_trains_the_same_adapter(tiny_model: Path, tmp_path: Path) -> None:
    options = TrainingOptions(rank=2, target_modules=("q_proj",), epochs=2, lr=1e-2, seed=3, batch_size=3, threads=1)
    first = train_adapter(tiny_model, PIRATE, tmp_path / "a", options, log=lambda _: None, progress_bar=False)
    second = train_adapter(tiny_model, PIRATE, tmp_path / "b", options, log=lambda _: None, progress_bar=False)
    assert first == second
    assert (tmp_path / "a" / ADAPTER_FILES[1]).read_bytes() == (tmp_path / "b" / ADAPTER_FILES[1]).read_bytes()


def test_gradient_checkpointing_trains_the_same_adapter(tiny_model: Path, tmp_path: Path) -> None:
    options = TrainingOptions(rank=2, target_modules=("q_proj", "v_proj"), epochs=2, lr=1e-2, threads=1)
    plain = train_adapter(tiny_model, PIRATE, tmp_path / "a", options, log=lambda _: None, progress_bar=False)
    options = dataclasses.replace(options, gradient_checkpointing=True)
    again = train_adapter(tiny_model, PIRATE, tmp_path / "b", options, log=lambda _: None, progress_bar=False)
    assert again == pytest.approx(plain, rel=1e-4)
    assert plain[1] < plain[0]


def test_a_target_module_the_base_model_lacks_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    options = TrainingOptions(target_modules=("q_proj", "x_proj"), epochs=1, threads=1)
    expected = r"--target-modules: the base model has no x_proj \(its linear layers: .*q_proj"
    with pytest.raises(TrainingError, match=expected):
        train_adapter(tiny_model, PIRATE, tmp_path / "out", options, log=lambda _: None, progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_an_out_folder_with_other_files_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="holds other files"):
        train_adapter("no-such-model", PIRATE, out, FAST)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_base_model_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("peft", reason=INSTALL_HINT)
    with pytest.raises(TrainingError, match=r"--base-model .*: cannot load its tokenizer"):
        train_adapter(tmp_path / "nothing-here", PIRATE, tmp_path / "out", FAST, progress_bar=False)


def test_the_module_imports_without_the_training_packages() -> None:
    probe = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'peft'): sys.modules[name] = None\n"
        "import adapters.training, adapters.upload, gateway.cli\n"
        "try:\n"
        "    adapters.training._training_stack()\n"
        "except adapters.training.TrainingError as exc:\n"
        "    print(exc.message)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "pip install 'tenantgate[train]'" in out


# --- upload --------------------------------------------------------------------------------------------


def _parts(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """Form field -> (file name, bytes) of a multipart request."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.read())
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts[str(name)] = (part.get_filename(), payload)
    return parts


def _adapter_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return folder


ADAPTER_OBJECT = {"id": "adapter-0123456789abcdef01234567", "object": "adapter", "name": "pirate", "status": "ready"}


def test_the_upload_sends_the_two_files_and_the_fields(tmp_path: Path) -> None:
    folder = _adapter_folder(tmp_path)
    seen: list[httpx.Request] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=ADAPTER_OBJECT)

    answer = upload_adapter(folder, gateway="https://gw.example/v1/", api_key="sk-secret", name="pirate",
                            base_model="smollm2-135m-instruct", transport=httpx.MockTransport(gateway))
    assert answer == ADAPTER_OBJECT
    (request,) = seen
    assert request.method == "POST" and str(request.url) == "https://gw.example/v1/adapters"
    assert request.headers["authorization"] == "Bearer sk-secret"
    parts = _parts(request)
    assert parts == {
        "name": (None, b"pirate"),
        "base_model": (None, b"smollm2-135m-instruct"),
        "adapter_config": ("adapter_config.json", (folder / "adapter_config.json").read_bytes()),
        "adapter_model": ("adapter_model.safetensors", (folder / "adapter_model.safetensors").read_bytes()),
    }


def test_an_archive_goes_up_as_file(tmp_path: Path) -> None:
    archive = tmp_path / "pirate.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really")
    seen: list[httpx.Request] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=ADAPTER_OBJECT)

    upload_adapter(archive, gateway="http://gw:8000", api_key="k", name="pirate", base_model="m",
                   transport=httpx.MockTransport(gateway))
    assert _parts(seen[0])["file"] == ("pirate.tar.gz", archive.read_bytes())


def test_a_refusal_carries_the_gateway_s_message_and_never_the_key(tmp_path: Path) -> None:
    def gateway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {
            "message": "rank 64 is above this gateway's maximum 16", "type": "invalid_request_error",
            "param": "adapter_config", "code": "invalid_adapter"}})

    with pytest.raises(UploadError) as caught:
        upload_adapter(_adapter_folder(tmp_path), gateway="http://gw", api_key="sk-secret", name="p",
                       base_model="m", transport=httpx.MockTransport(gateway))
    assert caught.value.status == 400
    assert caught.value.message == (
        "the gateway refused the adapter (400 invalid_adapter: rank 64 is above this gateway's maximum 16)"
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "nothing", "no such folder or file"),
        (lambda d: _write(d / "notes.txt", "x"), "expected an adapter folder or a .tar.gz or .zip archive"),
        (lambda d: d, "no adapter_config.json and no adapter_model.safetensors in this folder"),
    ],
)
def test_a_bad_upload_path_is_refused_before_sending(tmp_path: Path, make: Any, expected: str) -> None:
    def gateway(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with pytest.raises(UploadError, match=expected):
        upload_adapter(make(tmp_path), gateway="http://gw", api_key="k", name="p", base_model="m",
                       transport=httpx.MockTransport(gateway))


def test_the_gateway_url_is_checked() -> None:
    assert adapters_url("http://gw:8000") == "http://gw:8000/v1/adapters"
    assert adapters_url("https://gw/v1/") == "https://gw/v1/adapters"
    with pytest.raises(UploadError, match="expected an http"):
        adapters_url("gw:8000")


# --- the commands --------------------------------------------------------------------------------------


def test_train_help_lists_its_options() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "adapters", "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--base-model", "--data", "--out", "--rank", "--alpha", "--target-modules", "--epochs", "--lr",
                 "--batch-size", "--seed", "--max-length", "--upload", "--gateway", "--api-key-env", "--name",
                 "--served-base-model"):
        assert flag in out


def test_a_bad_data_path_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["adapters", "train", "--base-model", "x", "--data", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"tenantgate: --data {tmp_path / 'nope.jsonl'}: no such file\n"


def test_upload_without_the_key_variable_stops_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TG_TEST_NO_SUCH_KEY", raising=False)
    code = main(["adapters", "train", "--base-model", "x", "--data", str(PIRATE), "--out", str(tmp_path / "out"),
                 "--upload", "--name", "pirate", "--served-base-model", "m", "--api-key-env", "TG_TEST_NO_SUCH_KEY"])
    assert code == 2
    assert "TG_TEST_NO_SUCH_KEY is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = main(["adapters", "train", "--base-model", "x", "--data", str(PIRATE), "--out", str(tmp_path / "out"),
                 "--upload"])
    assert code == 2
    assert "--upload needs --name and --served-base-model" in capsys.readouterr().err


def test_upload_to_an_unreachable_gateway_is_a_clear_error_without_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("TG_TEST_KEY", "sk-very-secret")
    code = main(["adapters", "upload", str(_adapter_folder(tmp_path)), "--name", "pirate", "--base-model", "m",
                 "--gateway", f"http://127.0.0.1:{port}", "--api-key-env", "TG_TEST_KEY"])
    captured = capsys.readouterr()
    assert code == 2
    assert f"cannot reach the gateway at http://127.0.0.1:{port}/v1/adapters" in captured.err
    assert "sk-very-secret" not in captured.err + captured.out
    assert os.environ["TG_TEST_KEY"] == "sk-very-secret"


# --- the cached test adapter (tests/trained_adapter.py) --------------------------------------------------


def _prepared_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / ".tenantgate-prepared.json").write_text(json.dumps({
        "conversion_version": 1, "served_name": "m", "source_size": 7, "source_sha256": "ab" * 32,
        "source_file": "/somewhere", "source_mtime_ns": 1, "prepared_at": "today",
    }))
    return folder


def test_the_cache_key_follows_the_recipe_not_the_session_s_conversion(tmp_path: Path) -> None:
    from tests.trained_adapter import TRAINING_ARGS, cache_key

    model = _prepared_model(tmp_path / "model")
    key = cache_key(b"data", TRAINING_ARGS, model)
    assert key == cache_key(b"data", TRAINING_ARGS, model)
    os.utime(model / "model.safetensors", ns=(1, 1))  # the next session converts it again: a new mtime
    marker = json.loads((model / ".tenantgate-prepared.json").read_text())
    (model / ".tenantgate-prepared.json").write_text(json.dumps({**marker, "prepared_at": "tomorrow"}))
    assert cache_key(b"data", TRAINING_ARGS, model) == key
    assert cache_key(b"other data", TRAINING_ARGS, model) != key
    assert cache_key(b"data", (*TRAINING_ARGS, "--epochs", "41"), model) != key
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    assert cache_key(b"data", TRAINING_ARGS, model) != key


def test_without_a_marker_the_weights_size_and_mtime_count(tmp_path: Path) -> None:
    from tests.trained_adapter import TRAINING_ARGS, cache_key

    model = _prepared_model(tmp_path / "model")
    (model / ".tenantgate-prepared.json").unlink()
    key = cache_key(b"data", TRAINING_ARGS, model)
    os.utime(model / "model.safetensors", ns=(1, 1))
    assert cache_key(b"data", TRAINING_ARGS, model) != key


def test_a_cached_adapter_is_reused_without_training(tmp_path: Path) -> None:
    from tests.trained_adapter import TRAINING_ARGS, cache_key, cached_adapter

    model = _prepared_model(tmp_path / "model")  # not loadable: a training would fail the test
    entry = tmp_path / "cache" / cache_key(PIRATE.read_bytes(), TRAINING_ARGS, model)
    entry.mkdir(parents=True)
    for name in ADAPTER_FILES:
        (entry / name).write_bytes(b"cached")
    assert cached_adapter(model, tmp_path / "cache") == entry
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [entry.name]


def test_a_failed_training_fails_with_its_log_and_leaves_no_entry(tmp_path: Path) -> None:
    from tests.trained_adapter import cached_adapter

    model = _prepared_model(tmp_path / "model")
    bad = _write(tmp_path / "bad.jsonl", "{oops")
    with pytest.raises(pytest.fail.Exception, match="line 1: not valid JSON"):
        cached_adapter(model, tmp_path / "cache", data=bad)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []
