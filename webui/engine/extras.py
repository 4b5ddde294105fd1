"""The Extras tab / ``extra-single-image`` API: upscale images with registered upscalers."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from webui.engine.errors import InvalidParameter
from webui.engine.images import UpscalerRegistry, resize_image


@dataclass(frozen=True)
class ExtrasParams:
    """A1111's extras fields: resize_mode 0 = scale by, 1 = scale to."""

    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0


def target_size(image: Image.Image, p: ExtrasParams) -> tuple[int, int]:
    """The output size for ``image`` under ``p``."""
    if p.resize_mode == 0:
        if not 0 < p.upscaling_resize <= 8:
            raise InvalidParameter("upscaling_resize", f"must be in (0, 8], got {p.upscaling_resize}")
        return max(1, round(image.width * p.upscaling_resize)), max(
            1, round(image.height * p.upscaling_resize)
        )
    if p.resize_mode == 1:
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            v = getattr(p, name)
            if not 1 <= v <= 8192:
                raise InvalidParameter(name, f"must be between 1 and 8192, got {v}")
        return p.upscaling_resize_w, p.upscaling_resize_h
    raise InvalidParameter("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {p.resize_mode}")


def upscale(image: Image.Image, p: ExtrasParams, registry: UpscalerRegistry) -> tuple[Image.Image, str]:
    """Upscale one image; returns the image and A1111-style infotext (``Postprocess upscale by: 2, ...``)."""
    if not 0.0 <= p.extras_upscaler_2_visibility <= 1.0:
        raise InvalidParameter("extras_upscaler_2_visibility", "must be between 0 and 1")
    width, height = target_size(image, p)
    image = image.convert("RGB")
    up1 = registry.get(p.upscaler_1, "upscaler_1")
    mode = 1 if (p.resize_mode == 1 and p.upscaling_crop) else 0
    result = resize_image(mode, image, width, height, up1)
    info = {"Postprocess upscale by" if p.resize_mode == 0 else "Postprocess upscale to": (
        f"{p.upscaling_resize:g}" if p.resize_mode == 0 else f"{width}x{height}"),
        "Postprocess upscaler": up1.name}  # fmt: skip
    if p.upscaler_2 not in ("None", "") and p.extras_upscaler_2_visibility > 0:
        up2 = registry.get(p.upscaler_2, "upscaler_2")
        second = resize_image(mode, image, width, height, up2)
        result = Image.blend(result, second, p.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = up2.name
    return result, ", ".join(f"{k}: {v}" for k, v in info.items())
