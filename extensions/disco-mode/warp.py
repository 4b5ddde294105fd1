"""Frame warps: how an animation frame moves the previous one before it is re-diffused.

A warp is any callable matching :class:`FrameWarp`: it takes the previous frame as an ``H x W x 3``
float32 array of 0..255 values, the frame number and that frame's motion values (a mapping from setting
name to number, e.g. ``{"angle": 0.0, "zoom": 1.04, "translation_x": 0.0, "translation_y": 0.0}``) and
returns the warped frame of the same shape. :class:`Warp2D` is Disco's 2D mode; a depth-based 3D warp
can plug in later as another class holding its depth model, reading its own keys from the mapping.

Conversion to PIL rounds (``np.rint``) instead of truncating, so repeated warps do not drift darker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np
from PIL import Image

from webui.extensions.api import InvalidParameter

# cos and sin of the exact quarter turns, so that 90-degree rotations land on the pixel grid.
_QUARTER_TURNS = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


class FrameWarp(Protocol):
    """Moves the previous frame for ``frame``; returns an array of the same shape (float32, 0..255)."""

    def __call__(self, image: np.ndarray, frame: int, params: Mapping[str, float]) -> np.ndarray: ...


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as a float32 ``H x W x 3`` array, or raise InvalidParameter."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InvalidParameter(name, f"expected an H x W x 3 array, got {type(image).__name__} {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidParameter(name, f"image is empty ({image.shape})")
    return image.astype(np.float32, copy=False)


def from_pil(image: Image.Image) -> np.ndarray:
    """A PIL image as an ``H x W x 3`` float32 array of 0..255 values."""
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def to_pil(image: np.ndarray) -> Image.Image:
    """An ``H x W x 3`` array of 0..255 values as an RGB PIL image, rounded to nearest (not truncated)."""
    array = check_image(image)
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "RGB")


def _motion_value(params: Mapping[str, float], key: str) -> float:
    if key not in params:
        raise InvalidParameter(key, f"the 2D warp needs a value for {key!r}; got {sorted(params)}")
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidParameter(key, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidParameter(key, f"must be finite, got {value!r}")
    return value


def _cos_sin(angle_degrees: float) -> tuple[float, float]:
    quarter = angle_degrees / 90.0
    if quarter == int(quarter):
        return _QUARTER_TURNS[int(quarter) % 4]
    radians = math.radians(angle_degrees)
    return math.cos(radians), math.sin(radians)


def sample_bilinear_wrap(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Sample ``image`` (H x W x C) at float pixel coordinates with bilinear weights and wrap-around edges.

    Integer coordinates return the pixel values exactly.
    """
    h, w = image.shape[:2]
    x0f = np.floor(xs)
    y0f = np.floor(ys)
    fx = (xs - x0f).astype(np.float32)[..., None]
    fy = (ys - y0f).astype(np.float32)[..., None]
    x0 = x0f.astype(np.int64) % w
    y0 = y0f.astype(np.int64) % h
    x1 = (x0 + 1) % w
    y1 = (y0 + 1) % h
    top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
    bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
    return ((1 - fy) * top + fy * bottom).astype(np.float32, copy=False)


class Warp2D:
    """Disco's 2D motion: translate, then rotate and zoom about the image centre, wrapping at the edges.

    Motion keys: ``angle`` (degrees, positive turns the picture counter-clockwise, as OpenCV/Disco),
    ``zoom`` (> 1 zooms in), ``translation_x`` (pixels, right) and ``translation_y`` (pixels, down).
    The centre is the geometric one, ``((W - 1) / 2, (H - 1) / 2)`` in pixel-centre coordinates (Disco's
    ``(W // 2, H // 2)`` is half a pixel off for even sizes), so a 90-degree turn of a square image is
    exactly ``np.rot90``. Zero motion returns the input values unchanged; integer translation equals
    ``np.roll``. Sampling is bilinear, with edges wrapped like OpenCV's ``BORDER_WRAP``.
    """

    def __call__(self, image: np.ndarray, frame: int, params: Mapping[str, float]) -> np.ndarray:
        """Return the warped copy of ``image`` (H x W x 3 float32) for ``frame``'s motion ``params``."""
        array = check_image(image)
        angle = _motion_value(params, "angle")
        zoom = _motion_value(params, "zoom")
        tx = _motion_value(params, "translation_x")
        ty = _motion_value(params, "translation_y")
        if zoom <= 0:
            raise InvalidParameter("zoom", f"must be greater than 0, got {zoom!r} at frame {frame}")
        if angle == 0 and zoom == 1 and tx == 0 and ty == 0:
            return array.copy()
        h, w = array.shape[:2]
        cx, cy = (w - 1) / 2, (h - 1) / 2
        cos, sin = _cos_sin(angle)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        dx, dy = xs - cx, ys - cy
        # Inverse of p = A (q + t - c) + c with A = zoom * [[cos, sin], [-sin, cos]] (OpenCV's rotation).
        src_x = (cos * dx - sin * dy) / zoom + cx - tx
        src_y = (sin * dx + cos * dy) / zoom + cy - ty
        return sample_bilinear_wrap(array, src_x, src_y)
