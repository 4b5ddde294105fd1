"""Disco 2D animation: keyframes, the 2D warp, the frame loop, videos and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.extensions.api import InvalidParameter

ZERO_MOTION = {"angle": 0.0, "zoom": 1.0, "translation_x": 0.0, "translation_y": 0.0}


def motion(**values: float) -> dict[str, float]:
    return {**ZERO_MOTION, **values}


def textured(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(h, w, 3)).astype(np.float32)


# --- keyframes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0: (1.0), 10: (1.05)", {0: 1.0, 10: 1.05}),
        ("0:(0)", {0: 0.0}),
        ("  0 : 1.5 ,  20:-2  ", {0: 1.5, 20: -2.0}),
        ("0: (-1e-2), 5: (+.5),", {0: -0.01, 5: 0.5}),
        ("0:(1) 7:(3)", {0: 1.0, 7: 3.0}),
        ("3: ( 2 )", {3: 2.0}),
    ],
)
def test_parse_keyframes_valid(disco, text, expected):
    assert disco("keyframes").parse_keyframes(text, "zoom") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0: (10*sin(2*3.14*t/10))", "expressions"),
        ("0: (2*t)", "not a plain number"),
        ("0: abc", "not a plain number"),
        ("-1: (0)", "non-negative"),
        ("1.5: (0)", "non-negative"),
        ("0: (1), 0: (2)", "twice"),
        ("0: (inf)", "not a plain number"),
        ("0: (1e999)", "not finite"),
        ("0 (1)", "cannot read"),
        ("0: ()", "not a plain number"),
    ],
)
def test_parse_keyframes_invalid_names_setting(disco, text, fragment):
    with pytest.raises(InvalidParameter) as info:
        disco("keyframes").parse_keyframes(text, "translation_x")
    assert info.value.field == "translation_x"
    assert fragment in info.value.message


def test_interpolate_keyframes_linear_and_constant_ends(disco):
    kf = disco("keyframes")
    values = kf.interpolate_keyframes({2: 1.0, 6: 3.0}, 9)
    np.testing.assert_allclose(values, [1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(kf.interpolate_keyframes({0: 1.04}, 4), [1.04] * 4)
    # Three keys, a falling segment, and a key past max_frames shaping the last frames' slope.
    np.testing.assert_allclose(kf.interpolate_keyframes({0: 0.0, 2: 4.0, 4: 0.0}, 5), [0, 2, 4, 2, 0])
    np.testing.assert_allclose(kf.interpolate_keyframes({0: 0.0, 10: 10.0}, 4), [0, 1, 2, 3])


def test_animation_settings_validation_and_round_trip(disco):
    kf = disco("keyframes")
    settings = kf.AnimationSettings.from_dict(
        {"animation_mode": "2D", "max_frames": 5.0, "zoom": "0: (1.1)", "frames_skip_steps": "50%"}
    )
    assert settings.max_frames == 5 and settings.skip_fraction == 0.5
    assert kf.AnimationSettings.from_dict(settings.to_dict()) == settings
    defaults = kf.AnimationSettings()
    assert (defaults.frames_scale, defaults.frames_skip_steps, defaults.skip_fraction) == (1500.0, "60%", 0.6)
    assert defaults.translation_x == "0: (0)" and defaults.zoom == "0: (1.04)"
    assert kf.AnimationSettings(frames_skip_steps=0.25).frames_skip_steps == "25%"
    series = kf.AnimationSettings(max_frames=3, angle="0: (0), 2: (10)").motion_series()
    np.testing.assert_allclose(series["angle"], [0, 5, 10])
    np.testing.assert_allclose(series["zoom"], [1.04] * 3)

    bad = [
        ({"animation_mode": "3D"}, "animation_mode", "not supported yet"),
        ({"animation_mode": "Video Input"}, "animation_mode", "not supported yet"),
        ({"animation_mode": "4D"}, "animation_mode", "must be one of"),
        ({"max_frames": 0}, "max_frames", "between"),
        ({"max_frames": 2.5}, "max_frames", "whole number"),
        ({"zoom": "0: (1), 5: (0)"}, "zoom", "greater than 0"),
        ({"angle": "0: (t)"}, "angle", "not a plain number"),
        ({"translation_y": "0: (10*sin(t))"}, "translation_y", "expressions"),
        ({"frames_skip_steps": "100%"}, "frames_skip_steps", "below 100%"),
        ({"frames_skip_steps": "sixty"}, "frames_skip_steps", "percentage"),
        ({"frames_scale": -1}, "frames_scale", "between"),
        ({"fps": 0}, "fps", "between"),
        ({"resume": "yes"}, "resume", "true or false"),
        ({"colour": 1}, "colour", "unknown"),
    ]
    for data, field, fragment in bad:
        with pytest.raises(InvalidParameter) as info:
            kf.AnimationSettings.from_dict(data)
        assert (info.value.field, fragment in info.value.message) == (field, True), data


# --- the 2D warp -------------------------------------------------------------------------------------


def test_warp_zero_motion_is_bit_exact_identity(disco):
    warp = disco("warp").Warp2D()
    image = textured() + np.float32(1e-3)  # values that are not whole numbers
    out = warp(image, 1, ZERO_MOTION)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.tobytes() == image.tobytes()
    assert out is not image


@pytest.mark.parametrize(("tx", "ty"), [(3, 0), (0, 2), (-5, 4), (17, -13), (16, 12)])
def test_warp_integer_translation_equals_np_roll(disco, tx, ty):
    warp = disco("warp").Warp2D()
    image = textured()
    out = warp(image, 1, motion(translation_x=float(tx), translation_y=float(ty)))
    expected = np.roll(image, shift=(ty, tx), axis=(0, 1))  # x right, y down, wrapped
    assert out.tobytes() == expected.tobytes()


def test_warp_half_pixel_translation_averages_neighbours(disco):
    warp = disco("warp").Warp2D()
    image = textured()
    out = warp(image, 1, motion(translation_x=0.5))
    expected = (image + np.roll(image, 1, axis=1)) / 2
    np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("size", [8, 9])
def test_warp_rotation_by_90_degrees_equals_rot90(disco, size):
    warp = disco("warp").Warp2D()
    image = textured(size, size)
    quarter = warp(image, 1, motion(angle=90.0))
    np.testing.assert_allclose(quarter, np.rot90(image, k=1, axes=(0, 1)), atol=1e-3)
    half = warp(image, 1, motion(angle=-180.0))
    np.testing.assert_allclose(half, np.rot90(image, k=2, axes=(0, 1)), atol=1e-3)
    # Off the quarter-turn fast path: 90 + 1e-9 degrees must agree within rounding too.
    nearly = warp(image, 1, motion(angle=90.0 + 1e-9))
    np.testing.assert_allclose(nearly, np.rot90(image, k=1, axes=(0, 1)), atol=1e-3)


def test_warp_zoom_scales_about_the_centre(disco):
    warp = disco("warp").Warp2D()
    # A horizontal ramp 0..15: zoom 2 about x = 7.5 maps output x to source 7.5 + (x - 7.5) / 2.
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[None, :, None], (4, 16, 3)).copy()
    out = warp(ramp, 1, motion(zoom=2.0))
    xs = np.arange(16)
    np.testing.assert_allclose(out[2, 4:12, 0], 7.5 + (xs[4:12] - 7.5) / 2, atol=1e-5)
    assert warp(ramp, 1, motion(zoom=1.0)).tobytes() == ramp.tobytes()
    # Disco's order: translate first, then zoom, so a 1 px move at zoom 2 moves the picture by 2 px.
    moved = warp(ramp, 1, motion(zoom=2.0, translation_x=1.0))
    np.testing.assert_allclose(moved[2, 4:12, 0], 7.5 + (xs[4:12] - 7.5) / 2 - 1, atol=1e-5)


def test_warp_rejects_bad_input(disco):
    warp_module = disco("warp")
    warp = warp_module.Warp2D()
    with pytest.raises(InvalidParameter) as info:
        warp(np.zeros((4, 4)), 1, ZERO_MOTION)
    assert info.value.field == "image"
    with pytest.raises(InvalidParameter) as info:
        warp(textured(), 1, {"angle": 0.0})
    assert info.value.field == "zoom"
    with pytest.raises(InvalidParameter) as info:
        warp(textured(), 1, motion(zoom=0.0))
    assert info.value.field == "zoom"


def test_repeated_warps_round_instead_of_drifting_darker(disco):
    warp_module = disco("warp")
    warp = warp_module.Warp2D()
    step = motion(angle=1.3, zoom=1.02, translation_x=0.37, translation_y=-0.61)
    rng = np.random.default_rng(1)
    start = np.clip(np.rint(rng.normal(128, 20, size=(24, 24, 3))), 0, 255).astype(np.float32)
    flat = np.full((24, 24, 3), 127, np.float32)

    def repeat(image: np.ndarray, quantise) -> np.ndarray:
        for _ in range(30):
            image = quantise(warp(image, 1, step)).astype(np.float32)
        return image

    rounded = repeat(start, lambda a: np.asarray(warp_module.to_pil(a)))
    truncated = repeat(start, lambda a: np.clip(a, 0, 255).astype(np.uint8))
    assert abs(rounded.mean() - start.mean()) < 0.5
    assert np.array_equal(repeat(flat, lambda a: np.asarray(warp_module.to_pil(a))), flat)
    # The same loop with truncation (the notebook's conversion) does drift darker: the check above can fail.
    assert start.mean() - truncated.mean() > 1.0


def test_to_pil_rounds_and_clips(disco):
    warp_module = disco("warp")
    array = np.array([[[0.49, 0.5001, 254.6], [-3.0, 300.0, 127.5]]], np.float32)
    assert np.asarray(warp_module.to_pil(array)).tolist() == [[[0, 1, 255], [0, 255, 128]]]


# --- the frame loop ----------------------------------------------------------------------------------


H, W = 12, 16


class FakeRenderer:
    """Frame 0: a gradient; later frames: the init image brightened by 10. Records every request."""

    def __init__(self) -> None:
        self.requests = []

    def __call__(self, request):
        self.requests.append(request)
        if request.init_image is None:
            ys, xs = np.mgrid[0:H, 0:W]
            base = np.stack([xs * 12, ys * 15, (xs + ys) * 6], axis=-1)
        else:
            base = np.asarray(request.init_image, np.float32) + 10
        return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def settings_for(disco, **overrides):
    values = {
        "animation_mode": "2D",
        "max_frames": 5,
        "translation_x": "0: (1), 2: (2)",
        "angle": "0: (0)",
        "zoom": "0: (1)",
        "frames_scale": 1000,
        "frames_skip_steps": "70%",
        "fps": 10,
    }
    values.update(overrides)
    return disco("keyframes").AnimationSettings.from_dict(values)


PROMPTS = {0: ["a red cube"], 3: ["a blue sphere", "trending"]}


def test_run_animation_writes_frames_mp4_and_gif(disco, tmp_path):
    animation, video = disco("animation"), disco("video")
    renderer = FakeRenderer()
    result = animation.run_animation(settings_for(disco), renderer, tmp_path, 40, PROMPTS)

    assert [p.name for p in result.frame_paths] == [f"frame_{i:04d}.png" for i in range(5)]
    assert all(p.is_file() for p in result.frame_paths)
    assert result.resumed_from is None
    assert video.count_video_frames(result.mp4_path) == 5
    assert video.count_video_frames(result.gif_path) == 5
    with Image.open(result.gif_path) as gif:
        assert gif.info["duration"] == 100 and gif.size == (W, H)

    assert [r.frame for r in renderer.requests] == [0, 1, 2, 3, 4]
    assert [r.seed for r in renderer.requests] == [40, 41, 42, 43, 44]
    assert [r.prompts for r in renderer.requests] == [("a red cube",)] * 3 + [
        ("a blue sphere", "trending")
    ] * 2
    first, second = renderer.requests[:2]
    assert (first.init_image, first.skip_fraction, first.init_scale) == (None, 0.0, 0.0)
    assert (second.skip_fraction, second.init_scale) == (0.7, 1000.0)
    assert [r.motion["translation_x"] for r in renderer.requests] == [1.0, 1.5, 2.0, 2.0, 2.0]

    # Frame 2's init image is frame 1 (as saved) moved 2 px right with wrap-around; frame 2 adds 10.
    frames = [np.asarray(Image.open(p), np.int64) for p in result.frame_paths]
    np.testing.assert_array_equal(np.asarray(renderer.requests[2].init_image), np.roll(frames[1], 2, axis=1))
    np.testing.assert_array_equal(frames[2], np.minimum(np.roll(frames[1], 2, axis=1) + 10, 255))


def test_run_animation_prompts_before_first_key_and_odd_sizes(disco, tmp_path):
    animation, video = disco("animation"), disco("video")
    assert animation.prompts_for_frame({2: ["late"], 5: ["later"]}, 0) == ("late",)
    assert animation.prompts_for_frame({2: ["late"], 5: ["later"]}, 9) == ("later",)

    def odd(request):
        return Image.new("RGB", (15, 9), (request.frame * 40, 20, 200))

    result = animation.run_animation(settings_for(disco, max_frames=3), odd, tmp_path, 0, {0: ["x"]})
    assert video.count_video_frames(result.mp4_path) == 3
    import imageio.v2 as imageio

    reader = imageio.get_reader(result.mp4_path)
    try:
        assert reader.get_meta_data()["size"] == (16, 10)  # padded to even for yuv420p
        assert abs(float(reader.get_data(2)[:, :, 0].mean()) - 80) < 4
    finally:
        reader.close()


def test_resume_after_interrupt_renders_only_missing_frames(disco, tmp_path):
    animation = disco("animation")
    reference = animation.run_animation(settings_for(disco), FakeRenderer(), tmp_path / "ref", 7, PROMPTS)

    class Stop(Exception):
        pass

    def stop_at_three(frame, max_frames):
        assert max_frames == 5
        if frame == 3:
            raise Stop

    interrupted = FakeRenderer()
    out = tmp_path / "run"
    with pytest.raises(Stop):
        animation.run_animation(settings_for(disco), interrupted, out, 7, PROMPTS, callback=stop_at_three)
    assert [r.frame for r in interrupted.requests] == [0, 1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]

    # Without resume the saved frames are not overwritten silently.
    with pytest.raises(InvalidParameter) as info:
        animation.run_animation(settings_for(disco), FakeRenderer(), out, 7, PROMPTS)
    assert info.value.field == "resume"

    resumed = FakeRenderer()
    result = animation.run_animation(settings_for(disco, resume=True), resumed, out, 7, PROMPTS)
    assert result.resumed_from == 3
    assert [(r.frame, r.seed) for r in resumed.requests] == [(3, 10), (4, 11)]
    for mine, theirs in zip(result.frame_paths, reference.frame_paths, strict=True):
        assert np.array_equal(np.asarray(Image.open(mine)), np.asarray(Image.open(theirs)))
    assert disco("video").count_video_frames(result.mp4_path) == 5


def test_resume_redoes_a_truncated_last_frame(disco, tmp_path):
    animation = disco("animation")
    reference = animation.run_animation(settings_for(disco), FakeRenderer(), tmp_path / "ref", 3, PROMPTS)
    out = tmp_path / "run"
    out.mkdir()
    for index in range(3):
        (out / f"frame_{index:04d}.png").write_bytes(reference.frame_paths[index].read_bytes())
    data = reference.frame_paths[3].read_bytes()
    (out / "frame_0003.png").write_bytes(data[: len(data) // 2])

    resumed = FakeRenderer()
    result = animation.run_animation(settings_for(disco, resume=True), resumed, out, 3, PROMPTS)
    assert result.resumed_from == 3
    assert [r.frame for r in resumed.requests] == [3, 4]
    assert result.frame_paths[3].read_bytes() == reference.frame_paths[3].read_bytes()


def test_run_animation_rejects_bad_arguments(disco, tmp_path):
    animation = disco("animation")
    cases = [
        ({"settings": settings_for(disco, animation_mode="None")}, "animation_mode"),
        ({"text_prompts": {}}, "text_prompts"),
        ({"text_prompts": {0: "a string, not a list"}}, "text_prompts"),
        ({"text_prompts": {-1: ["x"]}}, "text_prompts"),
        ({"base_seed": -1}, "seed"),
        ({"batch_name": "../escape"}, "batch_name"),
        ({"render_frame": lambda request: np.zeros((H, W, 3))}, "render_frame"),
    ]
    for overrides, field in cases:
        arguments = {
            "settings": settings_for(disco),
            "render_frame": FakeRenderer(),
            "out_dir": tmp_path / field,
            "base_seed": 0,
            "text_prompts": PROMPTS,
            **overrides,
        }
        with pytest.raises(InvalidParameter) as info:
            animation.run_animation(**arguments)
        assert info.value.field == field, overrides


def test_custom_warp_plugs_in(disco, tmp_path):
    animation = disco("animation")
    calls = []

    def flip(image: np.ndarray, frame: int, params) -> np.ndarray:
        calls.append((frame, sorted(params)))
        return image[::-1].copy()

    renderer = FakeRenderer()
    animation.run_animation(settings_for(disco, max_frames=2), renderer, tmp_path, 0, PROMPTS, warp=flip)
    assert calls == [(1, ["angle", "translation_x", "translation_y", "zoom"])]
    frame0 = np.asarray(Image.open(Path(tmp_path) / "frame_0000.png"))
    assert np.array_equal(np.asarray(renderer.requests[1].init_image), frame0[::-1])


def test_video_writers_reject_bad_input(disco, tmp_path):
    video = disco("video")
    small, large = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (8, 6)).save(small)
    Image.new("RGB", (10, 6)).save(large)
    cases = [
        (video.write_mp4, [], 12, "frames"),
        (video.write_gif, [small], 0, "fps"),
        (video.write_mp4, [small], float("nan"), "fps"),
        (video.write_mp4, [small, large], 12, "frames"),
        (video.write_gif, [small, large], 12, "frames"),
    ]
    for writer, paths, fps, field in cases:
        with pytest.raises(InvalidParameter) as info:
            writer(paths, tmp_path / "out.mp4", fps)
        assert info.value.field == field
