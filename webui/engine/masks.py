"""Inpainting masks as A1111 handles them.

Conventions: a mask is a single-channel ("L") image, white (255) where the picture is repainted. The
steps of one inpaint, in order:

1. :func:`prepare_mask` -- binarise an uploaded or drawn mask, invert it ("Inpaint not masked"), blur it.
2. "Only masked" inpaint area: :func:`masked_region` gives the crop box, grown by the padding and to the
   aspect ratio of the processing size.
3. Masked content "fill": :func:`fill_masked` paints the hole with blurred surrounding colours before
   encoding; "latent noise" / "latent nothing" act on the encoded latent through :func:`fill_latent`
   with the mask from :func:`latent_mask`.
4. :func:`apply_overlay` pastes the result back; pixels outside the mask keep their exact original values.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from webui.engine.errors import InvalidParameter
from webui.engine.images import CROP_AND_RESIZE, resize_image

INPAINTING_FILL_MODES = ("fill", "original", "latent noise", "latent nothing")
Box = tuple[int, int, int, int]

# radius and repeats of the successively finer blurs that "fill" lays over the hole
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def _require_image(image: object, field: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InvalidParameter(field, f"expected an image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise InvalidParameter(field, "the image is empty")
    return image


def _require_same_size(mask: Image.Image, image: Image.Image) -> None:
    if mask.size != image.size:
        raise InvalidParameter(
            "mask", f"mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}"
        )


def binary_mask(mask_image: Image.Image, round_alpha: bool = True) -> Image.Image:
    """The mask as "L": an RGBA image with real transparency uses its alpha (thresholded at 128 when
    ``round_alpha``), anything else its luminance."""
    mask_image = _require_image(mask_image, "mask")
    if mask_image.mode == "RGBA" and mask_image.getextrema()[-1] != (255, 255):
        alpha = mask_image.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_alpha else alpha
    return mask_image.convert("L")


def _gaussian_kernel(sigma: float) -> np.ndarray:
    # kernel width as A1111 sizes it for OpenCV: 2 * int(2.5 * sigma + 0.5) + 1 taps
    radius = int(2.5 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def _blur_axis(pixels: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(pixels, pad, mode="reflect" if pixels.shape[axis] > 1 else "edge")
    length = pixels.shape[axis]
    out = np.zeros_like(pixels, dtype=np.float64)
    for k, weight in enumerate(kernel):
        window = padded[:, k : k + length] if axis == 1 else padded[k : k + length, :]
        out += weight * window
    return out


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Gaussian blur of an "L" mask with separate horizontal and vertical sigmas (0 skips that axis)."""
    pixels = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur_x > 0:
        pixels = _blur_axis(pixels, blur_x, axis=1)
    if blur_y > 0:
        pixels = _blur_axis(pixels, blur_y, axis=0)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def prepare_mask(
    mask_image: Image.Image,
    invert: bool = False,
    blur: float | tuple[float, float] = 4,
    *,
    round_alpha: bool = True,
) -> Image.Image:
    """Binarises, optionally inverts ("Inpaint not masked") and blurs a mask (A1111's "Mask blur").

    ``blur`` is one sigma for both axes or ``(blur_x, blur_y)``.
    """
    mask = binary_mask(mask_image, round_alpha)
    if invert:
        mask = ImageOps.invert(mask)
    blur_x, blur_y = blur if isinstance(blur, (tuple, list)) else (blur, blur)
    if blur_x < 0 or blur_y < 0:
        raise InvalidParameter("mask_blur", "must not be negative")
    if blur_x > 0 or blur_y > 0:
        mask = blur_mask(mask, blur_x, blur_y)
    return mask


def mask_bounding_box(mask: Image.Image, padding: int = 0) -> Box | None:
    """Smallest box (x1, y1, x2, y2) holding every nonzero mask pixel, grown by ``padding`` and clipped to
    the mask; ``None`` for a blank mask."""
    box = _require_image(mask, "mask").convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (
        max(x1 - padding, 0),
        max(y1 - padding, 0),
        min(x2 + padding, mask.width),
        min(y2 + padding, mask.height),
    )


def _grow_span(lo: int, hi: int, desired: float, limit: int) -> tuple[int, int]:
    """Grows [lo, hi) symmetrically to ``desired`` length, shifting it back inside [0, limit]."""
    extra = int(desired - (hi - lo))
    lo -= extra // 2
    hi += extra - extra // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_to_aspect(box: Box, width: int, height: int, image_width: int, image_height: int) -> Box:
    """Grows ``box`` along one axis to the aspect ratio of ``width`` x ``height``, staying inside the image
    where it fits (A1111's expand_crop_region)."""
    x1, y1, x2, y2 = box
    target_ratio = width / height
    if (x2 - x1) / (y2 - y1) > target_ratio:
        y1, y2 = _grow_span(y1, y2, (x2 - x1) / target_ratio, image_height)
    else:
        x1, x2 = _grow_span(x1, x2, (y2 - y1) * target_ratio, image_width)
    return x1, y1, x2, y2


def masked_region(mask: Image.Image, padding: int, width: int, height: int) -> Box | None:
    """Crop box of the "Only masked" inpaint area: the mask's bounding box plus ``padding`` ("Only masked
    padding, pixels"), expanded to the ``width`` x ``height`` aspect ratio. ``None`` for a blank mask."""
    box = mask_bounding_box(mask, padding)
    if box is None:
        return None
    return expand_to_aspect(box, width, height, mask.width, mask.height)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the hole is painted with ever finer blurs of the unmasked surroundings.

    Unmasked pixels come back exactly as they were.
    """
    image = _require_image(image, "init_images")
    mask = _require_image(mask, "mask").convert("L")
    _require_same_size(mask, image)
    # premultiplied alpha: blurring spreads the known colours into the transparent hole without darkening
    known = Image.new("RGBa", image.size)
    known.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
    canvas = Image.new("RGBA", image.size)
    for radius, repeats in _FILL_PASSES:
        layer = known.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            canvas.alpha_composite(layer)
    return canvas.convert("RGB")


def overlay_mask(mask: Image.Image, only_masked: bool) -> Image.Image:
    """The mask :func:`apply_overlay` blends with: for "Whole picture" A1111 doubles the blurred mask so
    the repainted area reaches further into the blur; for "Only masked" it is the mask itself."""
    mask = mask.convert("L")
    if only_masked:
        return mask
    doubled = np.clip(np.asarray(mask, dtype=np.int32) * 2, 0, 255).astype(np.uint8)
    return Image.fromarray(doubled)


def apply_overlay(
    result: Image.Image, original: Image.Image, mask: Image.Image, crop_box: Box | None = None
) -> Image.Image:
    """Blends the generated ``result`` into ``original`` through ``mask`` (255 = generated).

    With ``crop_box`` ("Only masked") the result is first scaled into that box (crop and resize);
    otherwise it must have the original's size. Where the mask is 0 the original's pixels are kept
    exactly; the output is RGB.
    """
    result = _require_image(result, "init_images")
    original = _require_image(original, "init_images")
    mask = _require_image(mask, "mask").convert("L")
    _require_same_size(mask, original)
    base = original.convert("RGB")
    if crop_box is not None:
        x1, y1, x2, y2 = crop_box
        if not (0 <= x1 < x2 <= base.width and 0 <= y1 < y2 <= base.height):
            raise InvalidParameter(
                "mask", f"crop box {crop_box} lies outside the {base.width}x{base.height} image"
            )
        placed = base.copy()
        placed.paste(resize_image(CROP_AND_RESIZE, result.convert("RGB"), x2 - x1, y2 - y1), (x1, y1))
    elif result.size != base.size:
        raise InvalidParameter(
            "init_images",
            f"generated image is {result.width}x{result.height}, the original {base.width}x{base.height}",
        )
    else:
        placed = result.convert("RGB")
    weight = np.asarray(mask, dtype=np.uint32)[..., None]
    keep = np.asarray(base, dtype=np.uint32)
    new = np.asarray(placed, dtype=np.uint32)
    blended = (keep * (255 - weight) + new * weight + 127) // 255
    return Image.fromarray(blended.astype(np.uint8))


def latent_mask(
    mask: Image.Image, latent_width: int, latent_height: int, round_mask: bool = True
) -> torch.Tensor:
    """The mask at latent resolution as a ``[1, 1, h, w]`` float tensor, 1 where the latent is repainted
    (bicubic downscale, rounded to 0/1 when ``round_mask`` as A1111 does by default)."""
    small = (
        _require_image(mask, "mask")
        .convert("L")
        .resize((latent_width, latent_height), Image.Resampling.BICUBIC)
    )
    values = np.asarray(small, dtype=np.float32) / 255.0
    if round_mask:
        values = np.around(values)
    return torch.from_numpy(values)[None, None]


def inpainting_fill_index(mode: int | str) -> int:
    """A1111's ``inpainting_fill`` number (0 fill, 1 original, 2 latent noise, 3 latent nothing)."""
    if isinstance(mode, str) and mode in INPAINTING_FILL_MODES:
        return INPAINTING_FILL_MODES.index(mode)
    if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode < len(INPAINTING_FILL_MODES):
        return mode
    valid = ", ".join(f"{i} {name!r}" for i, name in enumerate(INPAINTING_FILL_MODES))
    raise InvalidParameter("inpainting_fill", f"unknown masked content {mode!r}; valid: {valid}")


def fill_latent(
    latent: torch.Tensor, mask: torch.Tensor, mode: int | str, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Applies a masked-content mode to an encoded init latent; ``mask`` is 1 where repainted.

    "fill" and "original" leave the latent alone (fill already acted on the pixels); "latent noise"
    replaces the masked part with ``noise``; "latent nothing" zeroes it.
    """
    index = inpainting_fill_index(mode)
    mask = mask.to(device=latent.device, dtype=latent.dtype)
    if index == 2:
        if noise is None:
            raise ValueError('"latent noise" needs a noise tensor')
        return latent * (1 - mask) + noise.to(device=latent.device, dtype=latent.dtype) * mask
    if index == 3:
        return latent * (1 - mask)
    return latent
