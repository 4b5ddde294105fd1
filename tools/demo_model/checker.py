"""A pixel-level judge of demo-model pictures: background colour, main object's colour, shape, position.

* background: the median of the border pixels, snapped to the nearest palette colour;
* object colour: the most frequent palette colour (other than the background) among pixels close to a
  palette colour (anti-aliased edges are ignored);
* shape: from the largest blob of that colour, scale-free features of its bounding box -- a hole in the
  middle (ring), the share of the box's four corner regions covered (square: all four, triangle: the two
  bottom ones, circle and star: none) and the fill ratio (circle ~0.785, star ~0.4);
* position: the blob's centroid, snapped to the nearest named position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from tools.demo_model.dataset import COLOURS, PALETTE, POSITIONS, Scene

# A pixel counts for a palette colour when it is nearer than this (RGB Euclidean distance).
COLOUR_TOLERANCE = 70.0
BORDER = 2
_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)


@dataclass(frozen=True)
class ShapeFeatures:
    """Scale-free measurements of one blob (in its bounding box)."""

    fill: float  # blob area (holes filled) / bounding-box area
    hole: float  # enclosed hole area / filled area
    top_corners: float  # covered share of the two top corner regions
    bottom_corners: float  # covered share of the two bottom corner regions


@dataclass(frozen=True)
class Judgement:
    """What the checker sees in one picture (``None`` where nothing was found)."""

    background: str
    colour: str | None
    shape: str | None
    position: str | None
    object_share: float  # share of the picture covered by the main object's colour
    features: ShapeFeatures | None


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    return np.asarray(image, dtype=np.float32)


def nearest_colours(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index into :data:`COLOURS` of the nearest palette colour, and the distance to it."""
    distances = np.linalg.norm(pixels[..., None, :] - _PALETTE_ARRAY, axis=-1)
    return distances.argmin(axis=-1), distances.min(axis=-1)


def nearest_colour(rgb: np.ndarray | tuple[float, float, float]) -> str:
    """The palette name nearest to one RGB value."""
    index, _ = nearest_colours(np.asarray(rgb, dtype=np.float32)[None])
    return COLOURS[int(index[0])]


def background_colour(image: Image.Image | np.ndarray) -> str:
    """The palette colour of the picture's border (median of the outer pixels)."""
    pixels = _as_array(image)
    border = np.concatenate(
        [
            pixels[:BORDER].reshape(-1, 3),
            pixels[-BORDER:].reshape(-1, 3),
            pixels[:, :BORDER].reshape(-1, 3),
            pixels[:, -BORDER:].reshape(-1, 3),
        ]
    )
    return nearest_colour(np.median(border, axis=0))


def colour_share(image: Image.Image | np.ndarray, colour: str) -> float:
    """Share of pixels within :data:`COLOUR_TOLERANCE` of ``colour`` and nearest to it."""
    index, distance = nearest_colours(_as_array(image))
    return float(((index == COLOURS.index(colour)) & (distance < COLOUR_TOLERANCE)).mean())


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def shape_features(mask: np.ndarray) -> ShapeFeatures | None:
    """Measurements of a boolean blob mask; ``None`` when it is too small to judge."""
    filled = ndimage.binary_fill_holes(mask)
    ys, xs = np.nonzero(filled)
    if len(ys) < 12:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = filled[y0:y1, x0:x1]
    height, width = box.shape
    # pixel centres in [-1, 1] over the bounding box
    v = (np.arange(height) + 0.5) / height * 2 - 1
    u = (np.arange(width) + 0.5) / width * 2 - 1
    uu, vv = np.meshgrid(u, v)
    corner = np.abs(uu) + np.abs(vv) > 1.45
    top, bottom = corner & (vv < 0), corner & (vv > 0)
    area = float(filled.sum())
    return ShapeFeatures(
        fill=area / float(height * width),
        hole=float((filled & ~mask).sum()) / area,
        top_corners=float(box[top].mean()) if top.any() else 0.0,
        bottom_corners=float(box[bottom].mean()) if bottom.any() else 0.0,
    )


def classify_shape(features: ShapeFeatures) -> str:
    """The shape name that ``features`` fit best."""
    if features.hole > 0.12:
        return "ring"
    if features.top_corners > 0.45 and features.bottom_corners > 0.45:
        return "square"
    if features.bottom_corners > 0.25 and features.top_corners < 0.2 and features.fill < 0.68:
        return "triangle"
    if features.fill > 0.64:
        return "circle"
    return "star"


def nearest_position(x: float, y: float) -> str:
    """The named position nearest to the point ``(x, y)`` given in fractions of the image side."""
    return min(POSITIONS, key=lambda name: (POSITIONS[name][0] - x) ** 2 + (POSITIONS[name][1] - y) ** 2)


def judge(image: Image.Image | np.ndarray) -> Judgement:
    """Find the background, the main object's colour and shape, and where it is."""
    pixels = _as_array(image)
    background = background_colour(pixels)
    index, distance = nearest_colours(pixels)
    close = distance < COLOUR_TOLERANCE
    counts = np.bincount(index[close], minlength=len(COLOURS)).astype(np.float64)
    counts[COLOURS.index(background)] = 0
    if counts.max() < 6:
        return Judgement(background, None, None, None, 0.0, None)
    colour_index = int(counts.argmax())
    mask = _largest_blob(close & (index == colour_index))
    features = shape_features(mask)
    ys, xs = np.nonzero(mask)
    side_y, side_x = mask.shape
    position = nearest_position((xs.mean() + 0.5) / side_x, (ys.mean() + 0.5) / side_y)
    return Judgement(
        background=background,
        colour=COLOURS[colour_index],
        shape=classify_shape(features) if features is not None else None,
        position=position,
        object_share=float(counts[colour_index] / index.size),
        features=features,
    )


@dataclass(frozen=True)
class Verdict:
    """Whether a picture matches the scene its prompt described (for the main object)."""

    colour: bool
    shape: bool
    background: bool
    position: bool


def check(image: Image.Image | np.ndarray, scene: Scene) -> Verdict:
    """Compare the judged picture with the scene's main object and background."""
    seen = judge(image)
    return Verdict(
        colour=seen.colour == scene.main.colour,
        shape=seen.shape == scene.main.shape,
        background=seen.background == scene.background,
        position=seen.position == scene.main.position,
    )
