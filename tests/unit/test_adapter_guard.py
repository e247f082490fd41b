"""The listing hook of generation replicas (gateway.engines.adapter_guard) and the identity adapter it loads:
LoRA support found by loading the identity adapter, failures kept out of rotation, placement told what each
replica lists. The engine's LoRA API is a small in-memory fake; the identity files are real."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from adapters.base_model import read_base_model
from adapters.identity import identity_adapter
from adapters.lora_api import LoraAlreadyLoaded, LoraApiError, LoraEngineError, LoraUnsupported
from adapters.validation import AdapterFiles, checksum_files
from gateway.engines.adapter_guard import AdapterGuard, base_model_folder
from gateway.engines.models import ModelCard
from gateway.engines.pool import ReplicaNotReadyError
from gateway.engines.replica import Replica

LLAMA: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
}


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    return folder


class FakeLora:
    def __init__(self, error: LoraApiError | None = None) -> None:
        self.error = error
        self.loads: list[tuple[str, str]] = []

    async def load(self, replica: Replica, engine_name: str, path: str) -> None:
        self.loads.append((engine_name, path))
        if self.error is not None:
            raise self.error

    async def unload(self, replica: Replica, engine_name: str) -> None:
        raise AssertionError("the guard never unloads")


class Observer:
    def __init__(self) -> None:
        self.seen: list[set[str]] = []
        self.pinned: set[str] = set()

    def observe(self, replica: Replica, listed: set[str]) -> None:
        self.seen.append(listed)

    def pin(self, engine_name: str) -> None:
        self.pinned.add(engine_name)


def cards(root: Path, *extra: ModelCard) -> dict[str, ModelCard]:
    base = ModelCard(id="base", root=str(root))
    return {card.id: card for card in (base, *extra)}


def test_the_identity_adapter_is_all_zero_and_named_by_its_bytes(base_dir: Path) -> None:
    spec = read_base_model(base_dir, "base")
    one, two = identity_adapter(spec), identity_adapter(spec)
    assert one == two  # the same bytes on every gateway replica
    assert one.engine_name.startswith("tg-identity-") and one.engine_name[12:] in one.checksum
    (length,) = struct.unpack("<Q", one.weights[:8])
    header = json.loads(one.weights[8 : 8 + length])
    assert len(header) == 2 * 2  # two layers, A and B each
    assert header["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]["shape"] == [64, 8]
    assert set(one.weights[8 + length :]) == {0}  # every weight is zero
    config = json.loads(one.config)
    assert config["peft_type"] == "LORA" and config["target_modules"] == ["q_proj"]
    other = dict(LLAMA, hidden_size=128)
    (base_dir / "config.json").write_text(json.dumps(other))
    assert identity_adapter(read_base_model(base_dir, "base")).engine_name != one.engine_name


async def test_a_replica_that_takes_the_identity_adapter_takes_adapters(base_dir: Path, tmp_path: Path) -> None:
    lora, observer = FakeLora(), Observer()
    guard = AdapterGuard(lora, tmp_path / "identity", {}, observer)
    replica = Replica("http://e:1", "generate")
    listed = await guard(replica, cards(base_dir))
    identity = guard.identity_for("base")
    assert identity is not None and replica.lora is True
    assert lora.loads == [(identity, lora.loads[0][1])]
    folder = Path(lora.loads[0][1])
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    assert oct(folder.stat().st_mode & 0o777) == "0o755"  # noqa: ASYNC240  # a test's look at the result
    files = AdapterFiles(folder / "adapter_config.json", folder / "adapter_model.safetensors")
    assert folder.name in checksum_files(files)[0]  # named by the store's checksum of the files it wrote
    assert listed[identity].parent == "base"  # listed as vLLM would list it
    assert observer.seen == [{identity}] and observer.pinned == {identity}
    # Listed already (the next check): not loaded again.
    await guard(replica, listed)
    assert len(lora.loads) == 1


async def test_already_loaded_by_another_gateway_is_success(base_dir: Path, tmp_path: Path) -> None:
    guard = AdapterGuard(FakeLora(LoraAlreadyLoaded("has already been loaded")), tmp_path / "i", {})
    replica = Replica("http://e:1", "generate")
    await guard(replica, cards(base_dir))
    assert replica.lora is True


async def test_an_engine_without_runtime_lora_is_marked_and_asked_again_later(base_dir: Path, tmp_path: Path) -> None:
    lora = FakeLora(LoraUnsupported("no runtime LoRA"))
    observer = Observer()
    guard = AdapterGuard(lora, tmp_path / "i", {}, observer)
    replica = Replica("http://e:1", "generate")
    listed = await guard(replica, cards(base_dir))
    assert replica.lora is False and guard.identity_for("base") not in listed
    assert observer.seen == []  # placement never sees a replica that takes no adapters
    lora.error = None  # restarted with LoRA on
    await guard(replica, listed)
    assert replica.lora is True


async def test_an_identity_load_that_fails_keeps_the_replica_out_of_rotation(base_dir: Path, tmp_path: Path) -> None:
    guard = AdapterGuard(FakeLora(LoraEngineError("HTTP 500")), tmp_path / "i", {})
    with pytest.raises(ReplicaNotReadyError, match=r"identity adapter of base.*HTTP 500"):
        await guard(Replica("http://e:1", "generate"), cards(base_dir))


async def test_a_base_model_whose_config_is_not_readable_gets_no_identity(tmp_path: Path) -> None:
    lora = FakeLora()
    guard = AdapterGuard(lora, tmp_path / "i", {})
    replica = Replica("http://e:1", "generate")
    await guard(replica, {"base": ModelCard(id="base", root="/nonexistent/model")})
    assert lora.loads == [] and replica.lora is None and guard.identity_for("base") is None


def test_the_configured_folder_wins_over_the_engines_root(base_dir: Path, tmp_path: Path) -> None:
    card = ModelCard(id="base", root=str(tmp_path / "elsewhere"))
    assert base_model_folder(card, {}) is None
    assert base_model_folder(card, {"base": str(base_dir)}) == base_dir
    assert base_model_folder(ModelCard(id="base", root=str(base_dir)), {}) == base_dir
    assert base_model_folder(ModelCard(id="base", root="relative/path"), {}) is None
