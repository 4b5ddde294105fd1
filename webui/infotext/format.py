"""Write infotext: the PNG ``parameters`` text A1111 stores with every image.

Layout::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt>          (only when not empty)
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

Values holding ``,``, ``:`` or a newline are written as JSON strings; ``None`` values are left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping


def quote(value: object) -> str:
    """Render one value, JSON-quoting it when it contains ``,``, ``:`` or a newline (A1111's rule)."""
    text = str(value)
    if "," in text or ":" in text or "\n" in text:
        return json.dumps(value, ensure_ascii=False)
    return text


def format_params_line(params: Mapping[str, object]) -> str:
    """The ``Key: value, Key: value`` line; a value equal to its key is written as the bare key."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        parts.append(key if value == key else f"{key}: {quote(value)}")
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build the infotext for one image; ``params`` keeps its order (see :func:`generation_params`)."""
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params_line(params)}".strip()


def _number(value: float | int | None) -> float | int | None:
    """Whole floats as ints (``7.0`` -> ``7``), as the web UI's sliders write them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _size(width: int | None, height: int | None) -> str | None:
    if not width or not height or width <= 0 or height <= 0:
        return None
    return f"{width}x{height}"


def _hashes(value: Mapping[str, str] | str | None) -> str | None:
    """``{"name": "hash"}`` -> ``"name: hash, other: hash"`` (empty -> None)."""
    if not value:
        return None
    if isinstance(value, str):
        return value
    return ", ".join(f"{name}: {digest}" for name, digest in value.items())


def _omit_default(value: object, default: object) -> object:
    return None if value == default else value


def _merge(params: dict[str, object], fields: Mapping[str, object] | None) -> None:
    """Add extension fields; a key already present keeps its place and takes the new value."""
    for key, value in (fields or {}).items():
        params[key] = value


def generation_params(
    *,
    steps: int,
    sampler: str,
    schedule_type: str | None = None,
    cfg_scale: float,
    image_cfg_scale: float | None = None,
    seed: int,
    face_restoration: str | None = None,
    width: int,
    height: int,
    model_hash: str | None = None,
    model: str | None = None,
    vae_hash: str | None = None,
    vae: str | None = None,
    variation_seed: int | None = None,
    variation_seed_strength: float = 0.0,
    seed_resize_from: tuple[int, int] | None = None,
    denoising_strength: float | None = None,
    conditional_mask_weight: float | None = None,
    clip_skip: int = 1,
    ensd: int | None = None,
    token_merging_ratio: float | None = None,
    init_image_hash: str | None = None,
    rng: str | None = None,
    tiling: bool = False,
    early_extra: Mapping[str, object] | None = None,
    hires_checkpoint: str | None = None,
    hires_sampler: str | None = None,
    hires_prompt: str | None = None,
    hires_negative_prompt: str | None = None,
    hires_schedule_type: str | None = None,
    hires_upscale: float | None = None,
    hires_resize: tuple[int, int] | None = None,
    hires_steps: int | None = None,
    hires_upscaler: str | None = None,
    mask_mode: str | None = None,
    mask_blur: int | None = None,
    inpaint_area: str | None = None,
    masked_area_padding: int | None = None,
    masked_content: str | None = None,
    noise_multiplier: float | None = None,
    lora_hashes: Mapping[str, str] | str | None = None,
    ti_hashes: Mapping[str, str] | str | None = None,
    emphasis: str | None = None,
    extra: Mapping[str, object] | None = None,
    version: str | None = None,
    user: str | None = None,
) -> dict[str, object]:
    """The ordered infotext fields of a txt2img/img2img image, in A1111's key order.

    Fields at their default are left out as A1111 leaves them out: variation seed when its strength is
    0, clip skip 1, hires steps 0, RNG "GPU", emphasis "Original", mask mode "Inpaint masked", inpaint
    area "Whole picture" (and then its padding), masked content "original", hires resize 0x0 (then
    ``hires_upscale`` is written). Pass ``hires_prompt`` / ``hires_negative_prompt`` / ``hires_sampler``
    only when they differ from the first pass. Extension fields go where A1111 puts them:
    ``early_extra`` (recorded before the pass starts, e.g. ADetailer's) right after Tiling, ``extra``
    (recorded during or after sampling) just before Version; a key already present keeps its place and
    takes the new value.
    """
    params: dict[str, object] = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": schedule_type,
        "CFG scale": _number(cfg_scale),
        "Image CFG scale": _number(image_cfg_scale),
        "Seed": seed,
        "Face restoration": face_restoration,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model,
        "VAE hash": vae_hash,
        "VAE": vae,
        "Variation seed": None if not variation_seed_strength else variation_seed,
        "Variation seed strength": _number(variation_seed_strength) or None,
        "Seed resize from": _size(*seed_resize_from) if seed_resize_from else None,
        "Denoising strength": _number(denoising_strength),
        "Conditional mask weight": _number(conditional_mask_weight),
        "Clip skip": clip_skip if clip_skip > 1 else None,
        "ENSD": ensd or None,
        "Token merging ratio": _number(token_merging_ratio) or None,
        "Init image hash": init_image_hash,
        "RNG": _omit_default(rng, "GPU"),
        "Tiling": "True" if tiling else None,
    }
    _merge(params, early_extra)
    hires: dict[str, object] = {
        "Hires checkpoint": _omit_default(hires_checkpoint, "Use same checkpoint"),
        "Hires sampler": None if hires_sampler in (sampler, "Use same sampler") else hires_sampler,
        "Hires prompt": hires_prompt or None,
        "Hires negative prompt": hires_negative_prompt or None,
        "Hires schedule type": None if hires_schedule_type == schedule_type else hires_schedule_type,
    }
    params.update(hires)
    resize = f"{hires_resize[0]}x{hires_resize[1]}" if hires_resize and any(hires_resize) else None
    params["Hires upscale" if resize is None else "Hires resize"] = (
        _number(hires_upscale) if resize is None else resize
    )
    only_masked = inpaint_area == "Only masked"
    params.update(
        {
            "Hires steps": hires_steps or None,
            "Hires upscaler": hires_upscaler,
            "Mask mode": _omit_default(mask_mode, "Inpaint masked"),
            "Mask blur": mask_blur or None,
            "Inpaint area": "Only masked" if only_masked else None,
            "Masked area padding": masked_area_padding if only_masked else None,
            "Masked content": _omit_default(masked_content, "original"),
            "Lora hashes": _hashes(lora_hashes),
            "TI hashes": _hashes(ti_hashes),
            "Emphasis": _omit_default(emphasis, "Original"),
            "Noise multiplier": _omit_default(_number(noise_multiplier), 1),
        }
    )
    _merge(params, extra)
    params["Version"] = version
    params["User"] = user
    return {key: value for key, value in params.items() if value is not None}
