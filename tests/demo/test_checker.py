"""The pixel-level judge, on dataset pictures whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tools.demo_model.checker import (
    ShapeFeatures,
    background_colour,
    check,
    classify_shape,
    colour_share,
    judge,
    nearest_colour,
)
from tools.demo_model.dataset import PALETTE, SHAPES, Scene, ShapeSpec, make_example, render


def _single_object_examples(count: int, seed: int = 11) -> list:
    found, index = [], 0
    while len(found) < count:
        example = make_example(seed, index, training=False)
        index += 1
        if len(example.scene.objects) == 1:
            found.append(example)
    return found


def test_accuracy_on_dataset_pictures() -> None:
    examples = _single_object_examples(150)
    verdicts = [check(e.image, e.scene) for e in examples]
    assert np.mean([v.colour for v in verdicts]) >= 0.98
    assert np.mean([v.background for v in verdicts]) >= 0.98
    assert np.mean([v.shape for v in verdicts]) >= 0.90
    assert np.mean([v.position for v in verdicts]) >= 0.90


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", ["small", "large"])
def test_every_shape_recognised_even_slightly_blurred(shape: str, size: str) -> None:
    scene = Scene("blue", (ShapeSpec(shape, "yellow", size, "centre"),))
    image = render(scene).filter(ImageFilter.GaussianBlur(0.7))
    seen = judge(image)
    assert (seen.shape, seen.colour, seen.background) == (shape, "yellow", "blue")


def test_two_objects_judged_by_the_larger_one() -> None:
    scene = Scene(
        "white",
        (ShapeSpec("square", "red", "large", "left"), ShapeSpec("circle", "green", "small", "bottom right")),
    )
    seen = judge(render(scene))
    assert (seen.colour, seen.shape) == ("red", "square")


def test_noisy_colours_snap_to_the_palette() -> None:
    rng = np.random.default_rng(0)
    for name, rgb in PALETTE.items():
        noisy = np.clip(np.array(rgb) + rng.normal(0, 12, 3), 0, 255)
        assert nearest_colour(noisy) == name


def test_background_from_border_and_colour_share() -> None:
    pixels = np.zeros((64, 64, 3), np.uint8) + np.array(PALETTE["green"], np.uint8)
    pixels[16:48, 16:48] = PALETTE["purple"]
    image = Image.fromarray(pixels)
    assert background_colour(image) == "green"
    assert colour_share(image, "purple") == pytest.approx(0.25)
    assert colour_share(image, "red") == 0.0


def test_blank_picture_has_no_object() -> None:
    image = Image.new("RGB", (64, 64), PALETTE["cyan"])
    seen = judge(image)
    assert seen.background == "cyan" and seen.colour is None and seen.shape is None


def test_classify_shape_thresholds() -> None:
    assert classify_shape(ShapeFeatures(0.6, 0.3, 0.0, 0.0)) == "ring"
    assert classify_shape(ShapeFeatures(1.0, 0.0, 1.0, 1.0)) == "square"
    assert classify_shape(ShapeFeatures(0.5, 0.0, 0.0, 0.7)) == "triangle"
    assert classify_shape(ShapeFeatures(0.785, 0.0, 0.0, 0.0)) == "circle"
    assert classify_shape(ShapeFeatures(0.4, 0.0, 0.0, 0.05)) == "star"
