"""Read infotext back: A1111's "PNG Info" and "paste parameters".

:func:`parse_generation_parameters` follows A1111's reading of the text, including the defaults it fills
in for fields that older infotexts lack; :func:`infotext_to_params` maps the result onto the API's
request field names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

# One "Key: value" pair: the key starts with a word character; the value is a JSON string or runs to
# the next comma.
_KEY = r"\w[\w \-/]+"
_QUOTED_VALUE = r'"(?:\\.|[^\\"])+"'
_BARE_VALUE = r"[^,]*"
_PAIR = re.compile(rf"\s*({_KEY}):\s*({_QUOTED_VALUE}|{_BARE_VALUE})(?:,|$)")
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
_NEGATIVE_PREFIX = "Negative prompt:"
_MIN_PAIRS_ON_PARAMS_LINE = 3

# Schedule labels that old infotexts appended to the sampler name ("DPM++ 2M Karras"); longest first.
SCHEDULE_LABELS: tuple[str, ...] = (
    "Align Your Steps",
    "Polyexponential",
    "SGM Uniform",
    "Exponential",
    "KL Optimal",
    "Uniform",
    "Karras",
    "Simple",
    "Normal",
    "Beta",
    "DDIM",
)

_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("Clip skip", "1"),
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
    ("RNG", "GPU"),
)


def unquote(text: str) -> str:
    """Undo :func:`webui.infotext.format.quote` for a JSON-quoted value; other text is returned as is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def parse_params_line(line: str) -> dict[str, object]:
    """Parse a ``Key: value, ...`` line; ``WxH`` values become ``Key-1`` / ``Key-2`` ints."""
    result: dict[str, object] = {}
    for key, raw in _PAIR.findall(line):
        if not raw:
            continue  # A1111 drops empty values
        value = unquote(raw)
        size = _SIZE.match(value)
        if size is not None:
            result[f"{key}-1"] = int(size.group(1))
            result[f"{key}-2"] = int(size.group(2))
        else:
            result[key] = value
    return result


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    """Prompt and negative prompt from the lines before the parameters (each line stripped)."""
    texts = {"prompt": "", "negative": ""}
    part = "prompt"
    for raw in lines:
        line = raw.strip()
        if line.startswith(_NEGATIVE_PREFIX):
            part = "negative"
            line = line[len(_NEGATIVE_PREFIX) :].strip()
        # no separator while the text is still empty: leading blank lines vanish, as in A1111
        texts[part] += ("\n" if texts[part] else "") + line
    return texts["prompt"], texts["negative"]


def parse_generation_parameters(text: str, *, backfill: bool = True) -> dict[str, object]:
    """Parse an infotext into ``{"Prompt", "Negative prompt", key: value, ...}``.

    The last line holds the parameters only when it has at least three ``Key: value`` pairs; otherwise
    it belongs to the prompt. Values stay strings (JSON quotes removed) except ``WxH`` sizes, split into
    ``Key-1``/``Key-2`` ints. Unknown keys are kept. With ``backfill`` the fields old infotexts lack get
    A1111's defaults ("Clip skip" "1", "Schedule type" "Automatic", "Hires resize" 0x0, ...) and a
    sampler written with its schedule ("DPM++ 2M Karras") is split into Sampler and Schedule type.
    """
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < _MIN_PAIRS_ON_PARAMS_LINE:
        lines.append(last)
        last = ""
    prompt, negative = _split_prompts(lines)
    result = parse_params_line(last)
    result["Prompt"] = prompt
    result["Negative prompt"] = negative
    if backfill:
        _backfill(result)
    return result


def split_sampler_and_schedule(name: str) -> tuple[str, str | None]:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; a name without a schedule suffix -> (name, None)."""
    for label in SCHEDULE_LABELS:
        suffix = " " + label
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], label
    return name, None


def _old_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """First-pass size the pre-1.0 hires fix chose: about 512x512 pixels in the final aspect."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _restore_old_hires_fix(res: dict[str, object]) -> None:
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    width, height = _as_int(res.get("Size-1"), 512), _as_int(res.get("Size-2"), 512)
    first_w, first_h = _as_int(first_w, 0), _as_int(first_h, 0)
    if first_w == 0 or first_h == 0:
        first_w, first_h = _old_first_pass_size(width, height)
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _version_tuple(text: object) -> tuple[int, int, int] | None:
    match = _VERSION.match(str(text)) if text is not None else None
    return None if match is None else (int(match.group(1)), int(match.group(2)), int(match.group(3)))


def _uses_emphasis(text: str) -> bool:
    """Whether a prompt has an unescaped ``(`` or ``[``."""
    return re.search(r"(?<!\\)[(\[]", text) is not None


def _backfill(res: dict[str, object]) -> None:
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"], res["Hires resize-2"] = 0, 0
    for key, default in _DEFAULTS:
        res.setdefault(key, default)
    _restore_old_hires_fix(res)

    sampler, schedule = split_sampler_and_schedule(str(res.get("Sampler", "")))
    if schedule is not None:
        res["Sampler"], res["Schedule type"] = sampler, schedule
    res.setdefault("Schedule type", "Automatic")
    hires_sampler, hires_schedule = split_sampler_and_schedule(str(res["Hires sampler"]))
    if hires_schedule is not None:
        res["Hires sampler"] = hires_sampler if hires_sampler != res.get("Sampler") else "Use same sampler"
        if hires_schedule != res["Schedule type"]:
            res["Hires schedule type"] = hires_schedule

    prompts = f"{res['Prompt']}\n{res['Negative prompt']}"
    if "Emphasis" not in res and _uses_emphasis(prompts):
        res["Emphasis"] = "Original"
    version = _version_tuple(res.get("Version"))
    if version is not None and version < (1, 6, 0) and "[" in str(res["Prompt"]):
        res["Old prompt editing timelines"] = True


def _as_int(value: object, default: int) -> int:
    try:
        return int(float(str(value)))
    except (TypeError, ValueError):
        return default


def _to_int(value: object) -> int:
    return int(float(str(value)))


def _to_float(value: object) -> float:
    return float(str(value))


def _to_bool(value: object) -> bool:
    return str(value).strip().lower() == "true"


_INPAINTING_FILL: Mapping[str, int] = MappingProxyType(
    {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}
)

# (infotext key, API field, conversion)
_FIELD_MAP: tuple[tuple[str, str, Callable[[object], object]], ...] = (
    ("Prompt", "prompt", str),
    ("Negative prompt", "negative_prompt", str),
    ("Steps", "steps", _to_int),
    ("Sampler", "sampler_name", str),
    ("Schedule type", "scheduler", str),
    ("CFG scale", "cfg_scale", _to_float),
    ("Image CFG scale", "image_cfg_scale", _to_float),
    ("Seed", "seed", _to_int),
    ("Size-1", "width", _to_int),
    ("Size-2", "height", _to_int),
    ("Denoising strength", "denoising_strength", _to_float),
    ("Variation seed", "subseed", _to_int),
    ("Variation seed strength", "subseed_strength", _to_float),
    ("Seed resize from-1", "seed_resize_from_w", _to_int),
    ("Seed resize from-2", "seed_resize_from_h", _to_int),
    ("Hires upscale", "hr_scale", _to_float),
    ("Hires resize-1", "hr_resize_x", _to_int),
    ("Hires resize-2", "hr_resize_y", _to_int),
    ("Hires steps", "hr_second_pass_steps", _to_int),
    ("Hires upscaler", "hr_upscaler", str),
    ("Hires checkpoint", "hr_checkpoint_name", str),
    ("Hires sampler", "hr_sampler_name", str),
    ("Hires schedule type", "hr_scheduler", str),
    ("Hires prompt", "hr_prompt", str),
    ("Hires negative prompt", "hr_negative_prompt", str),
    ("Clip skip", "clip_skip", _to_int),
    ("Tiling", "tiling", _to_bool),
    ("Mask blur", "mask_blur", _to_int),
    ("Masked area padding", "inpaint_full_res_padding", _to_int),
    ("Conditional mask weight", "inpainting_mask_weight", _to_float),
    ("Noise multiplier", "initial_noise_multiplier", _to_float),
)

# (infotext key, setting name in override_settings, conversion)
_SETTING_MAP: tuple[tuple[str, str, Callable[[object], object]], ...] = (
    ("Model", "sd_model_checkpoint", str),
    ("VAE", "sd_vae", str),
    ("Clip skip", "CLIP_stop_at_last_layers", _to_int),
    ("ENSD", "eta_noise_seed_delta", _to_int),
    ("RNG", "randn_source", str),
    ("Emphasis", "emphasis", str),
    ("Token merging ratio", "token_merging_ratio", _to_float),
    ("Old prompt editing timelines", "use_old_scheduling", _to_bool),
)


def _convert_into(
    target: dict[str, object],
    parsed: Mapping[str, object],
    table: tuple[tuple[str, str, Callable[[object], object]], ...],
) -> None:
    for key, name, convert in table:
        if key not in parsed:
            continue
        try:
            target[name] = convert(parsed[key])
        except (TypeError, ValueError):
            continue  # a malformed value is skipped, as pasting skips fields it cannot read


def infotext_to_params(parsed: Mapping[str, object]) -> dict[str, object]:
    """Map parsed infotext onto the txt2img/img2img API fields, for "paste parameters".

    Unreadable values are skipped. Settings (model, VAE, clip skip, ENSD, RNG, emphasis, old prompt
    editing) also go into ``override_settings`` under A1111's setting names. ``enable_hr`` is set when
    the infotext has a denoising strength and a hires field.
    """
    params: dict[str, object] = {}
    _convert_into(params, parsed, _FIELD_MAP)
    if "Face restoration" in parsed:
        params["restore_faces"] = True
    if "Masked content" in parsed:
        params["inpainting_fill"] = _INPAINTING_FILL.get(str(parsed["Masked content"]), 1)
    if "Inpaint area" in parsed:
        params["inpaint_full_res"] = parsed["Inpaint area"] == "Only masked"
    if "Mask mode" in parsed:
        params["inpainting_mask_invert"] = int(parsed["Mask mode"] == "Inpaint not masked")
    has_resize = bool(params.get("hr_resize_x") or params.get("hr_resize_y"))
    has_hires = has_resize or any(key in parsed for key in ("Hires upscale", "Hires upscaler", "Hires steps"))
    params["enable_hr"] = "Denoising strength" in parsed and has_hires
    settings: dict[str, object] = {}
    _convert_into(settings, parsed, _SETTING_MAP)
    if "sd_model_checkpoint" not in settings and "Model hash" in parsed:
        settings["sd_model_checkpoint"] = str(parsed["Model hash"])
    if settings:
        params["override_settings"] = settings
    return params
