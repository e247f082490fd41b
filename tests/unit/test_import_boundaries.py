"""The framework-free packages really are free of Litestar: each is imported in a fresh interpreter, with
every module under it, and Litestar must not be among the modules loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import importlib, json, pkgutil, sys
root = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(getattr(root, "__path__", []), root.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m == "litestar" or m.startswith("litestar."))))
"""

FRAMEWORK_FREE = [
    "gateway.errors",
    "gateway.services",
    "gateway.openai",
    "gateway.engines",
    "adapters",
    "retrieval",
    "policies",
    "observability",
]


@pytest.mark.parametrize("package", FRAMEWORK_FREE)
def test_package_does_not_import_litestar(package: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, package], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == [], f"importing {package} loads Litestar"


def test_the_probe_sees_litestar_where_it_is() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "gateway.litestar_errors"], capture_output=True, text=True, check=True
    ).stdout
    assert "litestar" in json.loads(out)
