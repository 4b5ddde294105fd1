"""Helpers of the extension tests: write fixture extensions, build hosts, make local git repositories."""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from webui.config.options import Options
from webui.extensions.host import ExtensionHost
from webui.extensions.security import AccessGate
from webui.extensions.services import HostServices

GIT_IDENTITY = ("-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false")


def write_extension(
    root: Path,
    folder: str,
    manifest: Mapping[str, Any] | None,
    files: Mapping[str, str],
    *,
    as_json: bool = False,
) -> Path:
    """Create ``root/folder`` with a manifest (TOML, or JSON) and source files (dedented)."""
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        if as_json:
            (path / "extension.json").write_text(json.dumps(manifest), encoding="utf-8")
        else:
            lines = [f"{key} = {json.dumps(value)}" for key, value in manifest.items()]
            (path / "extension.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def manifest(ext_id: str, **fields: Any) -> dict[str, Any]:
    """A valid manifest for ``ext_id`` with facade ``>=1,<2``."""
    return {"id": ext_id, "name": ext_id.title(), "version": "1.0", "facade": ">=1,<2", **fields}


def make_host(
    extensions_dir: Path, *, gate: AccessGate | None = None, options: Options | None = None, **kwargs: Any
) -> ExtensionHost:
    """A host over fresh built-in registries and in-memory settings."""
    options = options if options is not None else Options(None)
    services = HostServices.fresh(options, models_dir=extensions_dir.parent / "models")
    return ExtensionHost(extensions_dir, services, gate=gate, **kwargs)


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git with a test identity; return its stdout."""
    done = subprocess.run(
        ["git", *GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def make_remote(
    tmp: Path, name: str, files: Mapping[str, str], ext_manifest: Mapping[str, Any]
) -> tuple[Path, Path]:
    """A bare repository ``tmp/remotes/<name>.git`` holding one commit of an extension, and the working
    clone used to push further commits. Returns ``(bare, work)``."""
    bare = tmp / "remotes" / f"{name}.git"
    work = tmp / "work" / name
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", "-b", "main", str(bare))
    work.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "-b", "main", str(work))
    write_extension(work.parent, name, ext_manifest, files)
    push(work, "first")
    git("remote", "add", "origin", str(bare), cwd=work)
    git("push", "--quiet", "-u", "origin", "main", cwd=work)
    return bare, work


def push(work: Path, message: str) -> None:
    """Commit everything in ``work`` and push it if a remote is set."""
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", message, cwd=work)
    if git("remote", cwd=work):
        git("push", "--quiet", cwd=work)
