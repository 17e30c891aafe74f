"""The curated public API: every name in lcmsquant.__all__ is importable, documented, and the
same object as in its module; importing the package alone stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import lcmsquant


@pytest.mark.parametrize("name", [n for n in lcmsquant.__all__ if n != "__version__"])
def test_every_public_name_is_its_modules_own_and_documented(name):
    value = getattr(lcmsquant, name)
    module = importlib.import_module(f"lcmsquant.{lcmsquant._API[name]}")
    assert value is getattr(module, name)
    assert (value.__doc__ or "").strip(), f"{name} has no docstring"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lcmsquant.nothing  # noqa: B018


@pytest.mark.subprocess
def test_importing_the_package_loads_no_science_modules():
    code = "import sys, lcmsquant; print(sorted(m for m in ('pandas', 'pyopenms', 'numba') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
