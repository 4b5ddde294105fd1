"""The model manager: lists checkpoints and VAEs, loads and switches models, keeps an LRU cache.

Loading builds the new model on the CPU first; only when that succeeds is the previous model moved off
the GPU, so a corrupt or unknown file leaves the app running on the model it had.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.config.paths import Paths
from webui.models import devices
from webui.models.clip_models import (
    ClipModelEntry,
    GuidanceClipModel,
    discover_clip_models,
    find_clip_model,
    load_clip_model,
)
from webui.models.detection import ModelSpec
from webui.models.devices import DevicePolicy
from webui.models.discovery import (
    CheckpointInfo,
    VaeInfo,
    folder_sha256,
    scan_checkpoints,
    scan_vaes,
    vae_beside,
)
from webui.models.errors import ModelError, ModelNotFound
from webui.models.hashing import HashCache
from webui.models.loader import LoadedModel, inspect_checkpoint, load_checkpoint

log = logging.getLogger(__name__)

VAE_AUTOMATIC = "Automatic"
VAE_NONE = "None"


@dataclass(frozen=True)
class CacheLimits:
    """How many loaded models are kept: on the compute device, and extra ones in RAM (A1111's
    ``sd_checkpoints_limit`` / ``sd_checkpoint_cache``)."""

    on_device: int = 1
    in_ram: int = 0


class ModelManager:
    """Owns discovery, loading, switching and freeing of Stable Diffusion models. Thread-safe."""

    def __init__(
        self,
        paths: Paths,
        policy: DevicePolicy,
        *,
        extra_checkpoints: tuple[Path, ...] = (),
        limits: CacheLimits | None = None,
        vae_path: Path | None = None,
        on_loaded: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.paths = paths
        self.policy = policy
        self.limits = limits or CacheLimits()
        self.hashes = HashCache(paths.hash_cache_file)
        self._extra = tuple(extra_checkpoints)
        self._vae_path = vae_path
        self.on_loaded = on_loaded
        self._lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._checkpoints: list[CheckpointInfo] = []
        self._vaes: list[VaeInfo] = []
        self._loaded: OrderedDict[tuple[Path, float, str], LoadedModel] = OrderedDict()
        self._current: LoadedModel | None = None
        self._specs: dict[tuple[Path, float, int], ModelSpec] = {}

    # discovery ------------------------------------------------------------------------------------
    def refresh(self) -> list[CheckpointInfo]:
        """Rescan the checkpoint folders (and VAEs); returns the checkpoints. With none found, the bundled
        demo model (``models/demo/demo-shapes-v1.safetensors``) is the one checkpoint, so a fresh install
        generates pictures at once."""
        with self._lock:
            self._checkpoints = scan_checkpoints(self.paths.ckpt_dirs, self._extra, self.hashes)
            demo = self.paths.demo_checkpoint
            if not self._checkpoints and demo.is_file():
                self._checkpoints = scan_checkpoints((), (demo,), self.hashes)
            self.refresh_vaes()
            return list(self._checkpoints)

    def refresh_vaes(self) -> list[VaeInfo]:
        """Rescan the VAE folders."""
        with self._lock:
            self._vaes = scan_vaes(self.paths.vae_dirs, self.paths.ckpt_dirs)
            if (
                self._vae_path
                and self._vae_path.is_file()
                and all(v.path != self._vae_path for v in self._vaes)
            ):
                self._vaes.append(VaeInfo(path=self._vae_path, name=self._vae_path.name))
            return list(self._vaes)

    def checkpoints(self) -> list[CheckpointInfo]:
        """Known checkpoints, sorted by name."""
        with self._lock:
            return list(self._checkpoints)

    def vaes(self) -> list[VaeInfo]:
        """Known VAE files."""
        with self._lock:
            return list(self._vaes)

    def find(self, name: str) -> CheckpointInfo:
        """Look a checkpoint up by title, name, model name, stem, short hash, sha256, legacy hash or path."""
        with self._lock:
            if not self._checkpoints:
                self.refresh()
            for info in self._checkpoints:
                if name in info.ids():
                    return info
            for info in self._checkpoints:  # a title whose hash part is stale or unknown
                if name.split(" [", 1)[0] in (info.name, info.model_name):
                    return info
            path = Path(name)
            if path.is_file() or (path / "model_index.json").is_file():
                self._extra = (*self._extra, path)
                self.refresh()
                return self.find(str(path))
        valid = (
            ", ".join(i.title for i in self._checkpoints)
            or "none (put .safetensors files in models/Stable-diffusion)"
        )
        raise ModelNotFound(f"no checkpoint named {name!r}; available: {valid}")

    def find_vae(self, name: str) -> VaeInfo:
        """A VAE by its name (or file name)."""
        with self._lock:
            for vae in self._vaes:
                if name in (vae.name, vae.path.name, str(vae.path)):
                    return vae
        valid = ", ".join([VAE_AUTOMATIC, VAE_NONE] + [v.name for v in self._vaes])
        raise ModelNotFound(f"no VAE named {name!r}; available: {valid}")

    def ensure_hash(self, info: CheckpointInfo) -> str:
        """Compute (once, then cached on disk) the sha256 of a checkpoint; updates its title."""
        if info.sha256 is None:
            info.sha256 = (
                folder_sha256(info.path, self.hashes) if info.is_folder else self.hashes.sha256(info.path)
            )
        return info.sha256

    def inspect(self, info: CheckpointInfo) -> ModelSpec:
        """Architecture of a checkpoint from its header alone (cached by path, mtime and size)."""
        key = (info.path, info.mtime, info.size)
        with self._lock:
            if key not in self._specs:
                self._specs[key] = inspect_checkpoint(info)[0]
            return self._specs[key]

    # CLIP models for guidance ---------------------------------------------------------------------
    def clip_models(self) -> list[ClipModelEntry]:
        """CLIP models in ``models/clip`` and the demo CLIP, rescanned on each call."""
        return discover_clip_models(self.paths.models_dir)

    def load_clip(
        self, name: str, dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> GuidanceClipModel:
        """A new frozen guidance CLIP ``name`` on ``device`` (default: the compute device); the caller keeps
        it, not the manager."""
        entry = find_clip_model(self.paths.models_dir, name)
        tokenizers = self.paths.model_configs_dir / "tokenizers" / "clip-l"  # shared with the SD tokenizers
        return load_clip_model(
            entry, device=device or self.policy.device, dtype=dtype, tokenizer_dir=tokenizers
        )

    # loading --------------------------------------------------------------------------------------
    def is_demo(self, info: CheckpointInfo | None) -> bool:
        """Whether ``info`` is the bundled demo model."""
        return info is not None and Path(info.path).resolve() == self.paths.demo_checkpoint.resolve()

    @property
    def current(self) -> LoadedModel | None:
        """The model on the compute device, or None."""
        return self._current

    def _resolve_vae(self, info: CheckpointInfo, vae: str | None) -> VaeInfo | None:
        if vae in (None, "", VAE_AUTOMATIC):
            if self._vae_path:
                return self.find_vae(str(self._vae_path))
            return vae_beside(info, self._vaes)
        if vae == VAE_NONE:
            return None
        return self.find_vae(vae)

    def load(self, name: str | None = None, vae: str | None = VAE_AUTOMATIC) -> LoadedModel:
        """Make ``name`` (default: the current or first checkpoint) the active model, with ``vae``.

        On any error the previous model stays active and a :class:`ModelError` explains what is wrong.
        """
        with self._load_lock:  # one load at a time; listing and lookups stay responsive meanwhile
            with self._lock:
                if name is None:
                    if self._current is not None and vae in (None, VAE_AUTOMATIC):
                        return self._current
                    if self._current is not None:
                        info = self._current.checkpoint
                    else:
                        checkpoints = self._checkpoints or self.refresh()
                        if not checkpoints:
                            raise ModelNotFound(
                                "no checkpoints found: put .safetensors files in models/Stable-diffusion"
                            )
                        info = checkpoints[0]
                else:
                    info = self.find(name)
                vae_info = self._resolve_vae(info, vae)
                # the mtime makes a file replaced on disk load again instead of serving the stale model
                key = (info.path, info.mtime, vae_info.name if vae_info else VAE_NONE)
                if self._current is not None and self._key(self._current) == key:
                    return self._current
                model = self._loaded.pop(key, None)
            if model is None:
                try:
                    self.ensure_hash(info)
                    model = load_checkpoint(info, self._cpu_policy(), self.paths.model_configs_dir, vae_info)
                except ModelError:
                    raise
                except FileNotFoundError as e:
                    raise ModelNotFound(f"{info.name}: the checkpoint file is gone ({e})") from e
                except (OSError, RuntimeError, ValueError, KeyError) as e:
                    raise ModelError(f"{info.name}: failed to load ({e})") from e
            with self._lock:
                self._activate(model)
                self._loaded[key] = model
                self._trim()
            log.info(
                "loaded %s (%s) in %.2fs on %s",
                info.title,
                model.spec.label,
                model.load_seconds,
                self.policy.device,
            )
        if self.on_loaded is not None:
            self.on_loaded(model)
        return model

    def _cpu_policy(self) -> DevicePolicy:
        """Load on the CPU first; :meth:`_activate` moves to the device once loading succeeded."""
        return DevicePolicy(
            torch.device("cpu"), self.policy.dtype, self.policy.vae_dtype, self.policy.attention
        )

    @staticmethod
    def _key(model: LoadedModel) -> tuple[Path, float, str]:
        info = model.checkpoint
        return (info.path, info.mtime, model.vae_info.name if model.vae_info else VAE_NONE)

    def _activate(self, model: LoadedModel) -> None:
        previous = self._current
        if previous is not None and previous is not model and self.policy.device.type != "cpu":
            previous.to(torch.device("cpu"))
            devices.empty_cache(self.policy.device)
        model.to(self.policy.device)
        self._current = model

    def _trim(self) -> None:
        """Drop least-recently-used models beyond the cache limits (the current one always stays)."""
        keep = max(1, self.limits.in_ram + 1)
        while len(self._loaded) > keep:
            key, victim = next(iter(self._loaded.items()))
            if victim is self._current:
                self._loaded.move_to_end(key)
                continue
            del self._loaded[key]
            victim.to(torch.device("cpu"))
            del victim
        devices.empty_cache(self.policy.device)

    def unload(self) -> None:
        """Move the active model off the GPU to RAM (A1111's unload-checkpoint)."""
        with self._lock:
            if self._current is not None:
                self._current.to(torch.device("cpu"))
                devices.empty_cache(self.policy.device)

    def reload(self) -> LoadedModel | None:
        """Put the active model back on the compute device (A1111's reload-checkpoint)."""
        with self._lock:
            if self._current is None:
                return None
            self._current.to(self.policy.device)
            return self._current

    def free_vram(self) -> None:
        """Drop every cached model except the active one, and release allocator caches."""
        with self._lock:
            for key in [k for k, m in self._loaded.items() if m is not self._current]:
                del self._loaded[key]
            devices.empty_cache(self.policy.device)

    def close(self) -> None:
        """Forget every loaded model."""
        with self._lock:
            self._loaded.clear()
            self._current = None
            devices.empty_cache(self.policy.device)
