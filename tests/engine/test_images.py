"""Resize modes, upscalers, latent upscaling, grids, base64, previews and inpainting masks."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine import images, masks
from webui.engine.errors import InvalidParameter
from webui.engine.images import UpscalerRegistry, image_grid, resize_image


def gradient(width: int, height: int) -> Image.Image:
    """Every pixel distinct enough: R follows x, G follows y."""
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).round().astype(np.uint8)
    return Image.fromarray(rgb)


def solid(width: int, height: int, color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int32)


# --- resize modes -------------------------------------------------------------------------------


def test_resize_mode_names_and_numbers() -> None:
    assert images.RESIZE_MODES[2] == "Resize and fill"
    assert images.resize_mode_index("Crop and resize") == 1
    assert images.resize_mode_index(3) == 3
    with pytest.raises(InvalidParameter) as info:
        images.resize_mode_index(7)
    assert info.value.field == "resize_mode" and "Just resize" in info.value.message


def test_just_resize_stretches_to_exact_size() -> None:
    out = resize_image(0, gradient(64, 32), 48, 48)
    assert out.size == (48, 48)


def test_crop_and_resize_keeps_the_centre() -> None:
    im = solid(200, 100, (0, 0, 255))
    im.paste(solid(100, 100, (255, 0, 0)), (50, 0))
    out = resize_image("Crop and resize", im, 100, 100)
    assert out.size == (100, 100)
    assert (pixels(out) == [255, 0, 0]).all()


def test_resize_and_fill_stretches_edge_rows_into_the_borders() -> None:
    im = gradient(100, 50)
    out = pixels(resize_image(2, im, 100, 101))
    src = pixels(im)
    top = 101 // 2 - 50 // 2  # 25 rows above, 26 below
    assert (out[top : top + 50] == src).all()
    assert (out[:top] == src[0]).all()
    assert (out[top + 50 :] == src[-1]).all()


def test_resize_and_fill_on_the_sides() -> None:
    im = gradient(20, 40)
    out = pixels(resize_image(2, im, 40, 40))
    assert (out[:, 10:30] == pixels(im)).all()
    assert (out[:, :10] == pixels(im)[:, :1]).all()
    assert (out[:, 30:] == pixels(im)[:, -1:]).all()


def test_latent_upscale_mode_leaves_the_image_alone() -> None:
    im = gradient(30, 20)
    out = resize_image(3, im, 64, 64)
    assert out.size == (30, 20) and out is not im


class RecordingUpscaler:
    name = "Recorder"

    def __init__(self) -> None:
        self.scales: list[float] = []

    def upscale(self, img: Image.Image, scale: float) -> Image.Image:
        self.scales.append(scale)
        return img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.NEAREST)


def test_upscaler_used_only_when_enlarging() -> None:
    up = RecordingUpscaler()
    assert resize_image(0, gradient(32, 32), 64, 48, upscaler=up).size == (64, 48)
    assert up.scales == [2.0]
    resize_image(0, gradient(32, 32), 16, 16, upscaler=up)
    assert up.scales == [2.0]


def test_none_upscaler_is_plain_lanczos() -> None:
    im = gradient(32, 32)
    expected = im.resize((64, 64), Image.Resampling.LANCZOS)
    assert (pixels(resize_image(0, im, 64, 64, upscaler="None")) == pixels(expected)).all()


def test_upscaler_registry_builtins_owners_and_unknown_names() -> None:
    registry = UpscalerRegistry.with_builtins()
    assert registry.names() == ["None", "Lanczos", "Nearest"]
    registry.register(RecordingUpscaler(), owner="ext-esrgan")
    assert "Recorder" in registry
    assert registry.unregister_owner("ext-esrgan") == ["Recorder"]
    assert "Recorder" not in registry and len(registry) == 3
    with pytest.raises(InvalidParameter) as info:
        registry.get("4x-UltraSharp")
    assert "Lanczos" in info.value.message and "Nearest" in info.value.message
    with pytest.raises(ValueError):
        registry.register(images.NoneUpscaler(), owner="other")


def test_nearest_upscaler_repeats_pixels() -> None:
    tiny = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))
    out = pixels(UpscalerRegistry.with_builtins().get("Nearest").upscale(tiny, 2))
    assert out.shape == (2, 4, 3)
    assert (out[:, :2] == 0).all() and (out[:, 2:] == 255).all()


# --- latent upscaling ---------------------------------------------------------------------------


def test_latent_upscale_names_sizes_and_values() -> None:
    assert tuple(images.LATENT_UPSCALE_MODES) == (
        "Latent",
        "Latent (antialiased)",
        "Latent (bicubic)",
        "Latent (bicubic antialiased)",
        "Latent (nearest)",
        "Latent (nearest-exact)",
    )
    latent = torch.arange(4.0).reshape(1, 1, 2, 2).repeat(1, 4, 1, 1)
    for mode in images.LATENT_UPSCALE_MODES:
        assert images.upscale_latent(latent, mode, 32, 24).shape == (1, 4, 3, 4)
    nearest = images.upscale_latent(latent, "Latent (nearest)", 32, 32)
    assert torch.equal(
        nearest[0, 0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    )
    with pytest.raises(InvalidParameter) as info:
        images.upscale_latent(latent, "Latent (wrong)", 32, 32)
    assert "Latent (bicubic)" in info.value.message


# --- grids --------------------------------------------------------------------------------------


def test_grid_rows_follow_a1111_rules() -> None:
    assert [images.grid_rows(n) for n in (1, 2, 3, 4, 5, 6, 8, 9)] == [1, 1, 2, 2, 2, 2, 3, 3]
    assert images.grid_rows(6, prevent_empty_spots=True) == 2
    assert images.grid_rows(7, prevent_empty_spots=True) == 1
    assert images.grid_rows(6, n_rows=0, batch_size=3) == 3
    assert images.grid_rows(2, n_rows=5) == 2


def test_image_grid_layout_and_positions() -> None:
    colors = [(10 * i, 0, 0) for i in range(1, 6)]
    grid = image_grid([solid(8, 6, c) for c in colors])
    assert grid.size == (3 * 8, 2 * 6)  # 5 images: round(sqrt(5)) = 2 rows, 3 columns
    for i, color in enumerate(colors):
        assert grid.getpixel(((i % 3) * 8 + 4, (i // 3) * 6 + 3)) == color
    assert grid.getpixel((2 * 8 + 4, 6 + 3)) == (0, 0, 0)
    assert image_grid([solid(4, 4, (1, 2, 3))] * 4, rows=1).size == (16, 4)


# --- base64 -------------------------------------------------------------------------------------


def test_base64_round_trip_with_and_without_data_prefix() -> None:
    im = gradient(16, 8)
    encoded = images.encode_png_base64(im, infotext="a cat\nSteps: 20")
    for text in (encoded, "data:image/png;base64," + encoded):
        decoded = images.decode_base64_image(text)
        assert decoded.size == (16, 8)
        assert (pixels(decoded.convert("RGB")) == pixels(im)).all()
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).info["parameters"] == "a cat\nSteps: 20"


@pytest.mark.parametrize(
    "bad", ["", "not base64 !!!", base64.b64encode(b"plain text").decode(), "data:image/png"]
)
def test_unreadable_base64_is_an_invalid_parameter(bad: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        images.decode_base64_image(bad)
    assert info.value.field == "init_images"
    with pytest.raises(InvalidParameter) as info:
        images.decode_base64_image(bad, field="mask")
    assert info.value.field == "mask"


# --- latent preview -----------------------------------------------------------------------------


def test_latent_preview_applies_the_published_factors() -> None:
    latent = torch.zeros(1, 4, 2, 3)
    latent[0, 0] = 1.0
    sd1 = pixels(images.latent_preview(latent, "sd1"))
    assert sd1.shape == (2, 3, 3)
    # channel 1 alone: rgb = (0.298, 0.207, 0.208) in [-1, 1], i.e. (x + 1) * 127.5
    assert sd1[0, 0].tolist() == [round(1.298 * 127.5), round(1.207 * 127.5), round(1.208 * 127.5)]
    sdxl_zero = pixels(images.latent_preview(torch.zeros(4, 2, 2), "sdxl"))
    assert sdxl_zero[0, 0].tolist() == [150, 140, 130]
    sdxl_one = pixels(images.latent_preview(latent, "SDXL"))
    assert sdxl_one[0, 0].tolist() == [210, 200, 190]
    with pytest.raises(InvalidParameter):
        images.latent_preview(latent, "flux")


# --- masks --------------------------------------------------------------------------------------


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_prepare_mask_uses_alpha_inverts_and_keeps_binary_without_blur() -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    rgba.paste((255, 255, 255, 200), (2, 2, 5, 5))
    mask = masks.prepare_mask(rgba, blur=0)
    assert mask.mode == "L" and mask.getpixel((3, 3)) == 255 and mask.getpixel((8, 8)) == 0
    inverted = masks.prepare_mask(rgba, invert=True, blur=0)
    assert inverted.getpixel((3, 3)) == 0 and inverted.getpixel((8, 8)) == 255


def test_mask_blur_is_a_gaussian_of_a1111_kernel_width() -> None:
    impulse = Image.new("L", (21, 21), 0)
    impulse.putpixel((10, 10), 255)
    blurred = np.asarray(masks.prepare_mask(impulse, blur=(2, 0)), dtype=np.int32)
    radius = int(2.5 * 2 + 0.5)
    weights = [math.exp(-(d * d) / 8) for d in range(-radius, radius + 1)]
    for d in range(-radius, radius + 1):
        assert blurred[10, 10 + d] == round(255 * weights[d + radius] / sum(weights))
    assert blurred[10, 10 + radius + 1] == 0 and blurred[9].sum() == 0


def test_masked_region_pads_and_expands_to_aspect() -> None:
    mask = box_mask((512, 512), (100, 200, 150, 220))
    assert masks.mask_bounding_box(mask, 10) == (90, 190, 160, 230)
    assert masks.masked_region(mask, 10, 512, 512) == (90, 175, 160, 245)
    wide = masks.masked_region(mask, 0, 1024, 256)  # crop 50x20 is narrower than 4:1 -> widen to 80
    assert wide == (85, 200, 165, 220)
    edge = masks.masked_region(box_mask((64, 64), (0, 0, 40, 10)), 0, 512, 512)
    assert edge == (0, 0, 40, 40)
    assert masks.masked_region(Image.new("L", (8, 8)), 4, 64, 64) is None


def test_fill_masked_paints_hole_with_surroundings_and_keeps_the_rest() -> None:
    image = solid(64, 64, (255, 0, 0))
    image.paste(solid(32, 64, (0, 0, 255)), (32, 0))
    image.paste(solid(10, 10, (0, 255, 0)), (8, 27))  # content to be replaced
    mask = box_mask((64, 64), (6, 25, 20, 39))
    filled = pixels(masks.fill_masked(image, mask))
    r, g, b = filled[32, 13]
    assert r > 180 and g < 40 and b < 90
    keep = np.asarray(mask) == 0
    assert (filled[keep] == pixels(image)[keep]).all()
    with pytest.raises(InvalidParameter) as info:
        masks.fill_masked(image, Image.new("L", (32, 32)))
    assert info.value.field == "mask"


def test_apply_overlay_keeps_unmasked_pixels_exactly() -> None:
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    result = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    mask = masks.prepare_mask(box_mask((64, 48), (20, 10, 40, 30)), blur=3)
    out = pixels(masks.apply_overlay(result, original, mask))
    m = np.asarray(mask)
    assert (out[m == 0] == pixels(original)[m == 0]).all()
    assert (out[m == 255] == pixels(result)[m == 255]).all()
    partial = (m > 0) & (m < 255)
    assert partial.any()
    expected = (pixels(original) * (255 - m[..., None]) + pixels(result) * m[..., None]) / 255
    assert np.abs(out[partial] - expected[partial]).max() <= 0.5


def test_apply_overlay_only_masked_pastes_into_the_crop_box() -> None:
    rng = np.random.default_rng(1)
    original = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = box_mask((64, 64), (20, 20, 40, 40))
    crop = masks.masked_region(mask, 4, 32, 32)
    assert crop == (16, 16, 44, 44)
    generated = solid(32, 32, (7, 8, 9))
    out = pixels(masks.apply_overlay(generated, original, masks.overlay_mask(mask, True), crop))
    m = np.asarray(mask)
    assert (out[m == 0] == pixels(original)[m == 0]).all()
    assert (out[m == 255] == [7, 8, 9]).all()
    with pytest.raises(InvalidParameter) as info:
        masks.apply_overlay(generated, original, Image.new("L", (10, 10)), crop)
    assert info.value.field == "mask"
    with pytest.raises(InvalidParameter) as info:
        masks.apply_overlay("not an image", original, mask)  # type: ignore[arg-type]
    assert info.value.field == "init_images"


def test_overlay_mask_doubles_for_whole_picture() -> None:
    mask = Image.fromarray(np.array([[0, 60, 128, 200]], dtype=np.uint8))
    assert np.asarray(masks.overlay_mask(mask, False)).tolist() == [[0, 120, 255, 255]]
    assert np.asarray(masks.overlay_mask(mask, True)).tolist() == [[0, 60, 128, 200]]


def test_latent_mask_and_latent_fills() -> None:
    lmask = masks.latent_mask(box_mask((64, 64), (0, 0, 32, 64)), 8, 8)
    assert lmask.shape == (1, 1, 8, 8)
    assert (lmask[..., :4] == 1).all() and (lmask[..., 4:] == 0).all()
    latent = torch.full((1, 4, 8, 8), 2.0)
    noise = torch.full((1, 4, 8, 8), -1.0)
    nothing = masks.fill_latent(latent, lmask, "latent nothing")
    assert (nothing[..., :4] == 0).all() and (nothing[..., 4:] == 2).all()
    noised = masks.fill_latent(latent, lmask, 2, noise)
    assert (noised[..., :4] == -1).all() and (noised[..., 4:] == 2).all()
    assert torch.equal(masks.fill_latent(latent, lmask, "original"), latent)
    with pytest.raises(InvalidParameter) as info:
        masks.fill_latent(latent, lmask, "blur")
    assert "latent nothing" in info.value.message
