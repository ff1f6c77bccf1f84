"""The two fastaudio implementations every fastaudio test runs against."""

import importlib
import os

import pytest

IMPLEMENTATIONS = {"cython": "fastaudio._fastaudio", "numpy": "fastaudio._fallback"}


def load(name: str):
    """The implementation module; a missing extension fails the test unless
    FASTAUDIO_PUREPYTHON=1 says it is meant to be absent (then it is skipped)."""
    try:
        return importlib.import_module(IMPLEMENTATIONS[name])
    except ImportError as exc:
        if name == "cython" and os.environ.get("FASTAUDIO_PUREPYTHON"):
            pytest.skip("FASTAUDIO_PUREPYTHON=1: the extension is not tested")
        pytest.fail(f"fastaudio extension not built ({exc}); `make install` builds it")


def is_extension(module) -> bool:
    """Whether `module` is the compiled extension."""
    return module.__name__ == IMPLEMENTATIONS["cython"]
