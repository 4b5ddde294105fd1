"""Validated generation parameters (A1111's field names and defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from webui.engine.errors import InvalidParameter

MAX_STEPS = 1000
# A1111's numbered choices (kept here, not imported from the torch-side modules, so the UI and API can
# validate without torch)
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
INPAINTING_FILL_MODES = ("fill", "original", "latent noise", "latent nothing")


@dataclass
class GenerationParams:
    """Everything one txt2img / img2img job needs. Field names follow A1111's API."""

    mode: str = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    clip_skip: int | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    # hires. fix
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    denoising_strength: float | None = None
    # img2img
    init_images: list[Image.Image] = field(default_factory=list)
    mask: Image.Image | None = None
    resize_mode: int = 0
    mask_blur: int = 4
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # values of extensions' controls, {extension id: {control name: value}} (checked by the extension host)
    extension_args: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_img2img(self) -> bool:
        """True for img2img / inpainting jobs."""
        return self.mode == "img2img"

    def hires_size(self) -> tuple[int, int]:
        """Target size of the hires. fix pass (A1111's rules for resize-to vs. scale-by)."""
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            return int(self.width * self.hr_scale) // 8 * 8, int(self.height * self.hr_scale) // 8 * 8
        if self.hr_resize_y == 0:
            return self.hr_resize_x, self.hr_resize_x * self.height // self.width // 8 * 8
        if self.hr_resize_x == 0:
            return self.hr_resize_y * self.width // self.height // 8 * 8, self.hr_resize_y
        return self.hr_resize_x, self.hr_resize_y


def finite_number(name: str, value: object) -> float:
    """``value`` as a finite float; anything else raises :class:`InvalidParameter` naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidParameter(name, f"must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InvalidParameter(name, f"must be a finite number, got {value!r}")
    return v


def validate(
    p: GenerationParams, *, max_size: int = 4096, max_batch_size: int = 64, max_batch_count: int = 100
) -> None:
    """Check every field; raises :class:`InvalidParameter` naming the first bad one."""
    if p.mode not in ("txt2img", "img2img"):
        raise InvalidParameter("mode", f"must be txt2img or img2img, got {p.mode!r}")
    for name in ("width", "height"):
        v = getattr(p, name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidParameter(name, f"must be an integer, got {v!r}")
        if v < 64 or v > max_size:
            raise InvalidParameter(name, f"must be between 64 and {max_size}, got {v}")
        if v % 8:
            raise InvalidParameter(name, f"must be a multiple of 8, got {v}")
    if not isinstance(p.steps, int) or p.steps < 1 or p.steps > MAX_STEPS:
        raise InvalidParameter("steps", f"must be an integer from 1 to {MAX_STEPS}, got {p.steps!r}")
    finite_number("cfg_scale", p.cfg_scale)
    if not 1 <= p.batch_size <= max_batch_size:
        raise InvalidParameter("batch_size", f"must be from 1 to {max_batch_size}, got {p.batch_size}")
    if not 1 <= p.n_iter <= max_batch_count:
        raise InvalidParameter("n_iter", f"must be from 1 to {max_batch_count}, got {p.n_iter}")
    if not 0.0 <= finite_number("subseed_strength", p.subseed_strength) <= 1.0:
        raise InvalidParameter("subseed_strength", f"must be between 0 and 1, got {p.subseed_strength}")
    for name in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "initial_noise_multiplier"):
        if getattr(p, name) is not None:
            finite_number(name, getattr(p, name))
    if (
        p.denoising_strength is not None
        and not 0.0 <= finite_number("denoising_strength", p.denoising_strength) <= 1.0
    ):
        raise InvalidParameter("denoising_strength", f"must be between 0 and 1, got {p.denoising_strength}")
    if p.clip_skip is not None and not 1 <= int(p.clip_skip) <= 12:
        raise InvalidParameter("clip_skip", f"must be from 1 to 12, got {p.clip_skip}")
    if p.enable_hr and not p.is_img2img:
        if finite_number("hr_scale", p.hr_scale) <= 0:
            raise InvalidParameter("hr_scale", "must be positive")
        w, h = p.hires_size()
        if not (64 <= w <= max_size and 64 <= h <= max_size):
            raise InvalidParameter("hr_scale", f"hires size {w}x{h} is outside 64..{max_size}")
        if p.hr_second_pass_steps < 0:
            raise InvalidParameter("hr_second_pass_steps", "must not be negative")
    if p.is_img2img:
        if not p.init_images:
            raise InvalidParameter("init_images", "img2img needs at least one init image")
        for im in p.init_images:
            if not isinstance(im, Image.Image):
                raise InvalidParameter("init_images", "init images must be images")
        if p.mask is not None:
            if not isinstance(p.mask, Image.Image):
                raise InvalidParameter("mask", "the mask must be an image")
            if p.mask.size != p.init_images[0].size:
                raise InvalidParameter(
                    "mask",
                    f"mask is {p.mask.width}x{p.mask.height} but the image is "
                    f"{p.init_images[0].width}x{p.init_images[0].height}",
                )
        if p.resize_mode not in range(len(RESIZE_MODES)):
            valid = ", ".join(f"{i} ({name})" for i, name in enumerate(RESIZE_MODES))
            raise InvalidParameter("resize_mode", f"unknown resize mode {p.resize_mode!r}; valid: {valid}")
        if p.inpainting_fill not in range(len(INPAINTING_FILL_MODES)):
            valid = ", ".join(f"{i} ({name})" for i, name in enumerate(INPAINTING_FILL_MODES))
            raise InvalidParameter(
                "inpainting_fill", f"unknown masked content {p.inpainting_fill!r}; valid: {valid}"
            )
        if p.mask_blur < 0:
            raise InvalidParameter("mask_blur", "must not be negative")
        if p.inpaint_full_res_padding < 0:
            raise InvalidParameter("inpaint_full_res_padding", "must not be negative")
