"""Image helpers with A1111's names and behaviour: resize modes, upscalers, grids, base64, latent previews.

Nothing here loads a model. Model-based upscalers (ESRGAN ...) plug in later through
:class:`UpscalerRegistry` by implementing the small :class:`Upscaler` interface.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from webui.engine.errors import InvalidParameter

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE = range(4)


# --- upscalers ---------------------------------------------------------------------------------------


@runtime_checkable
class Upscaler(Protocol):
    """An image upscaler as listed in A1111's upscaler menus."""

    name: str

    def upscale(self, img: Image.Image, scale: float) -> Image.Image:
        """Returns ``img`` enlarged by ``scale`` (the result may be a few pixels off the exact size)."""
        ...


@dataclass(frozen=True)
class ResampleUpscaler:
    """An upscaler that is a plain PIL resampling filter ("Lanczos", "Nearest")."""

    name: str
    resample: Image.Resampling

    def upscale(self, img: Image.Image, scale: float) -> Image.Image:
        """Resizes to ``int(size * scale)`` with the filter."""
        return img.resize((int(img.width * scale), int(img.height * scale)), resample=self.resample)


@dataclass(frozen=True)
class NoneUpscaler:
    """A1111's "None": leaves the image as it is."""

    name: str = "None"

    def upscale(self, img: Image.Image, scale: float) -> Image.Image:
        """Returns ``img`` unchanged."""
        return img


BUILTIN_OWNER = "builtin"


def builtin_upscalers() -> tuple[Upscaler, ...]:
    """The upscalers every installation has: "None", "Lanczos", "Nearest"."""
    return (
        NoneUpscaler(),
        ResampleUpscaler("Lanczos", Image.Resampling.LANCZOS),
        ResampleUpscaler("Nearest", Image.Resampling.NEAREST),
    )


class UpscalerRegistry:
    """Upscalers by name, each recorded with the owner (``"builtin"``, an extension id) that registered it."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Upscaler, str]] = {}

    @classmethod
    def with_builtins(cls) -> UpscalerRegistry:
        """A registry holding :func:`builtin_upscalers`."""
        registry = cls()
        for upscaler in builtin_upscalers():
            registry.register(upscaler, owner=BUILTIN_OWNER)
        return registry

    def register(self, upscaler: Upscaler, owner: str) -> None:
        """Adds ``upscaler``; a name already taken by another upscaler is refused."""
        if upscaler.name in self._entries:
            raise ValueError(f"an upscaler named {upscaler.name!r} is already registered")
        self._entries[upscaler.name] = (upscaler, owner)

    def unregister(self, name: str) -> None:
        """Removes the upscaler called ``name`` (no error when absent)."""
        self._entries.pop(name, None)

    def unregister_owner(self, owner: str) -> list[str]:
        """Removes everything ``owner`` registered; returns the removed names."""
        names = [name for name, (_, who) in self._entries.items() if who == owner]
        for name in names:
            del self._entries[name]
        return names

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def get(self, name: str, field: str = "upscaler") -> Upscaler:
        """The upscaler called ``name``; an unknown name raises :class:`InvalidParameter` for ``field``."""
        try:
            return self._entries[name][0]
        except KeyError:
            valid = ", ".join(self._entries) or "(none)"
            raise InvalidParameter(field, f"unknown upscaler {name!r}; valid: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


# --- resize modes ------------------------------------------------------------------------------------


def resize_mode_index(mode: int | str) -> int:
    """A1111's resize mode number (0-3) from the number or its name."""
    if isinstance(mode, str):
        if mode in RESIZE_MODES:
            return RESIZE_MODES.index(mode)
        if mode.isdigit():
            mode = int(mode)
    if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode < len(RESIZE_MODES):
        return mode
    choices = ", ".join(f"{i} {name!r}" for i, name in enumerate(RESIZE_MODES))
    raise InvalidParameter("resize_mode", f"unknown resize mode {mode!r}; valid: {choices}")


def _resolve_upscaler(upscaler: str | Upscaler | None, registry: UpscalerRegistry | None) -> Upscaler | None:
    if upscaler is None or (isinstance(upscaler, Upscaler) and not isinstance(upscaler, str)):
        return upscaler
    return (registry or UpscalerRegistry.with_builtins()).get(upscaler, field="upscaler")


def _resize_to(im: Image.Image, width: int, height: int, upscaler: Upscaler | None) -> Image.Image:
    """Resize to exactly ``width`` x ``height``: enlarge with ``upscaler`` first, then Lanczos to the size."""
    lanczos = Image.Resampling.LANCZOS
    if upscaler is None or upscaler.name == "None" or im.mode == "L":
        return im.resize((width, height), resample=lanczos)
    scale = max(width / im.width, height / im.height)
    if scale > 1.0:
        im = upscaler.upscale(im, scale)
    if im.size != (width, height):
        im = im.resize((width, height), resample=lanczos)
    return im


def resize_image(
    mode: int | str,
    im: Image.Image,
    width: int,
    height: int,
    upscaler: str | Upscaler | None = "Lanczos",
    *,
    registry: UpscalerRegistry | None = None,
) -> Image.Image:
    """Resizes ``im`` to ``width`` x ``height`` with one of A1111's resize modes.

    * 0 "Just resize": stretch to the size.
    * 1 "Crop and resize": scale to cover the size keeping the aspect ratio, crop the overflow centred.
    * 2 "Resize and fill": scale to fit inside, centre it, and fill the borders by stretching the edge
      rows or columns outwards.
    * 3 "Just resize (latent upscale)": the image is returned unchanged; the caller encodes it and resizes
      the latent with :func:`upscale_latent` (A1111 uses bilinear, i.e. ``"Latent"``).

    When enlarging, ``upscaler`` (a name from ``registry`` -- the built-ins by default -- or an
    :class:`Upscaler`) does the enlarging, then Lanczos adjusts to the exact size. ``"None"`` or ``None``
    means plain Lanczos, as do single-channel ("L") images such as masks.
    """
    index = resize_mode_index(mode)
    if not isinstance(im, Image.Image):
        raise InvalidParameter("init_images", "expected an image")
    if width <= 0 or height <= 0:
        raise InvalidParameter("width" if width <= 0 else "height", "must be positive")
    if index == LATENT_UPSCALE:
        return im.copy()
    im = _plain_mode(im)
    scaler = _resolve_upscaler(upscaler, registry)
    if index == JUST_RESIZE:
        return _resize_to(im, width, height, scaler)

    target_ratio = width / height
    source_ratio = im.width / im.height
    # "crop" scales so the image covers the target, "fill" so it fits inside it
    covers = index == CROP_AND_RESIZE
    match_width = (target_ratio > source_ratio) if covers else (target_ratio < source_ratio)
    if match_width:
        scaled_w, scaled_h = width, im.height * width // im.width
    else:
        scaled_w, scaled_h = im.width * height // im.height, height
    scaled = _resize_to(im, max(scaled_w, 1), max(scaled_h, 1), scaler)

    left = width // 2 - scaled.width // 2
    top = height // 2 - scaled.height // 2
    if covers:
        return scaled.crop((-left, -top, -left + width, -top + height))
    return _pad_with_edges(scaled, left, top, width, height)


def _plain_mode(im: Image.Image) -> Image.Image:
    """``im`` in L, RGB or RGBA, the modes the resize and fill arithmetic handles."""
    if im.mode in ("L", "RGB", "RGBA"):
        return im
    has_alpha = "A" in im.getbands() or "transparency" in im.info
    return im.convert("RGBA" if has_alpha else "RGB")


def _pad_with_edges(im: Image.Image, left: int, top: int, width: int, height: int) -> Image.Image:
    """Places ``im`` at (left, top) on a ``width`` x ``height`` canvas, repeating its edge pixels outward."""
    pixels = np.asarray(im)
    pad = [(top, height - top - im.height), (left, width - left - im.width)]
    pad += [(0, 0)] * (pixels.ndim - 2)
    return Image.fromarray(np.pad(pixels, pad, mode="edge"))


# --- latent upscaling ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentUpscaleMode:
    """torch ``interpolate`` settings behind one of A1111's "Latent ..." upscaler names."""

    mode: str
    antialias: bool = False


LATENT_UPSCALE_MODES = MappingProxyType(
    {
        "Latent": LatentUpscaleMode("bilinear"),
        "Latent (antialiased)": LatentUpscaleMode("bilinear", antialias=True),
        "Latent (bicubic)": LatentUpscaleMode("bicubic"),
        "Latent (bicubic antialiased)": LatentUpscaleMode("bicubic", antialias=True),
        "Latent (nearest)": LatentUpscaleMode("nearest"),
        "Latent (nearest-exact)": LatentUpscaleMode("nearest-exact"),
    }
)
LATENT_UPSCALE_DEFAULT = "Latent"


def upscale_latent(
    latent: torch.Tensor, mode: str, width: int, height: int, *, latent_factor: int = 8
) -> torch.Tensor:
    """Resizes a ``[B, C, h, w]`` latent to the latent size of a ``width`` x ``height`` picture."""
    try:
        settings = LATENT_UPSCALE_MODES[mode]
    except KeyError:
        valid = ", ".join(LATENT_UPSCALE_MODES)
        raise InvalidParameter(
            "hr_upscaler", f"unknown latent upscale mode {mode!r}; valid: {valid}"
        ) from None
    size = (height // latent_factor, width // latent_factor)
    if settings.antialias:
        return torch.nn.functional.interpolate(latent, size=size, mode=settings.mode, antialias=True)
    return torch.nn.functional.interpolate(latent, size=size, mode=settings.mode)


# --- grids -----------------------------------------------------------------------------------------


def grid_rows(count: int, *, batch_size: int = 1, n_rows: int = -1, prevent_empty_spots: bool = False) -> int:
    """Number of grid rows as A1111 picks it.

    ``n_rows`` is A1111's "Grid row count" setting: above 0 it is used as is, 0 means the batch size, and
    -1 (the default) autodetects ``round(sqrt(count))`` -- or, with "prevent empty spots", the largest
    divisor of ``count`` not above ``sqrt(count)``. Never more rows than images.
    """
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    elif prevent_empty_spots:
        rows = max(math.floor(math.sqrt(count)), 1)
        while count % rows:
            rows -= 1
    else:
        rows = round(math.sqrt(count))
    return max(1, min(rows, count))


def image_grid(
    images: Sequence[Image.Image],
    rows: int | None = None,
    *,
    batch_size: int = 1,
    n_rows: int = -1,
    prevent_empty_spots: bool = False,
) -> Image.Image:
    """Tiles ``images`` row by row on a black RGB canvas, every cell the size of the first image.

    ``rows`` overrides the layout; otherwise :func:`grid_rows` picks it from the settings.
    """
    if not images:
        raise InvalidParameter("images", "no images to put in a grid")
    if rows is None:
        rows = grid_rows(
            len(images), batch_size=batch_size, n_rows=n_rows, prevent_empty_spots=prevent_empty_spots
        )
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    cell_w, cell_h = images[0].size
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), color="black")
    for i, img in enumerate(images):
        grid.paste(img, box=((i % cols) * cell_w, (i // cols) * cell_h))
    return grid


# --- base64 ----------------------------------------------------------------------------------------


def decode_base64_image(data: str, field: str = "init_images") -> Image.Image:
    """Decodes a base64 image, with or without a ``data:image/...;base64,`` prefix.

    Anything unreadable raises :class:`InvalidParameter` naming ``field``.
    """
    if not isinstance(data, str) or not data.strip():
        raise InvalidParameter(field, "expected a base64-encoded image")
    payload = data.strip()
    if payload.startswith("data:"):
        _, sep, payload = payload.partition(",")
        if not sep:
            raise InvalidParameter(field, "data URL without a comma before the base64 payload")
    try:
        raw = base64.b64decode(payload, validate=False)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidParameter(field, f"not a readable image ({exc.__class__.__name__})") from None
    return image


def encode_png_base64(img: Image.Image, infotext: str | None = None) -> str:
    """PNG bytes of ``img`` as base64 (no ``data:`` prefix, as A1111's API returns them).

    ``infotext``, when given, goes into the ``parameters`` text chunk.
    """
    pnginfo = None
    if infotext:
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add_text("parameters", infotext)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- cheap latent preview --------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentToRGB:
    """A linear map from latent channels to RGB: ``rgb = sum_c latent[c] * factors[c] + bias``.

    ``factors``/``bias`` produce values in ``[-1, 1]`` when ``scale`` is 1, or in ``[0, 255]`` when
    ``scale`` is 255 (then ``bias`` is in that range too).
    """

    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0


# SD1.x/SD2.x: fitted by Kevin Turner (keturn), "Decoding latents to RGB without upscaling", Hugging Face
# forum, 2022 (discuss.huggingface.co/t/23204). Maps the sampler's latents to roughly [-1, 1].
_SD1_PREVIEW = LatentToRGB(
    factors=(
        (0.298, 0.207, 0.208),
        (0.187, 0.286, 0.173),
        (-0.158, 0.189, 0.264),
        (-0.184, -0.271, -0.473),
    )
)
# SDXL: Timothy Alexis Vass, "Explaining the SDXL latent space", Hugging Face blog, 2023; the same numbers
# are quoted in the diffusers documentation (pipeline callbacks). Maps latents straight to [0, 255].
_SDXL_PREVIEW = LatentToRGB(
    factors=((60.0, 60.0, 60.0), (-60.0, -5.0, 10.0), (25.0, 15.0, -5.0), (-70.0, -50.0, -35.0)),
    bias=(150.0, 140.0, 130.0),
    scale=255.0,
)
LATENT_PREVIEW_FACTORS = MappingProxyType({"sd1": _SD1_PREVIEW, "sd2": _SD1_PREVIEW, "sdxl": _SDXL_PREVIEW})


def latent_preview(latent: torch.Tensor, family: str) -> Image.Image:
    """A quick RGB preview of one latent (``[C, h, w]`` or the first of ``[B, C, h, w]``) at latent size.

    ``family`` is the model family: ``"sd1"``, ``"sd2"`` or ``"sdxl"`` (a refiner uses ``"sdxl"``).
    """
    key = family.lower()
    if key not in LATENT_PREVIEW_FACTORS:
        valid = ", ".join(LATENT_PREVIEW_FACTORS)
        raise InvalidParameter("family", f"no preview factors for {family!r}; valid: {valid}")
    spec = LATENT_PREVIEW_FACTORS[key]
    x = latent[0] if latent.dim() == 4 else latent
    if x.dim() != 3 or x.shape[0] != len(spec.factors):
        raise InvalidParameter(
            "latent", f"expected {len(spec.factors)} channels, got shape {tuple(latent.shape)}"
        )
    factors = torch.tensor(spec.factors, dtype=torch.float32)
    bias = torch.tensor(spec.bias, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", x.detach().float().cpu(), factors) + bias
    if spec.scale == 1.0:
        rgb = (rgb + 1.0) * 127.5
    pixels = rgb.round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)
