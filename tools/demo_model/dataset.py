"""Procedural scenes for the demo model: simple coloured shapes on a plain background, with captions.

A :class:`Scene` is pure data (background colour, one or two :class:`ShapeSpec` objects). It is drawn
anti-aliased (supersampled, then box-filtered down) and described by a small caption grammar, e.g.
"a large red circle on a blue background" or "a small yellow star at the top left on a white background".
Everything is a function of a seed: :func:`make_example` ``(seed, index)`` always returns the same picture.

About a tenth of all single-object scenes (chosen by a stable hash) are *held out*: training never shows
them, and the quality tests prompt with them (:func:`held_out_scenes`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLING = 4

# Well separated sRGB colours, so that a nearest-colour judge is unambiguous.
PALETTE: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 160, 50),
        "blue": (35, 70, 220),
        "yellow": (245, 220, 40),
        "purple": (130, 50, 180),
        "orange": (245, 140, 20),
        "white": (245, 245, 245),
        "black": (20, 20, 20),
        "pink": (250, 140, 200),
        "cyan": (40, 210, 220),
    }
)
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star", "ring")
SIZES = ("small", "large")
# Radius (half the extent) of a shape as a fraction of the image side.
SIZE_RADIUS = MappingProxyType({"small": 0.15, "large": 0.27})
# Centre of the shape as (x, y) fractions of the image side.
POSITIONS: MappingProxyType[str, tuple[float, float]] = MappingProxyType(
    {
        "centre": (0.5, 0.5),
        "left": (0.27, 0.5),
        "right": (0.73, 0.5),
        "top": (0.5, 0.27),
        "bottom": (0.5, 0.73),
        "top left": (0.27, 0.27),
        "top right": (0.73, 0.27),
        "bottom left": (0.27, 0.73),
        "bottom right": (0.73, 0.73),
    }
)
POSITION_PHRASES = MappingProxyType(
    {
        "centre": "in the centre",
        "left": "on the left",
        "right": "on the right",
        "top": "at the top",
        "bottom": "at the bottom",
        "top left": "at the top left",
        "top right": "at the top right",
        "bottom left": "at the bottom left",
        "bottom right": "at the bottom right",
    }
)
# Positions of two objects that never overlap (both objects are small in two-object scenes).
POSITION_PAIRS = (
    ("left", "right"),
    ("top", "bottom"),
    ("top left", "bottom right"),
    ("top right", "bottom left"),
    ("top left", "top right"),
    ("bottom left", "bottom right"),
)
RING_HOLE = 0.55  # inner radius / outer radius
STAR_INNER = 0.42  # inner radius / outer radius
TWO_OBJECT_SHARE = 0.25
HELD_OUT_MODULUS = 10


@dataclass(frozen=True)
class ShapeSpec:
    """One object of a scene."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """A plain background with one or two objects."""

    background: str
    objects: tuple[ShapeSpec, ...]

    @property
    def main(self) -> ShapeSpec:
        """The first (for single-object scenes, the only) object."""
        return self.objects[0]


@dataclass(frozen=True)
class Example:
    """A rendered scene with its caption."""

    image: Image.Image
    caption: str
    scene: Scene


def is_held_out(scene: Scene) -> bool:
    """True for scenes kept out of training (a stable hash of the single-object scene description)."""
    for obj in scene.objects:
        key = f"{obj.shape}|{obj.colour}|{obj.size}|{obj.position}|{scene.background}"
        if zlib.crc32(key.encode()) % HELD_OUT_MODULUS == 0:
            return True
    return False


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, *, allow_two: bool = True) -> Scene:
    """Draw a random scene; the object colours always differ from the background colour."""
    background = _choice(rng, COLOURS)
    others = tuple(c for c in COLOURS if c != background)
    if allow_two and rng.random() < TWO_OBJECT_SHARE:
        first, second = POSITION_PAIRS[int(rng.integers(len(POSITION_PAIRS)))]
        if rng.random() < 0.5:
            first, second = second, first
        objects = tuple(
            ShapeSpec(_choice(rng, SHAPES), _choice(rng, others), "small", where) for where in (first, second)
        )
        return Scene(background, objects)
    obj = ShapeSpec(
        _choice(rng, SHAPES),
        _choice(rng, others),
        _choice(rng, SIZES),
        _choice(rng, tuple(POSITIONS)),
    )
    return Scene(background, (obj,))


def _with_article(words: list[str]) -> str:
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _object_phrase(obj: ShapeSpec, with_size: bool, with_position: bool) -> str:
    words = [obj.size] if with_size else []
    words += [obj.colour, obj.shape]
    if with_position:
        words.append(POSITION_PHRASES[obj.position])
    return _with_article(words)


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """Describe ``scene``; with ``rng``, some details (size, position, background) may be left out.

    Without ``rng`` the caption is complete: "a large red circle in the centre on a blue background".
    """

    def keep(probability: float) -> bool:
        return rng is None or rng.random() < probability

    if len(scene.objects) == 1:
        text = _object_phrase(scene.main, keep(0.85), keep(0.75))
    else:
        with_position = keep(0.9)
        text = " and ".join(_object_phrase(obj, False, with_position) for obj in scene.objects)
    if keep(0.85):
        text += " on " + _with_article([scene.background, "background"])
    return text


def _star_points(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * STAR_INNER
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeSpec, side: int, background: str) -> None:
    fx, fy = POSITIONS[obj.position]
    cx, cy, r = fx * side, fy * side, SIZE_RADIUS[obj.size] * side
    fill = PALETTE[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif obj.shape == "star":
        # The star's bounding box is lower than wide; shift it so that it is centred like the others.
        draw.polygon(_star_points(cx, cy + 0.1 * r, 1.08 * r), fill=fill)
    elif obj.shape == "ring":
        inner = RING_HOLE * r
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=PALETTE[background])
    else:
        raise ValueError(f"shape: unknown value {obj.shape!r}; valid values are {', '.join(SHAPES)}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels, anti-aliased by supersampling."""
    side = size * SUPERSAMPLING
    canvas = Image.new("RGB", (side, side), PALETTE[scene.background])
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_object(draw, obj, side, scene.background)
    return canvas.resize((size, size), Image.Resampling.BOX)


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of example ``index`` in the stream of ``seed``."""
    return np.random.default_rng([seed, index])


def make_example(seed: int, index: int, *, size: int = IMAGE_SIZE, training: bool = True) -> Example:
    """Example ``index`` of the stream ``seed``: a training scene (never held out) with a varied caption.

    With ``training=False`` the scene may be held out and the caption is complete.
    """
    rng = example_rng(seed, index)
    scene = _draw_scene(rng, training)
    return Example(render(scene, size), caption(scene, rng if training else None), scene)


def _draw_scene(rng: np.random.Generator, training: bool) -> Scene:
    scene = sample_scene(rng)
    while training and is_held_out(scene):
        scene = sample_scene(rng)
    return scene


def training_scene(seed: int, index: int) -> Scene:
    """The scene of training example ``index`` of the stream ``seed`` (as :func:`make_example` draws it)."""
    return _draw_scene(example_rng(seed, index), True)


def make_batch(seed: int, start: int, count: int, *, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str]]:
    """Training examples ``start .. start+count-1`` as uint8 ``[count, size, size, 3]`` and captions."""
    examples = [make_example(seed, start + i, size=size) for i in range(count)]
    return np.stack([np.asarray(e.image) for e in examples]), [e.caption for e in examples]


def all_single_scenes() -> list[Scene]:
    """Every single-object scene, in a fixed order."""
    return [
        Scene(bg, (ShapeSpec(shape, colour, size, where),))
        for bg in COLOURS
        for colour in COLOURS
        if colour != bg
        for shape in SHAPES
        for size in SIZES
        for where in POSITIONS
    ]


def held_out_scenes(count: int, seed: int = 0) -> list[Scene]:
    """``count`` held-out single-object scenes, a seeded sample spread over shapes and colours."""
    pool = [scene for scene in all_single_scenes() if is_held_out(scene)]
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[int(i)] for i in order[:count]]
