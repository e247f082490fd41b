"""The adapter store: a folder every vLLM replica can read, holding each adapter's two files by checksum.

Layout under ``root``::

    sha256/<hex[:2]>/<hex>/adapter_config.json        the stored adapters, content-addressed
    sha256/<hex[:2]>/<hex>/adapter_model.safetensors
    .incoming/<random>/                                a copy being written; renamed into place when whole
    .scratch/<random>/                                 an upload being unpacked and validated
    .trash/<random>/                                   a folder being removed

A stored folder appears at once, whole (``os.rename`` of a finished, fsynced copy), and disappears at once
(renamed away before it is emptied): a replica never sees half an adapter under a checksum. The same bytes
uploaded twice are one folder: a second ``put`` finds it there and keeps it. Folders are 0755 and files 0644,
whatever the umask, because vLLM runs as another user in Kubernetes. Nothing is written outside ``root``.
Every method does blocking file I/O: call them in a worker thread from async code.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "AdapterStore", "StoredFiles"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_CHECKSUM = re.compile(r"sha256:([0-9a-f]{64})")
_COPY_BYTES = 1024 * 1024
DIR_MODE = 0o755
FILE_MODE = 0o644


class StoredFiles(Protocol):
    """The two files of a validated adapter (``adapters.validation.AdapterFiles``)."""

    @property
    def config(self) -> Path: ...

    @property
    def weights(self) -> Path: ...


def _hex(checksum: str) -> str:
    match = _CHECKSUM.fullmatch(checksum)
    if match is None:
        raise ValueError("a checksum is 'sha256:' and 64 lowercase hex digits")
    return match.group(1)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(folder: Path, mode: int = DIR_MODE) -> None:
    folder.mkdir(exist_ok=True)
    os.chmod(folder, mode)


def _copy(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("xb") as dst:
        _copy_stream(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.chmod(target, FILE_MODE)


def _copy_stream(src: BinaryIO, dst: BinaryIO) -> None:
    while chunk := src.read(_COPY_BYTES):
        dst.write(chunk)


class AdapterStore:
    """The store under ``root``. Creates nothing until something is stored or a scratch folder is asked for."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def folder(self, checksum: str) -> Path:
        """Where the adapter with ``checksum`` is (or would be) stored: the path vLLM is given."""
        digest = _hex(checksum)
        return self.root / "sha256" / digest[:2] / digest

    def has(self, checksum: str) -> bool:
        folder = self.folder(checksum)
        return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()

    def _area(self, name: str, mode: int = DIR_MODE) -> Path:
        _mkdir(self.root)
        area = self.root / name
        _mkdir(area, mode)
        return area

    def put(self, files: StoredFiles, checksum: str) -> Path:
        """Store the two files under ``checksum`` (a copy: ``files`` stay where they are) and return the folder.

        The caller vouches that ``checksum`` is the files' (the validation computed it). If the folder exists,
        it is kept as it is: the same checksum is the same bytes."""
        final = self.folder(checksum)
        if final.is_dir():
            return final
        incoming = self._area(".incoming") / secrets.token_hex(16)
        _mkdir(incoming)
        try:
            _copy(files.config, incoming / CONFIG_NAME)
            _copy(files.weights, incoming / WEIGHTS_NAME)
            _fsync_dir(incoming)
            shard = final.parent
            _mkdir(shard.parent)
            _mkdir(shard)
            try:
                os.rename(incoming, final)
            except OSError:
                if not final.is_dir():  # not "someone stored the same bytes first"
                    raise
            _fsync_dir(shard)
        finally:
            if incoming.exists():
                shutil.rmtree(incoming, ignore_errors=True)
        return final

    def remove(self, checksum: str) -> None:
        """Remove the stored folder of ``checksum``, if any: renamed away first, then emptied."""
        final = self.folder(checksum)
        if not final.exists():
            return
        doomed = self._area(".trash") / secrets.token_hex(16)
        try:
            os.rename(final, doomed)
        except FileNotFoundError:  # removed meanwhile
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def new_scratch(self) -> Path:
        """A fresh private folder under ``root/.scratch`` (same filesystem as the store); the caller removes it
        with :meth:`drop_scratch`."""
        scratch = self._area(".scratch", 0o700) / secrets.token_hex(16)
        scratch.mkdir(mode=0o700)
        return scratch

    def drop_scratch(self, scratch: Path) -> None:
        """Remove a folder :meth:`new_scratch` gave, and only such a folder."""
        if scratch.parent != self.root / ".scratch":
            raise ValueError("not a scratch folder of this store")
        shutil.rmtree(scratch, ignore_errors=True)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A fresh scratch folder, removed with everything in it on exit."""
        folder = self.new_scratch()
        try:
            yield folder
        finally:
            self.drop_scratch(folder)

    def stored_checksums(self) -> set[str]:
        """Every checksum with a folder in the store (for checks and clean-up; reads the whole tree)."""
        found: set[str] = set()
        top = self.root / "sha256"
        if not top.is_dir():
            return found
        for shard in top.iterdir():
            for folder in shard.iterdir():
                if _CHECKSUM.fullmatch("sha256:" + folder.name):
                    found.add("sha256:" + folder.name)
        return found
