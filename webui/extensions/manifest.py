"""An extension's manifest (``extension.toml`` or ``extension.json``): parse, validate, check versions.

A manifest names the extension and says what it needs::

    id = "extra-samplers"          # lowercase letters, digits, ".", "_", "-"
    name = "Extra samplers"
    version = "1.0.0"
    facade = ">=1,<2"              # versions of webui.extensions.api it works with
    entry = "main:setup"           # module:function inside the extension folder (the default)
    requirements = ["einops>=0.7"] # installed with pip unless --skip-install
    load_after = ["other-id"]      # ordering hints; unknown ids are ignored
    load_before = []
    description = "..."

Reading a manifest never runs code from the extension.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui.engine.errors import InvalidParameter

MANIFEST_FILES = ("extension.toml", "extension.json")
DEFAULT_ENTRY = "main:setup"
RESERVED_IDS = frozenset({"core", "builtin", "webui"})
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ENTRY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
# A package name with optional extras and version constraints; nothing that pip could read as an option,
# a URL or a local path.
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?(\s*(==|!=|>=|<=|~=|>|<)\s*[\w.*+!-]+)*$"
)
_VERSION_CLAUSE = re.compile(r"^(==|!=|>=|<=|~=|>|<)?\s*(\d+(?:\.\d+)*)(\.\*)?$")
_FIELDS: Mapping[str, type | tuple[type, ...]] = MappingProxyType(
    {
        "id": str,
        "name": str,
        "version": str,
        "facade": str,
        "entry": str,
        "requirements": list,
        "load_after": list,
        "load_before": list,
        "description": str,
    }
)


class ManifestError(InvalidParameter):
    """A manifest is missing, unreadable or has an invalid field (``field`` names it)."""


@dataclass(frozen=True)
class ExtensionManifest:
    """The validated content of a manifest.

    Attributes:
        id: unique id; everything the extension registers is recorded under it.
        name: display name (defaults to the id).
        version: the extension's own version string.
        facade: version requirement on the facade, e.g. ``">=1,<2"`` (empty: any).
        entry: ``module:function`` called with the :class:`~webui.extensions.api.ExtensionAPI`.
        requirements: pip requirement strings.
        load_after / load_before: ids this extension wants to be loaded after / before.
        description: one line for the Extensions tab.
        path: the manifest file.
    """

    id: str
    name: str
    version: str = "0"
    facade: str = ""
    entry: str = DEFAULT_ENTRY
    requirements: tuple[str, ...] = ()
    load_after: tuple[str, ...] = ()
    load_before: tuple[str, ...] = ()
    description: str = ""
    path: Path | None = None

    @property
    def entry_module(self) -> str:
        """The module part of :attr:`entry` (``"main"``)."""
        return self.entry.split(":", 1)[0]

    @property
    def entry_function(self) -> str:
        """The function part of :attr:`entry` (``"setup"``)."""
        return self.entry.split(":", 1)[1]


def find_manifest(folder: Path) -> Path | None:
    """The manifest file of an extension folder (TOML preferred), or None."""
    for name in MANIFEST_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _load_toml(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def read_manifest(folder: Path) -> ExtensionManifest:
    """Read and validate the manifest of ``folder``; any problem raises :class:`ManifestError`."""
    path = find_manifest(folder)
    if path is None:
        raise ManifestError("manifest", f"{folder.name}: no {' or '.join(MANIFEST_FILES)} found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else _load_toml(text)
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ManifestError("manifest", f"{path.name}: cannot be read ({exc})") from exc
    return parse_manifest(data, path)


def _string_list(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise ManifestError(key, "must be a list of non-empty strings")
    return tuple(item.strip() for item in value)


def parse_manifest(data: Any, path: Path | None = None) -> ExtensionManifest:
    """Validate manifest data already parsed from TOML/JSON."""
    if not isinstance(data, Mapping):
        raise ManifestError("manifest", "must be a table / object of fields")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ManifestError(unknown[0], f"unknown manifest field; valid: {', '.join(_FIELDS)}")
    for key, kind in _FIELDS.items():
        if key in data and not isinstance(data[key], kind):
            raise ManifestError(key, f"must be a {'list' if kind is list else 'string'}")
    ext_id = str(data.get("id", "")).strip()
    if not ext_id:
        raise ManifestError("id", "is required")
    if not _ID.match(ext_id):
        raise ManifestError(
            "id", f"{ext_id!r} is not valid: use 1-64 lowercase letters, digits, '.', '_' or '-'"
        )
    if ext_id in RESERVED_IDS:
        raise ManifestError("id", f"{ext_id!r} is reserved; do not use {', '.join(sorted(RESERVED_IDS))}")
    entry = str(data.get("entry", DEFAULT_ENTRY)).strip()
    if not _ENTRY.match(entry):
        raise ManifestError("entry", f"{entry!r} is not of the form module:function (e.g. {DEFAULT_ENTRY})")
    facade = str(data.get("facade", "")).strip()
    parse_requirement(facade)
    requirements = _string_list(data, "requirements")
    for requirement in requirements:
        if not _REQUIREMENT.match(requirement):
            raise ManifestError(
                "requirements", f"{requirement!r} is not a plain package requirement such as 'name>=1.2'"
            )
    return ExtensionManifest(
        id=ext_id,
        name=str(data.get("name", "")).strip() or ext_id,
        version=str(data.get("version", "0")).strip() or "0",
        facade=facade,
        entry=entry,
        requirements=requirements,
        load_after=_string_list(data, "load_after"),
        load_before=_string_list(data, "load_before"),
        description=str(data.get("description", "")).strip(),
        path=path,
    )


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def parse_requirement(spec: str) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
    """Parse ``">=1,<2"`` into ``(operator, version, wildcard)`` clauses; bad syntax raises ManifestError."""
    clauses = []
    for raw in filter(None, (part.strip() for part in spec.split(","))):
        match = _VERSION_CLAUSE.match(raw)
        if match is None:
            raise ManifestError(
                "facade", f"{raw!r} is not a version clause such as '>=1', '<2', '==1.*' or '~=1.0'"
            )
        operator, version, wildcard = match.group(1) or "==", match.group(2), bool(match.group(3))
        if wildcard and operator not in ("==", "!="):
            raise ManifestError("facade", f"{raw!r}: '.*' only goes with == or !=")
        clauses.append((operator, _version_tuple(version), wildcard))
    return tuple(clauses)


def _clause_holds(operator: str, wanted: tuple[int, ...], wildcard: bool, have: tuple[int, ...]) -> bool:
    if wildcard:
        same = have[: len(wanted)] == wanted
        return same if operator == "==" else not same
    if operator == "~=":  # compatible release: >= wanted and same prefix without the last part
        return _clause_holds(">=", wanted, False, have) and have[: len(wanted) - 1] == wanted[:-1]
    a, b = _padded(have, wanted)
    return {
        "==": a == b,
        "!=": a != b,
        ">=": a >= b,
        "<=": a <= b,
        ">": a > b,
        "<": a < b,
    }[operator]


def version_satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` (e.g. the facade's ``"1.0"``) meets ``spec`` (e.g. ``">=1,<2"``; empty: yes)."""
    have = _version_tuple(version)
    return all(_clause_holds(op, wanted, wild, have) for op, wanted, wild in parse_requirement(spec))
