"""A real LoRA adapter for the real-engine suites: the pirate voice, trained on the session's chat model.

Registered by ``tests/conftest.py`` (``pytest_plugins``). ``trained_adapter`` is the folder of a rank-8
LoRA (q, k, v, o projections; 40 epochs at 2e-3 on ``data/adapters/pirate.jsonl``, about 70 s on 2 cores)
made by ``tenantgate adapters train`` in a subprocess the first time, then cached between runs under
``~/.cache/tenantgate/test-adapters/<key>/`` (``TG_TEST_ADAPTER_CACHE`` moves it; ``TG_TEST_TRAIN_THREADS``
sets the training's CPU threads, which are not part of the key). The key is a SHA-256 of
the data file, the training arguments, the peft and torch versions and the base model: its config.json
and where it came from (the prepared model's marker: the GGUF's SHA-256 and the conversion version, which
stay the same while the session's freshly converted folder gets a new mtime every session; without a
marker, the weights' sizes and mtimes). A training writes into a scratch folder beside the cache entry
and renames it into place, so a crash leaves no half entry; a lock file per entry makes a concurrent
session wait for the training under way instead of starting a second one.

Skips cleanly, like the engine fixtures, where the engines extra or peft is missing (and so fails under
``TG_FAIL_ON_SKIP=1``, see ``tests/conftest.py``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapters.training import ADAPTER_FILES, INSTALL_HINT
from tests.realengines import EngineStack, log_tail

PIRATE_DATA = Path(__file__).resolve().parent / "data" / "adapters" / "pirate.jsonl"
# The recipe of ../shared/ENGINE_NOTES.md ("A real LoRA adapter, made here"): every example in one batch.
TRAINING_ARGS = (
    "--rank", "8", "--alpha", "16", "--target-modules", "q_proj,k_proj,v_proj,o_proj",
    "--epochs", "40", "--lr", "2e-3", "--seed", "0", "--max-length", "512", "--dtype", "float32",
)
TRAINING_TIMEOUT_S = 1800.0
PREPARED_MARKER = ".tenantgate-prepared.json"  # enginehost.models.MARKER_FILE
MARKER_KEYS = ("conversion_version", "served_name", "source_size", "source_sha256")


def cache_root() -> Path:
    return Path(os.environ.get("TG_TEST_ADAPTER_CACHE", "~/.cache/tenantgate/test-adapters")).expanduser()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def model_fingerprint(model: Path) -> dict[str, object]:
    """What identifies the base model across sessions (see the module docstring)."""
    fingerprint: dict[str, object] = {"config": hashlib.sha256((model / "config.json").read_bytes()).hexdigest()}
    try:
        marker = json.loads((model / PREPARED_MARKER).read_text())
        fingerprint["prepared"] = {key: marker.get(key) for key in MARKER_KEYS}
    except (OSError, ValueError):
        fingerprint["weights"] = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model.glob("*.safetensors")
        )
    return fingerprint


def cache_key(data: bytes, args: tuple[str, ...], model: Path) -> str:
    recipe = {
        "data": hashlib.sha256(data).hexdigest(),
        "args": list(args),
        "versions": {name: _version(name) for name in ("peft", "torch", "transformers")},
        "model": model_fingerprint(model),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ADAPTER_FILES)


def cached_adapter(
    model: Path, root: Path, data: Path = PIRATE_DATA, args: tuple[str, ...] = TRAINING_ARGS,
    run_args: tuple[str, ...] = (),
) -> Path:
    """The adapter for (data, args, model) from the cache, trained into it first when missing. ``run_args``
    say how to run the training (``--threads``), not what it makes: they are not part of the key."""
    target = root / cache_key(data.read_bytes(), args, model)
    if _complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{target.name}.lock"):  # a concurrent session trains it once; the others wait
        if not _complete(target):
            _train_into(target, model, data, (*args, *run_args))
    return target


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_into(target: Path, model: Path, data: Path, args: tuple[str, ...]) -> None:
    """Train in a scratch folder beside ``target``, then rename the adapter into place."""
    scratch = Path(tempfile.mkdtemp(prefix=".training-", dir=target.parent))
    try:
        log = scratch / "train.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "adapters", "train", "--base-model", str(model),
                 "--data", str(data), "--out", str(scratch / "adapter"), "--no-progress", *args],
                stdout=out, stderr=subprocess.STDOUT, timeout=TRAINING_TIMEOUT_S, check=False,
            )
        if done.returncode != 0 or not _complete(scratch / "adapter"):
            pytest.fail(f"training the test adapter failed (exit {done.returncode})\n{log_tail(log)}")
        shutil.copy(log, target.parent / f"{target.name}.train.log")  # the per-epoch losses, for whoever wonders
        shutil.rmtree(target, ignore_errors=True)  # a half entry (one file) left by hand
        (scratch / "adapter").rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_adapter(engine_stack: EngineStack) -> Path:
    """A folder with adapter_config.json and adapter_model.safetensors: a real pirate-voice LoRA for the
    session's chat model (``engine_stack.chat_model()``); the engines need not be running."""
    if importlib.util.find_spec("peft") is None:
        pytest.skip(f"peft is not installed, so no adapter can be trained: {INSTALL_HINT}")
    threads = os.environ.get("TG_TEST_TRAIN_THREADS")  # 1 trains faster than 2 on a machine busy elsewhere
    return cached_adapter(engine_stack.chat_model(), cache_root(), run_args=("--threads", threads) if threads else ())
