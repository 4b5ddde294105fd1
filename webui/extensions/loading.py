"""Importing an extension's code from its folder without touching ``sys.path``.

The folder becomes a package under a private name (``webui_ext_<id>``), so its sibling modules import each
other with relative imports (``from . import helpers``) and never clash with another extension's modules
of the same name. Unloading forgets the package and its submodules.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE_PREFIX = "webui_ext_"


def package_name(ext_id: str) -> str:
    """The private package name of an extension id (``"extra-samplers"`` -> ``"webui_ext_extra_samplers"``)."""
    return PACKAGE_PREFIX + re.sub(r"\W", "_", ext_id)


def forget_package(package: str) -> None:
    """Drop ``package`` and its submodules from the import system's module cache."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _import_package(folder: Path, package: str) -> ModuleType:
    init = folder / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(folder)])
    else:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
    if spec is None:
        raise ImportError(f"cannot import the extension folder {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)
    return module


def import_package(folder: Path, package: str) -> ModuleType:
    """Import an extension folder as the package ``package`` (fresh: a previous import is forgotten).

    Tools and tests use it to reach an extension's modules without loading the extension.
    """
    forget_package(package)
    return _import_package(folder, package)


def load_entry(folder: Path, package: str, module: str, function: str) -> Callable[..., Any]:
    """Import ``<folder>/<module>.py`` as ``<package>.<module>`` and return its ``function``.

    On any failure the package is forgotten again and the exception propagates.
    """
    forget_package(package)
    try:
        _import_package(folder, package)
        entry_module = importlib.import_module(f"{package}.{module}")
        fn = getattr(entry_module, function, None)
        if not callable(fn):
            raise AttributeError(f"{module}.py has no function {function}()")
        return fn
    except BaseException:
        forget_package(package)
        raise
