"""The procedural dataset: determinism, caption grammar, held-out split and what the pictures show."""

from __future__ import annotations

import numpy as np
import pytest

from tools.demo_model.dataset import (
    COLOURS,
    PALETTE,
    POSITIONS,
    SHAPES,
    Scene,
    ShapeSpec,
    caption,
    held_out_scenes,
    is_held_out,
    make_batch,
    make_example,
    render,
)


def test_same_seed_same_pictures_and_captions() -> None:
    a_pixels, a_captions = make_batch(3, 10, 8)
    b_pixels, b_captions = make_batch(3, 10, 8)
    assert np.array_equal(a_pixels, b_pixels)
    assert a_captions == b_captions
    c_pixels, _ = make_batch(4, 10, 8)
    assert not np.array_equal(a_pixels, c_pixels)


def test_batch_shape_and_vocabulary() -> None:
    pixels, captions = make_batch(0, 0, 16)
    assert pixels.shape == (16, 64, 64, 3) and pixels.dtype == np.uint8
    assert len(COLOURS) >= 8 and set(SHAPES) == {"circle", "square", "triangle", "star", "ring"}
    for text in captions:
        assert text.startswith(("a ", "an "))
        assert any(shape in text for shape in SHAPES)


def test_complete_caption_grammar() -> None:
    scene = Scene("blue", (ShapeSpec("circle", "red", "large", "centre"),))
    assert caption(scene) == "a large red circle in the centre on a blue background"
    corner = Scene("orange", (ShapeSpec("star", "yellow", "small", "top left"),))
    assert caption(corner) == "a small yellow star at the top left on an orange background"
    two = Scene(
        "white", (ShapeSpec("ring", "black", "small", "left"), ShapeSpec("square", "green", "small", "right"))
    )
    assert caption(two) == "a black ring on the left and a green square on the right on a white background"


def test_training_captions_sometimes_leave_details_out() -> None:
    scene = Scene("blue", (ShapeSpec("circle", "red", "large", "centre"),))
    texts = {caption(scene, np.random.default_rng(i)) for i in range(60)}
    assert "a large red circle in the centre on a blue background" in texts
    assert any("background" not in t for t in texts)
    assert any("large" not in t for t in texts)
    assert all("red circle" in t for t in texts)


@pytest.mark.parametrize("where", ["centre", "top left", "bottom right"])
def test_render_puts_the_object_where_the_caption_says(where: str) -> None:
    scene = Scene("black", (ShapeSpec("square", "white", "small", where),))
    pixels = np.asarray(render(scene)).astype(float)
    mask = np.linalg.norm(pixels - PALETTE["white"], axis=-1) < 30
    ys, xs = np.nonzero(mask)
    fx, fy = POSITIONS[where]
    assert abs((xs.mean() + 0.5) / 64 - fx) < 0.02 and abs((ys.mean() + 0.5) / 64 - fy) < 0.02
    # the background is untouched in the opposite corner, and the border is the background colour
    assert np.allclose(pixels[0, 0], PALETTE["black"])


def test_shapes_cover_the_expected_share_of_their_box() -> None:
    # analytic areas: square side 1.7r, circle pi r^2, triangle 2r * 1.8r / 2, ring pi r^2 (1 - 0.55^2)
    r = 0.27 * 64
    expected = {
        "square": (1.7 * r) ** 2,
        "circle": np.pi * r**2,
        "triangle": 1.8 * r**2,
        "ring": np.pi * r**2 * (1 - 0.55**2),
    }
    for shape, area in expected.items():
        scene = Scene("black", (ShapeSpec(shape, "white", "large", "centre"),))
        pixels = np.asarray(render(scene)).astype(float)
        coverage = (pixels[..., 0] - PALETTE["black"][0]) / (PALETTE["white"][0] - PALETTE["black"][0])
        assert coverage.sum() == pytest.approx(area, rel=0.04), shape


def test_anti_aliased_edges() -> None:
    scene = Scene("black", (ShapeSpec("circle", "white", "large", "centre"),))
    values = np.unique(np.asarray(render(scene))[..., 0])
    assert len(values) > 10  # intermediate edge values, not just two colours


def test_object_colour_differs_from_background() -> None:
    for index in range(200):
        scene = make_example(7, index).scene
        assert all(obj.colour != scene.background for obj in scene.objects)


def test_training_never_shows_held_out_scenes_and_tests_use_them() -> None:
    assert not any(is_held_out(make_example(0, i).scene) for i in range(300))
    held = held_out_scenes(50)
    assert len(held) == 50 and len(set(held)) == 50
    assert all(is_held_out(scene) for scene in held)
    assert {scene.main.shape for scene in held} == set(SHAPES)
    assert len({scene.main.colour for scene in held}) >= 8
