"""Fixtures for the disco-mode extension's tests: its modules, imported from the folder as the host does."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from webui.extensions.loading import import_package, package_name

DISCO_DIR = Path(__file__).resolve().parents[2] / "extensions" / "disco-mode"
DISCO_PACKAGE = package_name("disco-mode")


@pytest.fixture(scope="session")
def disco() -> Callable[[str], ModuleType]:
    """``disco("losses")`` -> the extension's ``losses`` module (package ``webui_ext_disco_mode``)."""
    import sys

    if DISCO_PACKAGE not in sys.modules:
        import_package(DISCO_DIR, DISCO_PACKAGE)

    def module(name: str) -> ModuleType:
        if DISCO_PACKAGE not in sys.modules:
            import_package(DISCO_DIR, DISCO_PACKAGE)
        return importlib.import_module(f"{DISCO_PACKAGE}.{name}")

    return module
