"""Finding checkpoints and VAEs on disk, with A1111's names, titles and hashes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from webui.models.hashing import HashCache, legacy_model_hash, short_hash

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
DIFFUSERS_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class CheckpointInfo:
    """One checkpoint file (or diffusers folder) as A1111 identifies it."""

    path: Path
    name: str  # relative to its models folder, with extension: "sub/model.safetensors"
    is_folder: bool = False
    legacy_hash: str | None = None
    sha256: str | None = None
    size: int = 0
    mtime: float = 0.0
    extra_ids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def model_name(self) -> str:
        """Name without extension, folders joined with ``_`` (A1111's ``model_name``)."""
        stem = self.name if self.is_folder else self.name.rsplit(".", 1)[0]
        return stem.replace("/", "_").replace("\\", "_")

    @property
    def name_for_extra(self) -> str:
        """The file stem, written as ``Model:`` in infotext."""
        return Path(self.name).stem if not self.is_folder else Path(self.name).name

    @property
    def shorthash(self) -> str | None:
        """10-hex short hash once the sha256 is known."""
        return short_hash(self.sha256) if self.sha256 else None

    @property
    def title(self) -> str:
        """``"<name> [<shorthash>]"``; just the name until the hash has been computed."""
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    def ids(self) -> list[str]:
        """Every string this checkpoint can be looked up by."""
        ids = [self.name, self.title, self.model_name, self.name_for_extra, str(self.path)]
        if self.legacy_hash:
            ids += [self.legacy_hash, f"{self.name} [{self.legacy_hash}]"]
        if self.sha256:
            ids += [self.sha256, self.shorthash or "", f"{self.name} [{self.shorthash}]"]
        return [i for i in ids if i] + list(self.extra_ids)


@dataclass(frozen=True)
class VaeInfo:
    """One VAE file, by its A1111 name (file name relative to its folder)."""

    path: Path
    name: str


def _walk(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    suffixes = tuple(suffixes)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _is_vae_file(path: Path) -> bool:
    return ".vae." in path.name.lower() or path.name.lower().endswith(".vae.pt")


def _inside_diffusers_folder(path: Path, root: Path) -> bool:
    parent = path.parent
    while parent != root and root in parent.parents:
        if (parent / "model_index.json").is_file():
            return True
        parent = parent.parent
    return False


def scan_checkpoints(
    dirs: Iterable[Path], extra_files: Iterable[Path] = (), hashes: HashCache | None = None
) -> list[CheckpointInfo]:
    """All checkpoints under ``dirs`` (recursive) plus ``extra_files`` (``--ckpt``), sorted by name."""
    found: dict[Path, CheckpointInfo] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for index in sorted(root.rglob("model_index.json")):
            folder = index.parent
            info = CheckpointInfo(path=folder, name=folder.relative_to(root).as_posix(), is_folder=True)
            info.mtime = index.stat().st_mtime
            found[folder.resolve()] = info
        for path in _walk(root, CHECKPOINT_SUFFIXES):
            if _is_vae_file(path) or _inside_diffusers_folder(path, root):
                continue
            found.setdefault(path.resolve(), _file_info(path, path.relative_to(root).as_posix()))
    for path in extra_files:
        if path.is_file():
            found.setdefault(path.resolve(), _file_info(path, path.name))
        elif (path / "model_index.json").is_file():
            found.setdefault(path.resolve(), CheckpointInfo(path=path, name=path.name, is_folder=True))
    infos = sorted(found.values(), key=lambda i: i.name.lower())
    if hashes is not None:
        for info in infos:
            if not info.is_folder:
                info.sha256 = hashes.cached(info.path)
    return infos


def _file_info(path: Path, name: str) -> CheckpointInfo:
    st = path.stat()
    legacy = (
        legacy_model_hash(path)
        if st.st_size > 0x110000
        else hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    )
    return CheckpointInfo(path=path, name=name, legacy_hash=legacy, size=st.st_size, mtime=st.st_mtime)


def folder_sha256(folder: Path, hashes: HashCache) -> str:
    """A stable sha256 for a diffusers folder: over the relative names and hashes of its weight files."""
    h = hashlib.sha256()
    for path in _walk(folder, DIFFUSERS_WEIGHT_SUFFIXES):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(hashes.sha256(path).encode())
    return h.hexdigest()


def scan_vaes(dirs: Iterable[Path], checkpoint_dirs: Iterable[Path] = ()) -> list[VaeInfo]:
    """VAE files in ``models/VAE`` (recursive) and ``*.vae.*`` files beside checkpoints."""
    found: dict[Path, VaeInfo] = {}
    for root in dirs:
        for path in _walk(root, VAE_SUFFIXES):
            found.setdefault(path.resolve(), VaeInfo(path=path, name=path.relative_to(root).as_posix()))
    for root in checkpoint_dirs:
        for path in _walk(root, VAE_SUFFIXES):
            if _is_vae_file(path):
                found.setdefault(path.resolve(), VaeInfo(path=path, name=path.name))
    return sorted(found.values(), key=lambda v: v.name.lower())


def vae_beside(checkpoint: CheckpointInfo, vaes: Iterable[VaeInfo]) -> VaeInfo | None:
    """The ``<checkpoint>.vae.*`` file next to a checkpoint, if any (A1111's "Automatic" choice)."""
    if checkpoint.is_folder:
        return None
    stem = checkpoint.path.name.rsplit(".", 1)[0]
    for vae in vaes:
        if vae.path.parent == checkpoint.path.parent and vae.path.name.lower().startswith(
            stem.lower() + ".vae."
        ):
            return vae
    return None
