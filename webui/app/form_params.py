"""Turning the values of the generation forms into :class:`GenerationParams`, and infotexts back into values.

Pure functions (no Gradio): the tabs collect ``{field: value}`` with GenerationParams field names and call
:func:`generation_params`; "paste parameters" calls :func:`pasted_values`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from webui.engine.errors import InvalidParameter
from webui.engine.images import RESIZE_MODES
from webui.engine.masks import INPAINTING_FILL_MODES
from webui.engine.params import GenerationParams, finite_number
from webui.infotext.parse import infotext_to_params, parse_generation_parameters

MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"

INT_FIELDS = frozenset(
    {
        "steps", "width", "height", "batch_size", "n_iter", "seed", "subseed", "seed_resize_from_w",
        "seed_resize_from_h", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "mask_blur",
        "inpaint_full_res_padding",
    }
)  # fmt: skip
FLOAT_FIELDS = frozenset({"cfg_scale", "subseed_strength", "hr_scale", "denoising_strength"})
TEXT_FIELDS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "sampler_name",
        "scheduler",
        "hr_upscaler",
        "hr_prompt",
        "hr_negative_prompt",
    }
)

# Fields "paste parameters" fills, in the order of the txt2img form.
PASTE_FIELDS = (
    "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height", "cfg_scale", "seed",
    "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h", "enable_hr", "hr_upscaler",
    "hr_second_pass_steps", "denoising_strength", "hr_scale", "hr_resize_x", "hr_resize_y", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt", "mask_blur", "inpaint_full_res_padding",
    "inpainting_fill", "inpaint_full_res", "inpainting_mask_invert",
)  # fmt: skip

EXTENSION_PREFIX = "ext:"  # form keys of extension controls: ext:<extension id>:<control name>


def as_int(field: str, value: Any) -> int:
    """An integer form value; a fraction, text or nothing raises :class:`InvalidParameter`."""
    if isinstance(value, bool):
        raise InvalidParameter(field, f"must be a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidParameter(field, f"must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise InvalidParameter(field, f"must be a whole number, got {value!r}")
    return int(number)


def as_float(field: str, value: Any) -> float:
    """A numeric form value; text or nothing raises :class:`InvalidParameter`."""
    return finite_number(field, value)


def choice_index(field: str, value: Any, choices: Sequence[str]) -> int:
    """The position of ``value`` in ``choices``; unknown values list the valid ones."""
    if value in choices:
        return list(choices).index(value)
    raise InvalidParameter(field, f"unknown value {value!r}; valid: {', '.join(choices)}")


def extension_args(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{extension id: {control: value}}`` from the form's ``ext:<id>:<name>`` values."""
    result: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if not key.startswith(EXTENSION_PREFIX):
            continue
        owner, _, name = key[len(EXTENSION_PREFIX) :].partition(":")
        result.setdefault(owner, {})[name] = whole_number(value)
    return result


def whole_number(value: Any) -> Any:
    """Gradio numbers and sliders arrive as floats; whole ones become ints so integer controls check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def generation_params(mode: str, values: Mapping[str, Any]) -> GenerationParams:
    """Build the request of a Generate click from ``{GenerationParams field: form value}``.

    The UI-only key ``seed_extras`` says whether the "Extra" seed options are on; without it variation
    and resize-from values are ignored. img2img's choices come as their labels (``resize_mode``
    "Just resize", ``inpainting_fill`` "original", ...).
    """
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if name in INT_FIELDS:
            fields[name] = as_int(name, value)
        elif name in FLOAT_FIELDS:
            fields[name] = as_float(name, value)
        elif name in TEXT_FIELDS:
            fields[name] = "" if value is None else str(value)
    if not values.get("seed_extras", False):
        fields.pop("subseed", None)
        fields["subseed_strength"] = 0.0
        fields["seed_resize_from_w"] = fields["seed_resize_from_h"] = -1
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if fields.get(name) == 0:
            fields[name] = -1
    p = GenerationParams(mode=mode, **fields)
    p.styles = [str(s) for s in values.get("styles") or []]
    p.extension_args = extension_args(values)
    if mode == "txt2img":
        p.enable_hr = bool(values.get("enable_hr", False))
        if p.enable_hr:
            p.hr_sampler_name = _unless(values.get("hr_sampler_name"), SAME_SAMPLER)
            p.hr_scheduler = _unless(values.get("hr_scheduler"), SAME_SCHEDULER)
        else:
            p.denoising_strength = None
        return p
    p.resize_mode = choice_index("resize_mode", values.get("resize_mode", RESIZE_MODES[0]), RESIZE_MODES)
    p.inpainting_fill = choice_index(
        "inpainting_fill", values.get("inpainting_fill", "original"), INPAINTING_FILL_MODES
    )
    p.inpainting_mask_invert = choice_index(
        "inpainting_mask_invert", values.get("inpainting_mask_invert", MASK_MODES[0]), MASK_MODES
    )
    p.inpaint_full_res = (
        choice_index("inpaint_full_res", values.get("inpaint_full_res", INPAINT_AREAS[0]), INPAINT_AREAS) == 1
    )
    return p


def scaled_size(width: int, height: int, scale: Any) -> tuple[int, int]:
    """img2img "Resize by": the image size times ``scale``, rounded to multiples of 8."""
    factor = as_float("scale_by", scale)
    if factor <= 0:
        raise InvalidParameter("scale_by", f"must be positive, got {factor}")
    return max(8, round(width * factor / 8) * 8), max(8, round(height * factor / 8) * 8)


def _unless(value: Any, same: str) -> str | None:
    return None if value in (None, "", same) else str(value)


def apply_styles(prompt: str, negative: str, names: Sequence[str], styles: Any) -> tuple[str, str]:
    """``(prompt, negative)`` with the named styles of a :class:`StyleDatabase` applied (A1111's rules)."""
    names = list(names)
    return styles.apply_styles_to_prompt(prompt, names), styles.apply_negative_styles_to_prompt(
        negative, names
    )


def looks_like_infotext(text: str) -> bool:
    """Whether ``text`` ends with an infotext parameters line (``Steps: 20, Sampler: ...``)."""
    parsed = parse_generation_parameters(text, backfill=False)
    return len(parsed) - 2 >= 3


def pasted_values(
    text: str, samplers: Sequence[str], schedules: Sequence[str], upscalers: Sequence[str]
) -> dict[str, Any]:
    """The form values an infotext sets: ``{field: value}`` for :data:`PASTE_FIELDS` found in it.

    Dropdown values the UI does not offer (a sampler from an extension that is not installed) are left
    out, so the form keeps its current choice; ``seed_extras`` is set when variation or resize-from
    fields are present.
    """
    parsed = parse_generation_parameters(text)
    api = infotext_to_params(parsed)
    out: dict[str, Any] = {k: api[k] for k in PASTE_FIELDS if k in api}
    allowed = {
        "sampler_name": samplers,
        "scheduler": schedules,
        "hr_sampler_name": (SAME_SAMPLER, *samplers),
        "hr_scheduler": (SAME_SCHEDULER, *schedules),
        "hr_upscaler": upscalers,
    }
    for name, choices in allowed.items():
        if name in out and out[name] not in choices:
            del out[name]
    if "inpainting_fill" in out:
        out["inpainting_fill"] = INPAINTING_FILL_MODES[int(out["inpainting_fill"])]
    if "inpaint_full_res" in out:
        out["inpaint_full_res"] = INPAINT_AREAS[int(bool(out["inpaint_full_res"]))]
    if "inpainting_mask_invert" in out:
        out["inpainting_mask_invert"] = MASK_MODES[int(out["inpainting_mask_invert"])]
    out["seed_extras"] = any(k in parsed for k in ("Variation seed", "Seed resize from-1"))
    if not out["seed_extras"]:
        out.pop("subseed_strength", None)
    return out


def mask_from_layers(
    background: Image.Image | None, layers: Sequence[Image.Image | None]
) -> Image.Image | None:
    """The inpainting mask (L, 255 = repaint) of an image editor's drawing: every painted pixel of any
    layer; None when nothing was drawn."""
    if background is None:
        return None
    mask = Image.new("L", background.size, 0)
    for layer in layers:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != mask.size:
            alpha = alpha.resize(mask.size)
        mask.paste(255, mask=alpha.point(lambda a: 255 if a > 0 else 0))
    return mask if mask.getbbox() else None
