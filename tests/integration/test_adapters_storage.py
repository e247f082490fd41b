"""The adapter store on a real filesystem: content-addressed folders, whole or absent, readable by another user,
and nothing written outside its root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from adapters.storage import CONFIG_NAME, WEIGHTS_NAME, AdapterStore
from adapters.validation import AdapterFiles

CHECKSUM = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def _files(folder: Path, config: bytes = b'{"r": 8}', weights: bytes = b"weights") -> AdapterFiles:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "c.json").write_bytes(config)
    (folder / "w.st").write_bytes(weights)
    return AdapterFiles(config=folder / "c.json", weights=folder / "w.st")


def _everything(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_put_stores_a_copy_under_the_checksum_readable_by_all(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    files = _files(tmp_path / "upload")
    old_umask = os.umask(0o077)  # a strict umask must not make the store unreadable to the engines' user
    try:
        folder = store.put(files, CHECKSUM)
    finally:
        os.umask(old_umask)
    assert folder == tmp_path / "store" / "sha256" / "ab" / ("ab" * 32) == store.folder(CHECKSUM)
    assert (folder / CONFIG_NAME).read_bytes() == b'{"r": 8}'
    assert (folder / WEIGHTS_NAME).read_bytes() == b"weights"
    assert files.config.exists() and files.weights.exists()  # a copy: the caller's files stay
    for path in (folder, folder.parent, folder.parent.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in (folder / CONFIG_NAME, folder / WEIGHTS_NAME):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert store.has(CHECKSUM) and not store.has(OTHER)
    assert store.stored_checksums() == {CHECKSUM}
    assert list((tmp_path / "store" / ".incoming").iterdir()) == []


def test_a_second_put_of_a_checksum_keeps_the_first_copy(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    store.put(_files(tmp_path / "a"), CHECKSUM)
    store.put(_files(tmp_path / "b", weights=b"other bytes"), CHECKSUM)
    assert (store.folder(CHECKSUM) / WEIGHTS_NAME).read_bytes() == b"weights"
    assert list((tmp_path / "store" / ".incoming").iterdir()) == []


def test_a_failed_put_leaves_no_folder(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    files = _files(tmp_path / "a")
    files.weights.unlink()
    with pytest.raises(FileNotFoundError):
        store.put(files, CHECKSUM)
    assert not store.folder(CHECKSUM).exists()
    assert list((tmp_path / "store" / ".incoming").iterdir()) == []


def test_remove_takes_the_folder_away_whole(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    store.put(_files(tmp_path / "a"), CHECKSUM)
    store.put(_files(tmp_path / "b"), OTHER)
    store.remove(CHECKSUM)
    store.remove(CHECKSUM)  # gone already: nothing to do
    assert not store.folder(CHECKSUM).exists() and store.has(OTHER)
    assert list((tmp_path / "store" / ".trash").iterdir()) == []


def test_scratch_folders_are_private_and_removed(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    with store.scratch() as scratch:
        assert scratch.parent == tmp_path / "store" / ".scratch"
        assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
        (scratch / "deep").mkdir()
        (scratch / "deep" / "f").write_bytes(b"x")
    assert not scratch.exists()
    with pytest.raises(ValueError, match="not a scratch folder"):
        store.drop_scratch(tmp_path)
    assert tmp_path.exists()


def test_nothing_is_created_until_needed_and_nothing_outside_the_root(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store")
    assert not (tmp_path / "store").exists()  # a gateway that never takes an adapter writes nothing
    files = _files(tmp_path / "upload")
    before = [p for p in _everything(tmp_path) if not p.startswith("store")]
    store.put(files, CHECKSUM)
    with store.scratch():
        pass
    store.remove(CHECKSUM)
    assert [p for p in _everything(tmp_path) if not p.startswith("store")] == before


@pytest.mark.parametrize("bad", ["ab" * 32, "sha256:" + "AB" * 32, "sha256:../../etc", "sha256:" + "a" * 63])
def test_only_well_formed_checksums_name_a_folder(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="checksum"):
        AdapterStore(tmp_path).folder(bad)
