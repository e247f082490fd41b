"""adapters.safetensors_header: the header is parsed safely and every rule of the format is enforced."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.errors import InvalidAdapter
from adapters.safetensors_header import read_header
from tests.data.adapters.crafted import raw_safetensors, safetensors_bytes


def write(tmp_path: Path, data: bytes, name: str = "adapter_model.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path, fragment: str, *, max_header_bytes: int = 16 << 20) -> InvalidAdapter:
    with pytest.raises(InvalidAdapter) as caught:
        read_header(path, max_header_bytes=max_header_bytes)
    assert caught.value.param == "adapter_model"
    assert fragment in caught.value.message, caught.value.message
    return caught.value


def header_file(tmp_path: Path, header: dict[str, Any], data_size: int) -> Path:
    return write(tmp_path, raw_safetensors(json.dumps(header).encode(), data_size))


def entry(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_valid_file(tmp_path: Path) -> None:
    data = safetensors_bytes(
        {"a": ("F32", [2, 3]), "b": ("BF16", [4]), "c": ("F16", [0, 5]), "d": ("F32", [])},
        metadata={"format": "pt"},
    )
    assert read_header(write(tmp_path, data)) == {
        "a": ("F32", (2, 3)),
        "b": ("BF16", (4,)),
        "c": ("F16", (0, 5)),
        "d": ("F32", ()),
    }


def test_offsets_need_not_follow_key_order(tmp_path: Path) -> None:
    header = {"late": entry("F32", [2], 8, 16), "early": entry("F32", [2], 0, 8)}
    assert read_header(header_file(tmp_path, header, 16)) == {"late": ("F32", (2,)), "early": ("F32", (2,))}


def test_empty_file(tmp_path: Path) -> None:
    refused(write(tmp_path, b"\x01\x02"), "too short for the 8-byte header length")


def test_header_length_above_limit(tmp_path: Path) -> None:
    path = write(tmp_path, safetensors_bytes({"a": ("F32", [2])}))
    refused(path, "above the limit of 8 bytes", max_header_bytes=8)


def test_header_length_past_end_of_file(tmp_path: Path) -> None:
    refused(write(tmp_path, struct.pack("<Q", 1000) + b"{}"), "runs past the end of the file")


def test_absurd_header_length(tmp_path: Path) -> None:
    refused(write(tmp_path, b"\xff" * 8 + b"{}"), "above the limit")


def test_header_not_an_object(tmp_path: Path) -> None:
    refused(write(tmp_path, raw_safetensors(b"[1, 2]", 0)), "does not start with '{'")
    refused(write(tmp_path, raw_safetensors(b"{1: 2}", 0)), "not valid JSON")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}', "duplicate key 'a'"),
        (b'{"a\x00": 1}', "NUL byte"),
        (b'{"x": NaN}', "NaN is not JSON"),
        (b'{"\xff": 1}', "not UTF-8"),
        (b"{" + b'"a":[' * 50_000, "not valid JSON"),
        (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
)
def test_bad_json(tmp_path: Path, header: bytes, fragment: str) -> None:
    refused(write(tmp_path, raw_safetensors(header, 4)), fragment)


@pytest.mark.parametrize("dtype", ["F64", "I8", "U8", "BOOL", "F8_E4M3", "I64"])
def test_refused_dtype(tmp_path: Path, dtype: str) -> None:
    header = {"a": entry(dtype, [1], 0, 8)}
    error = refused(header_file(tmp_path, header, 8), f"dtype {dtype}; adapters must be F16, BF16 or F32")
    assert "tensor a" in error.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"dtype": "F32", "shape": [1]}, "no valid data_offsets"),
        ({"shape": [1], "data_offsets": [0, 4]}, "has no dtype"),
        (entry("F32", [-1], 0, 4), "no valid shape"),
        (entry("F32", [True], 0, 4), "no valid shape"),
        (entry("F32", [1.0], 0, 4), "no valid shape"),
        ({"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}, "no valid shape"),
        (entry("F32", [1] * 9, 0, 4), "no valid shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}, "no valid data_offsets"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}, "no valid data_offsets"),
        (entry("F32", [1], 4, 0), "outside the data area"),
        (entry("F32", [2], 0, 8), "outside the data area"),
        (entry("F32", [2], 0, 4), "span 4 bytes"),
        (entry("F32", [10**30, 10**30], 0, 4), "span 4 bytes"),
        ({**entry("F32", [1], 0, 4), "extra": 1}, "unknown fields (extra)"),
        ([1], "not an object"),
    ],
)
def test_bad_tensor_entry(tmp_path: Path, value: Any, fragment: str) -> None:
    refused(header_file(tmp_path, {"t": value}, 4), fragment)


def test_overlap(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    refused(header_file(tmp_path, header, 12), "overlaps the tensor before it")


def test_gap(tmp_path: Path) -> None:
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}
    refused(header_file(tmp_path, header, 12), "leaves a gap after byte 4")


def test_first_tensor_not_at_zero(tmp_path: Path) -> None:
    refused(header_file(tmp_path, {"a": entry("F32", [1], 4, 8)}, 8), "leaves a gap after byte 0")


def test_bytes_after_last_tensor(tmp_path: Path) -> None:
    refused(header_file(tmp_path, {"a": entry("F32", [1], 0, 4)}, 12), "8 bytes after the last tensor")


@pytest.mark.parametrize("metadata", [{"a": 1}, ["x"], "text", {"a": None}])
def test_bad_metadata(tmp_path: Path, metadata: Any) -> None:
    refused(header_file(tmp_path, {"__metadata__": metadata}, 0), "__metadata__ is not an object of strings")


def test_long_tensor_names_are_clipped(tmp_path: Path) -> None:
    name = "n" * 5000
    error = refused(header_file(tmp_path, {name: entry("F64", [1], 0, 8)}, 8), "dtype F64")
    assert len(error.message) < 400


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    target = write(tmp_path, safetensors_bytes({"a": ("F32", [1])}), "real.safetensors")
    link = tmp_path / "adapter_model.safetensors"
    os.symlink(target, link)
    refused(link, "cannot be read")


def test_missing_file(tmp_path: Path) -> None:
    refused(tmp_path / "absent.safetensors", "cannot be read")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes_only_ever_refused(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, data)
    with contextlib.suppress(InvalidAdapter):
        read_header(path, max_header_bytes=1024)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.binary(max_size=512), data_size=st.integers(0, 64))
def test_random_headers_only_ever_refused(tmp_path: Path, header: bytes, data_size: int) -> None:
    path = write(tmp_path, raw_safetensors(b"{" + header, data_size, pad=1))
    with contextlib.suppress(InvalidAdapter):
        read_header(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.sampled_from(["F32", "F16", "BF16", "F64", "x"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "k"]), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.dictionaries(st.sampled_from(["a", "b", "__metadata__"]), json_values, max_size=3),
    size=st.integers(0, 64),
)
def test_random_structured_headers_only_ever_refused(tmp_path: Path, header: dict[str, Any], size: int) -> None:
    path = write(tmp_path, raw_safetensors(json.dumps(header).encode(), size))
    try:
        tensors = read_header(path)
    except InvalidAdapter:
        return
    assert all(dtype in ("F32", "F16", "BF16") for dtype, _shape in tensors.values())
