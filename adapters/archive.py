"""Safe unpacking of an uploaded adapter archive (tar, tar.gz or zip) into a scratch folder.

Members are read one by one, never with ``extractall``: only ``adapter_config.json`` and
``adapter_model.safetensors`` are written, under fixed names, into a folder created here inside
``scratch``; the member's own path is only checked (no absolute path, ``..``, backslash, drive letter or
NUL), never used to write. Links, devices, FIFOs and sparse files are refused, as are pickle weights.
Sizes are counted as bytes actually come out of the decompressor, so a header that lies gains nothing, and
a tar stream is cut off once it has yielded more than its members' declared sizes plus a small allowance
for headers (a huge pax header in a gzip bomb stops there).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Protocol

from adapters._strict_json import clip
from adapters.errors import AdapterTooLarge, InvalidAdapter

if TYPE_CHECKING:
    from adapters.validation import UploadLimits

__all__ = ["CONFIG_NAME", "PICKLE_SUFFIXES", "WEIGHTS_NAME", "extract_adapter"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_PARAM = "file"
_CHUNK = 1 << 20
_HEADER_ALLOWANCE = 64 << 10  # per entry: tar header blocks, GNU long names, pax records
_RATIO_FLOOR = 1 << 20  # members up to this size may expand any ratio (a padded JSON): they are harmless
_UNIX = 3  # a zip entry's create_system: its external_attr's high 16 bits are a Unix st_mode
_DRIVE = re.compile(r"^[A-Za-z]:")
# What the standard library's readers raise on damaged input.
_DAMAGED = (
    struct.error,
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    UnicodeError,
    OverflowError,
    LookupError,
)


def _invalid(why: str) -> InvalidAdapter:
    return InvalidAdapter(f"the archive is refused: {why}", param=_PARAM)


def _too_large(why: str) -> AdapterTooLarge:
    return AdapterTooLarge(f"the archive is too large: {why}", param=_PARAM)


def _member_path(name: str, *, is_dir: bool = False) -> PurePosixPath:
    """The member's path, normalized (``./`` dropped), or :class:`InvalidAdapter` if it could land anywhere
    but under the archive's root. A directory may be the root itself (``tar -C dir .`` writes ``./``)."""
    shown = clip(name.replace("\x00", "\\0"), 80)
    if "\x00" in name:
        raise _invalid(f"archive entry '{shown}' has a NUL character in its name")
    if "\\" in name:
        raise _invalid(f"archive entry '{shown}' has a backslash in its name")
    if name.startswith("/") or _DRIVE.match(name):
        raise _invalid(f"archive entry '{shown}' has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _invalid(f"archive entry '{shown}' leaves the archive")
    if not parts and not is_dir:
        raise _invalid(f"archive entry '{shown}' has an empty name")
    return PurePosixPath(*parts)


class _Collector:
    """Checks entries as they come (count, names, sizes) and writes the two wanted files into ``folder``."""

    def __init__(self, folder: Path, limits: UploadLimits) -> None:
        self.folder = folder
        self.limits = limits
        self.entries = 0
        self.declared = 0
        self.written = 0
        self.seen: set[PurePosixPath] = set()
        self.found: dict[str, PurePosixPath] = {}

    def admit(self, name: str, size: int, *, is_dir: bool) -> PurePosixPath | None:
        """Check one entry; the path of a file to write, or None for one to skip."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise _invalid(f"it has more than {self.limits.max_entries} entries")
        path = _member_path(name, is_dir=is_dir)
        if is_dir:
            return None  # directories are never written; only files are checked for duplicates
        if path in self.seen:
            raise _invalid(f"archive entry '{clip(path, 80)}' appears twice")
        self.seen.add(path)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise _invalid(f"'{clip(path, 80)}' is a pickle file; pickle files are not accepted: upload {WEIGHTS_NAME}")
        if size > self.limits.max_bytes:
            raise _too_large(f"entry '{clip(path, 80)}' is {size} bytes; the limit is {self.limits.max_bytes}")
        self.declared += size
        if self.declared > self.limits.max_bytes:
            raise _too_large(f"its entries add up to more than {self.limits.max_bytes} bytes")
        if path.name not in (CONFIG_NAME, WEIGHTS_NAME):
            return None  # README.md and the like: checked, not written
        if len(path.parts) > 2:
            raise _invalid(f"'{clip(path, 80)}' must be at the archive's top or in one top folder")
        if path.name in self.found:
            raise _invalid(f"it holds more than one {path.name}")
        self.found[path.name] = path
        return path

    def write(self, path: PurePosixPath, source: _Readable, *, declared: int, ratio_base: int | None) -> None:
        """Copy ``source`` to ``folder/<fixed name>``, counting bytes as they come: never more than the
        declared size, the byte limit, or (zip) ``max_ratio`` times the compressed size."""
        cap = declared
        if ratio_base is not None:
            cap = min(cap, int(max(ratio_base, 1) * self.limits.max_ratio))
        target = self.folder / path.name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o644)
        count = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_CHUNK):
                count += len(chunk)
                self.written += len(chunk)
                if self.written > self.limits.max_bytes:
                    raise _too_large(f"it unpacks to more than {self.limits.max_bytes} bytes")
                if count > cap:
                    raise _invalid(f"entry '{clip(path, 80)}' expands beyond its declared size or ratio")
                out.write(chunk)
        if count != declared:
            raise _invalid(f"entry '{clip(path, 80)}' holds {count} bytes, its header says {declared}")

    def result(self) -> tuple[Path, Path]:
        config, weights = self.found.get(CONFIG_NAME), self.found.get(WEIGHTS_NAME)
        if config is None or weights is None:
            missing = CONFIG_NAME if config is None else WEIGHTS_NAME
            raise _invalid(f"it has no {missing} (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        if config.parent != weights.parent:
            raise _invalid(f"{CONFIG_NAME} and {WEIGHTS_NAME} are in different folders")
        return self.folder / CONFIG_NAME, self.folder / WEIGHTS_NAME


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Budget:
    """A read-only stream that fails once more than ``allowance`` bytes have been read from it."""

    def __init__(self, inner: _Readable, allowance: int) -> None:
        self.inner = inner
        self.allowance = allowance
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        room = self.allowance - self.consumed
        want = room + 1 if size is None or size < 0 else min(size, room + 1)
        data = self.inner.read(want)
        self.consumed += len(data)
        if self.consumed > self.allowance:
            raise _invalid("its tar stream holds more data than its entries declare")
        return data


def _tar_members(archive: tarfile.TarFile, budget: _Budget) -> Iterator[tarfile.TarInfo]:
    while (member := archive.next()) is not None:
        data = member.size if member.isreg() else 0  # tarfile reads no data for a directory, whatever its size
        budget.allowance += data + tarfile.BLOCKSIZE + _HEADER_ALLOWANCE  # its data, then the next header
        yield member


def _extract_tar(raw: IO[bytes], compressed: bool, collector: _Collector) -> None:
    stream: _Readable = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
    budget = _Budget(stream, _HEADER_ALLOWANCE + tarfile.RECORDSIZE)
    with tarfile.open(fileobj=budget, mode="r|") as archive:  # type: ignore[call-overload]
        for member in _tar_members(archive, budget):
            _member_path(member.name, is_dir=member.isdir())  # a bad name is reported first, whatever the type
            if member.issym() or member.islnk():
                raise _invalid(f"archive entry '{clip(member.name, 80)}' is a link")
            if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
                kind = "a device or FIFO" if member.ischr() or member.isblk() or member.isfifo() else "not a file"
                raise _invalid(f"archive entry '{clip(member.name, 80)}' is {kind}")
            path = collector.admit(member.name, member.size, is_dir=member.isdir())
            if path is None:
                continue
            source = archive.extractfile(member)
            assert source is not None  # a regular file always has a reader
            collector.write(path, source, declared=member.size, ratio_base=None)


def _extract_zip(raw: IO[bytes], collector: _Collector) -> None:
    with zipfile.ZipFile(raw) as archive:
        infos = archive.infolist()
        if len(infos) > collector.limits.max_entries:
            raise _invalid(f"it has more than {collector.limits.max_entries} entries")
        for info in infos:
            name = info.orig_filename
            _member_path(name, is_dir=info.is_dir())
            file_type = stat.S_IFMT(info.external_attr >> 16) if info.create_system == _UNIX else 0
            if stat.S_ISLNK(file_type):
                raise _invalid(f"archive entry '{clip(name, 80)}' is a link")
            if file_type and not (stat.S_ISREG(file_type) or stat.S_ISDIR(file_type)):
                raise _invalid(f"archive entry '{clip(name, 80)}' is a device or FIFO")
            if info.flag_bits & 0x1:
                raise _invalid(f"archive entry '{clip(name, 80)}' is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _invalid(f"archive entry '{clip(name, 80)}' uses a compression other than deflate")
            is_dir = info.is_dir()
            path = collector.admit(name, info.file_size, is_dir=is_dir)
            ratio_base = info.compress_size if info.file_size > _RATIO_FLOOR else None
            if ratio_base is not None and info.file_size > max(ratio_base, 1) * collector.limits.max_ratio:
                raise _invalid(
                    f"archive entry '{clip(name, 80)}' expands more than {collector.limits.max_ratio:g} times"
                )
            if path is None:
                continue
            with archive.open(info) as source:
                collector.write(path, source, declared=info.file_size, ratio_base=ratio_base)


def _kind(raw: IO[bytes]) -> str:
    head = raw.read(512)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    raise _invalid("it is not a .tar.gz, .tar or .zip archive")


def extract_adapter(archive: Path, scratch: Path, limits: UploadLimits) -> tuple[Path, Path]:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` from ``archive`` into a new folder
    inside ``scratch`` and return their paths (config, weights). On any refusal the folder is removed and
    :class:`InvalidAdapter` (or :class:`AdapterTooLarge`), param ``file``, says why."""
    folder = Path(tempfile.mkdtemp(prefix="unpacked-", dir=scratch))
    collector = _Collector(folder, limits)
    try:
        with open(archive, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            if size > limits.max_bytes:
                raise _too_large(f"it is {size} bytes; the limit is {limits.max_bytes}")
            kind = _kind(raw)
            try:
                if kind == "zip":
                    _extract_zip(raw, collector)
                else:
                    _extract_tar(raw, kind == "tar.gz", collector)
            except (InvalidAdapter, AdapterTooLarge):
                raise
            except _DAMAGED as exc:
                raise _invalid(f"it is damaged or not a {kind} archive ({clip(exc, 80)})") from None
        return collector.result()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
