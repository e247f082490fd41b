"""adapters.validation.unpack_archive: only the two adapter files come out, only into scratch; every
hostile archive is refused with nothing left behind."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base_model import read_base_model
from adapters.errors import AdapterTooLarge, InvalidAdapter
from adapters.validation import AdapterFiles, UploadLimits, unpack_archive, validate_adapter
from tests.data.adapters.crafted import (
    SMOLLM2_CONFIG,
    TINY_SPEC,
    adapter_config,
    adapter_members,
    lora_tensors,
    tar_bytes,
    tree,
    zip_bytes,
)

MEMBERS = adapter_members()
CONFIG, WEIGHTS = MEMBERS["adapter_config.json"], MEMBERS["adapter_model.safetensors"]


@pytest.fixture
def area(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(upload file path, scratch folder) inside tmp_path; afterwards nothing may exist outside scratch but
    the upload and, for a success, one unpacked folder."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    yield tmp_path / "upload", scratch
    outside = [p for p in tree(tmp_path) if not p.startswith("scratch") and p != "upload"]
    assert outside == []


def unpack(area: tuple[Path, Path], data: bytes, limits: UploadLimits | None = None) -> AdapterFiles:
    upload, scratch = area
    upload.write_bytes(data)
    return unpack_archive(upload, scratch, limits or UploadLimits())


def refused(
    area: tuple[Path, Path],
    data: bytes,
    fragment: str,
    *,
    limits: UploadLimits | None = None,
    error: type[InvalidAdapter | AdapterTooLarge] = InvalidAdapter,
) -> str:
    before = tree(area[1])
    with pytest.raises(error) as caught:
        unpack(area, data, limits)
    assert caught.value.param == "file"
    assert fragment in caught.value.message, caught.value.message
    assert tree(area[1]) == before  # the half-unpacked folder is gone too
    return caught.value.message


def assert_unpacked(files: AdapterFiles, scratch: Path) -> None:
    assert files.config.read_bytes() == CONFIG
    assert files.weights.read_bytes() == WEIGHTS
    assert files.config.parent == files.weights.parent
    assert files.config.parent.parent == scratch
    assert sorted(p.name for p in files.config.parent.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (files.weights.stat().st_mode & 0o777) == 0o644


# --- accepted ---


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(tar_bytes(MEMBERS), id="tar.gz"),
        pytest.param(tar_bytes(MEMBERS, compression=""), id="tar"),
        pytest.param(tar_bytes(MEMBERS, tar_format=tarfile.GNU_FORMAT), id="gnu-tar.gz"),
        pytest.param(tar_bytes(MEMBERS, tar_format=tarfile.USTAR_FORMAT, compression=""), id="ustar"),
        pytest.param(zip_bytes(MEMBERS), id="zip"),
        pytest.param(zip_bytes(MEMBERS, level=0), id="zip-low"),
    ],
)
def test_accepted_formats(area: tuple[Path, Path], data: bytes) -> None:
    files = unpack(area, data)
    assert_unpacked(files, area[1])
    result = validate_adapter(files, TINY_SPEC, max_rank=16, limits=UploadLimits())
    assert result.rank == 8


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_real_sized_adapter(area: tuple[Path, Path], kind: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """SmolLM2-135M's shapes, rank 16 on every module, 30 layers: about 20 MB, far past any header allowance.
    (The zip stores its members: zero-filled weights would deflate past the ratio limit, real ones do not.)"""
    base = tmp_path_factory.mktemp("base")
    (base / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    spec = read_base_model(base, "smollm2-135m")
    tensors = lora_tensors(rank=16, modules=list(spec.module_shapes()), layers=30, spec=spec)
    members = adapter_members(adapter_config(r=16, target_modules="all-linear"), tensors)
    data = (
        zip_bytes(members, level=0)
        if kind == "zip"
        else tar_bytes(members, compression="gz" if kind == "tar.gz" else "")
    )
    files = unpack(area, data)
    assert files.weights.read_bytes() == members["adapter_model.safetensors"]
    result = validate_adapter(files, spec, max_rank=16, limits=UploadLimits())
    assert result.bytes > 19_000_000


def test_one_top_folder_readme_and_directories(area: tuple[Path, Path]) -> None:
    folder = tarfile.TarInfo("my-adapter")
    folder.type = tarfile.DIRTYPE
    members: list[tarfile.TarInfo | tuple[str, bytes]] = [
        folder,
        ("my-adapter/README.md", b"# my adapter\n"),
        ("./my-adapter/adapter_config.json", CONFIG),
        ("my-adapter/adapter_model.safetensors", WEIGHTS),
        ("my-adapter/tokenizer.json", b"{}"),
    ]
    assert_unpacked(unpack(area, tar_bytes(members)), area[1])


def test_tar_of_a_folders_contents(area: tuple[Path, Path]) -> None:
    """What `tar czf adapter.tgz -C out .` writes: './' first, then './adapter_config.json', ..."""
    root = tarfile.TarInfo(".")
    root.type = tarfile.DIRTYPE
    members: list[tarfile.TarInfo | tuple[str, bytes]] = [root, *((f"./{n}", d) for n, d in MEMBERS.items())]
    assert_unpacked(unpack(area, tar_bytes(members)), area[1])


def test_zip_with_a_top_folder_and_directory_entries(area: tuple[Path, Path]) -> None:
    members = [("out/", b""), ("out/adapter_config.json", CONFIG), ("out/adapter_model.safetensors", WEIGHTS)]
    assert_unpacked(unpack(area, zip_bytes(members)), area[1])


def test_gzip_detected_by_content_not_name(area: tuple[Path, Path]) -> None:
    upload, scratch = area
    upload = upload.with_suffix(".zip")  # named .zip, is a tar.gz
    upload.write_bytes(tar_bytes(MEMBERS))
    assert_unpacked(unpack_archive(upload, scratch, UploadLimits()), scratch)
    upload.unlink()
    area[0].write_bytes(b"")  # the fixture expects only 'upload' outside scratch


# --- paths ---


def tar_with(name: str, data: bytes = b"x") -> bytes:
    return tar_bytes([(name, data), *MEMBERS.items()])


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../evil", "archive entry '../evil' leaves the archive"),
        ("a/../../evil", "leaves the archive"),
        ("/abs", "archive entry '/abs' has an absolute path"),
        ("/etc/cron.d/x", "has an absolute path"),
        ("C:/windows/x", "has an absolute path"),
        ("..\\evil", "has a backslash in its name"),
        ("dir\\adapter_config.json", "has a backslash"),
        ("x" * 120 + "\x00/../b", "has a NUL character in its name"),  # a pax path record can hold NUL
        (".", "has an empty name"),
    ],
)
def test_tar_bad_paths(area: tuple[Path, Path], name: str, fragment: str) -> None:
    refused(area, tar_with(name), fragment)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../evil", "leaves the archive"),
        ("/abs", "has an absolute path"),
        ("..\\..\\evil", "has a backslash in its name"),
        ("D:\\evil", "has a backslash"),
    ],
)
def test_zip_bad_paths(area: tuple[Path, Path], name: str, fragment: str) -> None:
    refused(area, zip_bytes([(name, b"x"), *MEMBERS.items()]), fragment)


def test_zip_name_with_nul(area: tuple[Path, Path]) -> None:
    """zipfile cuts a name at NUL ('README.md\\0../x' would read as 'README.md'); the raw name is checked."""
    data = zip_bytes([("README.mdQ../../x", b"x"), *MEMBERS.items()]).replace(b"README.mdQ", b"README.md\x00")
    refused(area, data, "has a NUL character in its name")


def test_names_are_clipped(area: tuple[Path, Path]) -> None:
    message = refused(area, tar_with("../" + "x" * 5000), "leaves the archive")
    assert len(message) < 300


# --- entry types ---


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        (
            special("adapter_config.json", tarfile.SYMTYPE, "/etc/passwd"),
            "archive entry 'adapter_config.json' is a link",
        ),
        (special("link", tarfile.SYMTYPE, "../../outside"), "is a link"),
        (special("adapter_model.safetensors", tarfile.LNKTYPE, "/etc/shadow"), "is a link"),
        (special("dev", tarfile.CHRTYPE), "archive entry 'dev' is a device or FIFO"),
        (special("disk", tarfile.BLKTYPE), "is a device or FIFO"),
        (special("pipe", tarfile.FIFOTYPE), "is a device or FIFO"),
        (special("cont", tarfile.CONTTYPE), "is not a file"),
    ],
)
def test_tar_special_entries(area: tuple[Path, Path], info: tarfile.TarInfo, fragment: str) -> None:
    refused(area, tar_bytes([info, *MEMBERS.items()]), fragment)


def test_tar_special_entry_after_the_files(area: tuple[Path, Path]) -> None:
    refused(area, tar_bytes([*MEMBERS.items(), special("z", tarfile.SYMTYPE, "/")]), "is a link")


def test_tar_sparse_file(area: tuple[Path, Path]) -> None:
    info = special("adapter_model.safetensors", tarfile.GNUTYPE_SPARSE)
    data = tar_bytes([("adapter_config.json", CONFIG), info], compression="", tar_format=tarfile.GNU_FORMAT)
    refused(area, data, "is not a file")


def zip_entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


@pytest.mark.parametrize(
    ("mode", "fragment"), [(0o120777, "is a link"), (0o020644, "is a device or FIFO"), (0o010644, "device or FIFO")]
)
def test_zip_special_entries(area: tuple[Path, Path], mode: int, fragment: str) -> None:
    refused(
        area,
        zip_bytes([(zip_entry("adapter_model.safetensors", mode), b"/etc/passwd"), ("adapter_config.json", CONFIG)]),
        fragment,
    )


def test_zip_encrypted_entry(area: tuple[Path, Path]) -> None:
    data = bytearray(zip_bytes(MEMBERS))
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + flag_offset] |= 0x01
            start += 4
    refused(area, bytes(data), "is encrypted")


def test_zip_other_compression(area: tuple[Path, Path]) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_BZIP2) as archive:
        for name, data in MEMBERS.items():
            archive.writestr(name, data)
    refused(area, out.getvalue(), "uses a compression other than deflate")


# --- what the files are ---


@pytest.mark.parametrize("name", ["adapter_model.bin", "x/pytorch_model.PT", "a.pth", "b.pkl", "c.pickle", "d.ckpt"])
def test_pickle_refused_even_with_safetensors(area: tuple[Path, Path], name: str) -> None:
    message = refused(area, tar_with(name), "pickle files are not accepted: upload adapter_model.safetensors")
    assert name in message
    refused(area, zip_bytes([*MEMBERS.items(), (name, b"\x80\x04.")]), "pickle files are not accepted")


def test_missing_weights(area: tuple[Path, Path]) -> None:
    refused(area, tar_bytes({"adapter_config.json": CONFIG, "README.md": b""}), "it has no adapter_model.safetensors")


def test_missing_config(area: tuple[Path, Path]) -> None:
    refused(area, zip_bytes({"adapter_model.safetensors": WEIGHTS}), "it has no adapter_config.json")


def test_empty_zip(area: tuple[Path, Path]) -> None:
    refused(area, zip_bytes({}), "it has no adapter_config.json")


def test_files_too_deep(area: tuple[Path, Path]) -> None:
    members = {f"a/b/{name}": data for name, data in MEMBERS.items()}
    refused(area, tar_bytes(members), "'a/b/adapter_config.json' must be at the archive's top or in one top folder")


def test_files_in_different_folders(area: tuple[Path, Path]) -> None:
    members = {"a/adapter_config.json": CONFIG, "b/adapter_model.safetensors": WEIGHTS}
    refused(area, zip_bytes(members), "are in different folders")


def test_two_configs(area: tuple[Path, Path]) -> None:
    refused(area, tar_bytes([*MEMBERS.items(), ("b/adapter_config.json", CONFIG)]), "more than one adapter_config.json")


def test_duplicate_tar_entry(area: tuple[Path, Path]) -> None:
    members = [*MEMBERS.items(), ("./adapter_config.json", b"{}")]
    refused(area, tar_bytes(members), "archive entry 'adapter_config.json' appears twice")


def test_duplicate_zip_entry(area: tuple[Path, Path]) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = zip_bytes([*MEMBERS.items(), ("adapter_model.safetensors", b"other")])
    refused(area, data, "'adapter_model.safetensors' appears twice")


@pytest.mark.parametrize("data", [b"", b"hello, world", b"\x7fELF\x02\x01", b"Rar!\x1a\x07\x00" + bytes(600)])
def test_not_an_archive(area: tuple[Path, Path], data: bytes) -> None:
    refused(area, data, "it is not a .tar.gz, .tar or .zip archive")


# --- sizes and counts ---


def test_too_many_tar_entries(area: tuple[Path, Path]) -> None:
    members = [(f"f{i}.txt", b"") for i in range(10_000)]
    refused(area, tar_bytes([*MEMBERS.items(), *members]), "it has more than 16 entries")


def test_too_many_zip_entries(area: tuple[Path, Path]) -> None:
    members = [(f"f{i}.txt", b"") for i in range(10_000)]
    refused(area, zip_bytes([*MEMBERS.items(), *members], level=0), "it has more than 16 entries")


def test_entry_limit_is_the_callers(area: tuple[Path, Path]) -> None:
    refused(area, tar_with("README.md"), "more than 2 entries", limits=UploadLimits(max_entries=2))


def test_archive_larger_than_the_limit(area: tuple[Path, Path]) -> None:
    data = tar_bytes(MEMBERS)
    refused(
        area,
        data,
        f"it is {len(data)} bytes; the limit is 100",
        limits=UploadLimits(max_bytes=100),
        error=AdapterTooLarge,
    )


def test_member_larger_than_the_limit(area: tuple[Path, Path]) -> None:
    limits = UploadLimits(max_bytes=len(WEIGHTS) - 1)
    refused(area, tar_bytes(MEMBERS), "entry 'adapter_model.safetensors' is", limits=limits, error=AdapterTooLarge)


def test_entries_adding_up_past_the_limit(area: tuple[Path, Path]) -> None:
    limits = UploadLimits(max_bytes=len(WEIGHTS) + 10)
    refused(area, tar_with("README.md", b"r" * 20), "entries add up to more than", limits=limits, error=AdapterTooLarge)


def test_zip_bomb(area: tuple[Path, Path]) -> None:
    """200 MB of zeros deflate to about 200 KB: refused on its ratio, before a byte of it is written."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("adapter_model.safetensors", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(200):
                member.write(chunk)
        archive.writestr("adapter_config.json", CONFIG)
    data = out.getvalue()
    assert len(data) < 300_000
    refused(area, data, "archive entry 'adapter_model.safetensors' expands more than 100 times")


def test_small_members_may_compress_well(area: tuple[Path, Path]) -> None:
    """The ratio applies past 1 MiB: a 1 MiB run of spaces (a padded README) is no bomb."""
    assert_unpacked(unpack(area, zip_bytes([*MEMBERS.items(), ("README.md", b" " * (1 << 20))])), area[1])
    refused(area, zip_bytes([*MEMBERS.items(), ("README.md", b" " * ((1 << 20) + 1))]), "expands more than 100 times")


def test_zip_lying_about_its_size(area: tuple[Path, Path]) -> None:
    """The central directory says 100 bytes; the deflated stream holds 100 KB. At most 100 come out, and the
    mismatch (zipfile's CRC check) refuses the archive."""
    big = bytes(100_000)
    data = bytearray(zip_bytes({"adapter_config.json": CONFIG, "adapter_model.safetensors": big}))
    size_field = struct.pack("<I", len(big))
    assert data.count(size_field) == 2  # local header and central directory
    data = bytearray(bytes(data).replace(size_field, struct.pack("<I", 100)))
    refused(area, bytes(data), "damaged or not a zip archive")


def test_tar_gz_whose_header_claims_more_than_it_holds(area: tuple[Path, Path]) -> None:
    raw = tar_bytes(MEMBERS, compression="")
    header = tarfile.TarInfo("adapter_model.safetensors")
    header.size = 10 * len(WEIGHTS)
    lying = tarfile.TarInfo("adapter_config.json")
    lying.size = len(CONFIG)
    truncated = lying.tobuf(tarfile.USTAR_FORMAT) + CONFIG + bytes(-len(CONFIG) % 512)
    truncated += header.tobuf(tarfile.USTAR_FORMAT) + WEIGHTS  # then the stream ends
    assert raw  # the honest one unpacks (test_accepted_formats)
    refused(area, gzip.compress(truncated), "damaged or not a tar.gz archive")


def test_tar_gz_whose_header_claims_less_than_it_holds(area: tuple[Path, Path]) -> None:
    """A size field that understates the data: exactly the declared 16 bytes are written, the rest is read as a
    next header, which is not one, so the tar ends there (tarfile's rule); validation then refuses the stub."""
    info = tarfile.TarInfo("adapter_model.safetensors")
    info.size = 16
    config = tarfile.TarInfo("adapter_config.json")
    config.size = len(CONFIG)
    raw = config.tobuf(tarfile.USTAR_FORMAT) + CONFIG + bytes(-len(CONFIG) % 512)
    raw += info.tobuf(tarfile.USTAR_FORMAT) + WEIGHTS + bytes(-len(WEIGHTS) % 512) + bytes(1024)
    files = unpack(area, gzip.compress(raw))
    assert files.weights.read_bytes() == WEIGHTS[:16]
    with pytest.raises(InvalidAdapter, match="runs past the end of the file") as caught:
        validate_adapter(files, TINY_SPEC, max_rank=16, limits=UploadLimits())
    assert caught.value.param == "adapter_model"


def test_gzip_bomb_in_a_pax_header(area: tuple[Path, Path]) -> None:
    """A pax header claiming 50 MB (tarfile would read it whole into memory) is cut off after the header
    allowance."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 50 << 20
    raw = pax.tobuf(tarfile.USTAR_FORMAT)
    compressor = io.BytesIO()
    with gzip.GzipFile(fileobj=compressor, mode="wb", compresslevel=9) as stream:
        stream.write(raw)
        chunk = b"9" * (1 << 20)
        for _ in range(50):
            stream.write(chunk)
    refused(area, compressor.getvalue(), "holds more data than its entries declare")


def test_directory_claiming_a_size_grants_no_allowance(area: tuple[Path, Path]) -> None:
    """A directory entry 'of 1 GB' (tarfile reads no data for it) followed by a 50 MB pax header."""
    folder = tarfile.TarInfo("d")
    folder.type = tarfile.DIRTYPE
    folder.size = 1 << 30
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 50 << 20
    compressor = io.BytesIO()
    with gzip.GzipFile(fileobj=compressor, mode="wb", compresslevel=9) as stream:
        stream.write(folder.tobuf(tarfile.USTAR_FORMAT) + pax.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(50):
            stream.write(b"9" * (1 << 20))
    refused(area, compressor.getvalue(), "holds more data than its entries declare")


def test_gzip_of_endless_zero_blocks_after_the_files(area: tuple[Path, Path]) -> None:
    """Zero blocks end a tar: a 100 MB tail of them is never read."""
    raw = tar_bytes(MEMBERS, compression="")
    compressor = io.BytesIO()
    with gzip.GzipFile(fileobj=compressor, mode="wb", compresslevel=9) as stream:
        stream.write(raw)
        for _ in range(100):
            stream.write(bytes(1 << 20))
    assert_unpacked(unpack(area, compressor.getvalue()), area[1])


def test_truncated_gzip(area: tuple[Path, Path]) -> None:
    data = tar_bytes(MEMBERS)
    refused(area, data[: len(data) // 2], "damaged or not a tar.gz archive")


def test_truncated_zip(area: tuple[Path, Path]) -> None:
    data = zip_bytes(MEMBERS)
    refused(area, data[: len(data) // 2], "damaged or not a zip archive")


# --- fuzz: random bytes, bare or behind each format's magic ---


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from([b"", b"\x1f\x8b", b"PK\x03\x04", b"PK\x05\x06"]),
    body=st.binary(max_size=2048),
    ustar=st.booleans(),
)
def test_random_bytes_only_ever_refused(tmp_path: Path, prefix: bytes, body: bytes, ustar: bool) -> None:
    data = prefix + body
    if ustar:
        data = data.ljust(257, b"\x00")[:257] + b"ustar\x0000" + data[257:]
    scratch = tmp_path / "fuzz-scratch"
    scratch.mkdir(exist_ok=True)
    upload = tmp_path / "fuzz-upload"
    upload.write_bytes(data)
    with contextlib.suppress(InvalidAdapter, AdapterTooLarge):
        unpack_archive(upload, scratch, UploadLimits(max_bytes=1 << 20))
    assert list(scratch.iterdir()) == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10_000), value=st.integers(0, 255), kind=st.sampled_from(["tar.gz", "tar", "zip"]))
def test_one_corrupted_byte_only_ever_refused(tmp_path: Path, position: int, value: int, kind: str) -> None:
    data = bytearray(
        zip_bytes(MEMBERS) if kind == "zip" else tar_bytes(MEMBERS, compression="gz" if kind == "tar.gz" else "")
    )
    data[position % len(data)] = value
    scratch = tmp_path / "fuzz-scratch"
    scratch.mkdir(exist_ok=True)
    upload = tmp_path / "fuzz-upload"
    upload.write_bytes(bytes(data))
    try:
        files = unpack_archive(upload, scratch, UploadLimits())
    except (InvalidAdapter, AdapterTooLarge):
        assert list(scratch.iterdir()) == []
        return
    with contextlib.suppress(InvalidAdapter):
        validate_adapter(files, TINY_SPEC, max_rank=16, limits=UploadLimits())
    for folder in scratch.iterdir():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
