"""Model-based upscalers: ESRGAN-family files in ``models/ESRGAN`` (and friends) run through ``spandrel``.

Every model file found becomes one :class:`~webui.engine.images.Upscaler` named after the file's stem
(``models/ESRGAN/4x-UltraSharp.pth`` -> ``"4x-UltraSharp"``), as A1111 lists them. Nothing is loaded until
an upscaler is used; then :class:`UpscaleModelCache` loads the file (safetensors, or a pickle through
``torch.load(weights_only=True)``, never running code from the file), lets spandrel detect the
architecture, and keeps the last one or two models on the compute device.

``spandrel`` is optional: without it (or without the torchvision it imports) the upscalers are still
listed, and using one raises :class:`UpscalerUnavailable` with the install hint.

Images are upscaled tile by tile (:func:`tiled_upscale`, A1111's ``ESRGAN_tile`` /
``ESRGAN_tile_overlap`` settings); overlapping tiles are blended with linear weights so seams do not show.
The model runs until the image reaches the requested size, then Lanczos adjusts to the exact size.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.engine.images import UpscalerRegistry
from webui.models.checkpoint_files import load_state_dict
from webui.models.devices import empty_cache
from webui.models.errors import CorruptCheckpoint, ModelError, UnknownArchitecture
from webui.models.torchscript_files import torchscript_prefix

log = logging.getLogger(__name__)

UPSCALER_MODEL_DIRS = ("ESRGAN", "RealESRGAN", "DAT", "SwinIR", "HAT")
"""Folders under ``models/`` scanned for upscaler model files, in priority order."""
UPSCALER_MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
ESRGAN_OWNER = "esrgan"
"""The owner recorded in the upscaler registry for the upscalers of this module."""
DEFAULT_TILE = 192
DEFAULT_TILE_OVERLAP = 8
MAX_PASSES = 3
"""How often a model may run on one image to reach the requested scale (A1111: 3)."""
SPANDREL_HINT = "pip install spandrel; it needs a torchvision that matches your torch"


class UpscalerUnavailable(ModelError):
    """An upscaler model cannot run here (its loader library is missing or broken)."""


# --- settings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileSettings:
    """Tiled inference: ``tile`` pixels per side (0 = the whole image at once), ``overlap`` pixels shared."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_TILE_OVERLAP

    @classmethod
    def from_options(cls, options: Any) -> TileSettings:
        """Read A1111's ``ESRGAN_tile`` and ``ESRGAN_tile_overlap`` from an options store (``get``)."""
        tile = _as_int(options.get("ESRGAN_tile", DEFAULT_TILE), DEFAULT_TILE)
        overlap = _as_int(options.get("ESRGAN_tile_overlap", DEFAULT_TILE_OVERLAP), DEFAULT_TILE_OVERLAP)
        return cls(max(tile, 0), max(overlap, 0))


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# --- tiling ------------------------------------------------------------------------------------------


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length``; the last tile ends at the edge."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _edge_weights(starts: list[int], index: int, size: int, scale: int) -> torch.Tensor:
    """Blend weights (output pixels) of tile ``index`` along one axis: linear ramps where it overlaps its
    neighbours, 1 elsewhere. Two ramps over the same overlap add up to 1."""
    weights = torch.ones(size * scale, dtype=torch.float32)
    start, end = starts[index], starts[index] + size
    before = (starts[index - 1] + size - start) * scale if index > 0 else 0
    after = (end - starts[index + 1]) * scale if index < len(starts) - 1 else 0
    if before > 0:
        weights[:before] = torch.minimum(weights[:before], _ramp(before))
    if after > 0:
        weights[-after:] = torch.minimum(weights[-after:], _ramp(after).flip(0))
    return weights


def _ramp(length: int) -> torch.Tensor:
    return (torch.arange(length, dtype=torch.float32) + 0.5) / length


def tiled_upscale(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_TILE_OVERLAP,
) -> torch.Tensor:
    """Runs ``model`` (``[1, C, h, w] -> [1, C', h*scale, w*scale]``) over ``image`` tile by tile.

    ``image`` is a float ``[1, C, H, W]`` tensor; the result is float32 on the CPU. ``tile`` <= 0, or an
    image no larger than one tile, runs the model once on the whole image. Tiles share ``overlap`` input
    pixels (at most half a tile) and are blended there with linear weights, so a model that treats every
    pixel on its own gives exactly the untiled result.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a [1, C, H, W] image tensor, got shape {tuple(image.shape)}")
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return _checked(model(image), height, width, scale)
    overlap = max(0, min(overlap, tile // 2))
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys, xs = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    out: torch.Tensor | None = None
    weight_sum = torch.zeros(height * scale, width * scale, dtype=torch.float32)
    for iy, y in enumerate(ys):
        wy = _edge_weights(ys, iy, tile_h, scale)
        for ix, x in enumerate(xs):
            wx = _edge_weights(xs, ix, tile_w, scale)
            piece = _checked(model(image[:, :, y : y + tile_h, x : x + tile_w]), tile_h, tile_w, scale)
            if out is None:
                out = torch.zeros(1, piece.shape[1], height * scale, width * scale, dtype=torch.float32)
            weights = wy[:, None] * wx[None, :]
            rows = slice(y * scale, (y + tile_h) * scale)
            cols = slice(x * scale, (x + tile_w) * scale)
            out[:, :, rows, cols] += piece * weights
            weight_sum[rows, cols] += weights
    assert out is not None  # at least one tile ran
    return out / weight_sum


def _checked(piece: torch.Tensor, height: int, width: int, scale: int) -> torch.Tensor:
    if piece.dim() != 4 or tuple(piece.shape[-2:]) != (height * scale, width * scale):
        raise ModelError(
            f"the upscaler returned shape {tuple(piece.shape)} for a {width}x{height} input; "
            f"expected {width * scale}x{height * scale} (scale {scale})"
        )
    return piece.detach().to(device="cpu", dtype=torch.float32)


# --- image <-> tensor --------------------------------------------------------------------------------


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 ``[1, 3, H, W]`` tensor in ``[0, 1]``."""
    pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255.0


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """A ``[1, 3, H, W]`` tensor in ``[0, 1]`` (clamped) as an RGB image."""
    pixels = (x[0].detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")


# --- loading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpscaleModel:
    """A loaded upscaler model.

    Attributes:
        run: maps a float ``[1, 3, h, w]`` tensor in ``[0, 1]`` on ``device``/``dtype`` to
            ``[1, 3, h*scale, w*scale]`` in ``[0, 1]``.
        scale: the model's fixed enlargement factor (1 for restoration models).
        tiling: False when the model tiles internally and must see the whole image.
    """

    run: Callable[[torch.Tensor], torch.Tensor]
    scale: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    tiling: bool = True
    architecture: str = ""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Runs the model on a float tile of any device/dtype; returns float32 on the CPU."""
        with torch.inference_mode():
            out = self.run(image.to(device=self.device, dtype=self.dtype))
        return out.float().cpu()


def read_upscaler_state_dict(path: Path) -> dict[str, Any]:
    """The raw contents of an upscaler model file, read without running code from it.

    ``.safetensors`` files are read with safetensors; pickle-based files (``.pth``, ``.pt``, ``.ckpt``) with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers (nested
    wrappers such as BasicSR's ``{"params_ema": {...}}`` are kept for spandrel to unwrap). Files it refuses
    go through :func:`webui.models.checkpoint_files.load_state_dict`, whose restricted unpickler tells
    unsafe files (:class:`UnsafeCheckpoint`) from broken ones (:class:`CorruptCheckpoint`). TorchScript
    ``.pt`` archives give their tensors without running TorchScript.
    """
    if path.suffix.lower() == ".safetensors":
        return dict(load_state_dict(path, "cpu"))
    if not path.is_file():
        raise ModelError(f"upscaler model file not found: {path}")
    try:
        archive = zipfile.is_zipfile(path)
        if archive and torchscript_prefix(path) is not None:
            return dict(load_state_dict(path, "cpu"))  # tensors only, no TorchScript runs
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=archive)
    except pickle.UnpicklingError:
        # torch's allow-list refused the file: the model manager's restricted reader tells a file that asks
        # to run code (UnsafeCheckpoint) from a broken one (CorruptCheckpoint) and reads old files whose
        # extras are inert; neither runs anything from the file
        return dict(load_state_dict(path, "cpu"))
    except ModelError:
        raise
    except Exception as e:  # a malformed file fails with almost any error
        raise CorruptCheckpoint(f"{path.name}: cannot read the file ({_first_line(e)})") from e
    if not isinstance(obj, Mapping):
        raise CorruptCheckpoint(f"{path.name}: the file holds no state dict")
    return dict(obj)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _import_spandrel() -> ModuleType:
    return importlib.import_module("spandrel")


class SpandrelLoader:
    """Loads an upscaler file with spandrel onto ``device`` in ``dtype`` where the model supports it.

    ``import_spandrel`` returns the ``spandrel`` module (a seam for tests; by default a plain import).
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        import_spandrel: Callable[[], ModuleType] = _import_spandrel,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self._import_spandrel = import_spandrel

    def __call__(self, path: Path) -> UpscaleModel:
        """Load ``path``; errors name the file and say what to do."""
        spandrel = self._spandrel(path)
        state = read_upscaler_state_dict(path)
        try:
            state = spandrel.canonicalize_state_dict(state)
            descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
        except spandrel.UnsupportedModelError:
            raise UnknownArchitecture(
                f"{path.name}: not a model architecture spandrel knows (is it an upscaler?)"
            ) from None
        except Exception as e:  # wrong shapes or keys for the detected architecture
            raise CorruptCheckpoint(f"{path.name}: cannot build the upscaler ({_first_line(e)})") from e
        return self._prepare(descriptor, path, spandrel)

    def _spandrel(self, path: Path) -> ModuleType:
        try:
            return self._import_spandrel()
        except Exception as e:  # ImportError, or torchvision's operator errors on a mismatched build
            raise UpscalerUnavailable(
                f"upscaler model '{path.stem}' needs the `spandrel` package ({SPANDREL_HINT}): "
                f"{_first_line(e)}"
            ) from None

    def _prepare(self, descriptor: Any, path: Path, spandrel: ModuleType) -> UpscaleModel:
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise UnknownArchitecture(f"{path.name}: an inpainting model, not an upscaler")
        if descriptor.purpose not in ("SR", "Restoration"):
            raise UnknownArchitecture(f"{path.name}: a {descriptor.purpose} model, not an upscaler")
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise UnknownArchitecture(
                f"{path.name}: takes {descriptor.input_channels} and gives {descriptor.output_channels} "
                "channels; only RGB upscalers are supported"
            )
        dtype = self._dtype_for(descriptor)
        descriptor.to(self.device, dtype)
        descriptor.eval()
        internal = getattr(spandrel.ModelTiling, "INTERNAL", None)
        return UpscaleModel(
            run=descriptor,
            scale=int(descriptor.scale),
            device=self.device,
            dtype=dtype,
            tiling=descriptor.tiling != internal,
            architecture=str(getattr(descriptor.architecture, "name", "")),
        )

    def _dtype_for(self, descriptor: Any) -> torch.dtype:
        if self.device.type == "cpu":
            return torch.float32
        if self.dtype == torch.float16 and descriptor.supports_half:
            return torch.float16
        if self.dtype == torch.bfloat16 and descriptor.supports_bfloat16:
            return torch.bfloat16
        return torch.float32


class UpscaleModelCache:
    """Upscaler models loaded on first use and kept while the app runs (the last ``capacity`` ones).

    ``load_model(path) -> UpscaleModel`` defaults to :class:`SpandrelLoader` on ``device``/``dtype``.
    A file changed on disk is loaded again.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        load_model: Callable[[Path], UpscaleModel] | None = None,
        capacity: int = 1,
    ) -> None:
        self.device = torch.device(device)
        self.load_model = load_model or SpandrelLoader(self.device, dtype)
        self.capacity = max(1, capacity)
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple[Path, int, int], UpscaleModel] = OrderedDict()

    def get(self, path: Path) -> UpscaleModel:
        """The model of ``path``, loading it (and evicting the least recently used one) when needed."""
        try:
            stat = path.stat()
        except OSError as e:
            raise ModelError(f"upscaler model file not found: {path}") from e
        key = (path, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            for old in [k for k in self._models if k[0] == path]:
                del self._models[old]
            model = self.load_model(path)
            self._models[key] = model
            evicted = False
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
                evicted = True
        if evicted:
            empty_cache(self.device)
        return model

    def loaded(self) -> list[Path]:
        """Files whose models are loaded, least recently used first."""
        with self._lock:
            return [key[0] for key in self._models]

    def clear(self) -> None:
        """Drop every loaded model."""
        with self._lock:
            self._models.clear()
        empty_cache(self.device)


# --- the upscaler ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelUpscaler:
    """One model file as an :class:`~webui.engine.images.Upscaler` named after the file's stem."""

    name: str
    path: Path
    cache: UpscaleModelCache
    settings: Callable[[], TileSettings] = TileSettings
    model_name: str = "ESRGAN"

    def upscale(self, img: Image.Image, scale: float) -> Image.Image:
        """Enlarges ``img`` to ``int(size * scale)``: the model runs until the image is at least that large
        (up to :data:`MAX_PASSES` times), then Lanczos resizes to the size. Alpha is resized with Lanczos."""
        width, height = max(1, int(img.width * scale)), max(1, int(img.height * scale))
        alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
        current = img.convert("RGB")
        if current.width < width or current.height < height:
            model = self.cache.get(self.path)
            settings = self.settings()
            tile = settings.tile if model.tiling else 0
            for _ in range(MAX_PASSES):
                if current.width >= width and current.height >= height:
                    break
                before = current.size
                out = tiled_upscale(model, image_to_tensor(current), model.scale, tile, settings.overlap)
                current = tensor_to_image(out)
                if current.size == before:
                    break
        if current.size != (width, height):
            current = current.resize((width, height), resample=Image.Resampling.LANCZOS)
        if alpha is not None:
            current.putalpha(alpha.resize((width, height), resample=Image.Resampling.LANCZOS))
        return current


# --- discovery and registration ----------------------------------------------------------------------


def find_upscaler_models(models_dir: Path, subdirs: Iterable[str] = UPSCALER_MODEL_DIRS) -> list[Path]:
    """Model files under ``models_dir/<subdir>`` (recursively), folder by folder, sorted by name."""
    found: list[Path] = []
    for sub in subdirs:
        folder = models_dir / sub
        if not folder.is_dir():
            continue
        files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in UPSCALER_MODEL_SUFFIXES]
        found.extend(sorted(files, key=lambda p: (p.stem.lower(), str(p))))
    return found


class ModelUpscalers:
    """The model upscalers of one installation: finds the files and (re)registers them in a registry."""

    def __init__(
        self,
        models_dir: Path,
        cache: UpscaleModelCache,
        settings: Callable[[], TileSettings] = TileSettings,
        *,
        subdirs: Iterable[str] = UPSCALER_MODEL_DIRS,
    ) -> None:
        self.models_dir = models_dir
        self.cache = cache
        self.settings = settings
        self.subdirs = tuple(subdirs)

    def refresh(self, registry: UpscalerRegistry) -> list[str]:
        """Replace the registry's model upscalers with the files found now; returns their names.

        A name already taken (a built-in, an earlier file with the same stem) is skipped with a warning.
        """
        registry.unregister_owner(ESRGAN_OWNER)
        names: list[str] = []
        for path in find_upscaler_models(self.models_dir, self.subdirs):
            if path.stem in registry:
                log.warning("upscaler %r from %s skipped: the name is already taken", path.stem, path)
                continue
            registry.register(ModelUpscaler(path.stem, path, self.cache, self.settings), owner=ESRGAN_OWNER)
            names.append(path.stem)
        return names
