"""Where things live: data dir, models, outputs, extensions, caches and config files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from webui.config.flags import Flags, resolve_path

MODEL_SUBDIRS = ("Stable-diffusion", "VAE", "Lora", "embeddings", "ESRGAN", "clip")


@dataclass(frozen=True)
class Paths:
    """Resolved folders of one installation. Build with :meth:`from_flags`; create with :meth:`ensure`."""

    root: Path
    data_dir: Path
    models_dir: Path
    ckpt_dirs: tuple[Path, ...]
    vae_dirs: tuple[Path, ...]
    outputs_dir: Path
    extensions_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        """User settings (A1111's ``config.json``)."""
        return self.data_dir / "config.json"

    @property
    def ui_config_file(self) -> Path:
        """Last-used control values (A1111's ``ui-config.json``)."""
        return self.data_dir / "ui-config.json"

    @property
    def styles_file(self) -> Path:
        """Prompt styles (A1111's ``styles.csv``)."""
        return self.data_dir / "styles.csv"

    @property
    def hash_cache_file(self) -> Path:
        """sha256 cache keyed by path, mtime and size."""
        return self.cache_dir / "hashes.json"

    @property
    def model_configs_dir(self) -> Path:
        """Generated weights-free diffusers configs and tokenizer files."""
        return self.cache_dir / "model-configs"

    @property
    def demo_checkpoint(self) -> Path:
        """The bundled demo model (shipped with the code, so under the repository, not the data dir)."""
        return self.root / "models" / "demo" / "demo-shapes-v1.safetensors"

    def model_dir(self, kind: str) -> Path:
        """``models/<kind>``, e.g. ``model_dir("Lora")``."""
        return self.models_dir / kind

    def ensure(self) -> Paths:
        """Create the folders that must exist; returns ``self``."""
        for d in (self.data_dir, self.models_dir, self.outputs_dir, self.extensions_dir, self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        for sub in MODEL_SUBDIRS:
            (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        return self

    @classmethod
    def from_flags(cls, flags: Flags, root: Path) -> Paths:
        """Resolve folders from the flags; relative paths are taken from ``root`` (the repo)."""
        data_dir = resolve_path(flags.data_dir, root) or root
        models_dir = resolve_path(flags.models_dir, data_dir) or data_dir / "models"
        ckpt_dirs = [models_dir / "Stable-diffusion"]
        extra_ckpt = resolve_path(flags.ckpt_dir, data_dir)
        if extra_ckpt is not None and extra_ckpt not in ckpt_dirs:
            ckpt_dirs.append(extra_ckpt)
        vae_dirs = [resolve_path(flags.vae_dir, data_dir) or models_dir / "VAE"]
        return cls(
            root=root,
            data_dir=data_dir,
            models_dir=models_dir,
            ckpt_dirs=tuple(ckpt_dirs),
            vae_dirs=tuple(vae_dirs),
            outputs_dir=data_dir / "outputs",
            extensions_dir=data_dir / "extensions",
            cache_dir=data_dir / "cache",
        )
