"""The Disco tab: its controls (Disco's names, in basic / advanced / animation sections) and the mapping
from their values to :class:`~.settings.DiscoSettings` and :class:`~.keyframes.AnimationSettings`.

The UI is laid out by the core from these specs (``api.add_ui_form_tab``); the HTTP route takes the same
names as JSON, so the tab and the API cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from webui.extensions.api import InvalidParameter

from .keyframes import AnimationSettings
from .prompts import parse_frame_prompts
from .schedules import SCHEDULE_PRESETS
from .settings import ENGINES, GUIDANCE_DECODERS, DiscoSettings

CUSTOM_PRESET = "custom"
INFOTEXT_PREFIX = "Disco: "
# Controls that are not settings of either record.
UI_ONLY = (
    "text_prompts_text",
    "image_prompts_text",
    "clip_models_text",
    "cut_preset",
    "reload_from",
    "init_upload",
)
ANIMATION_FIELDS = (
    "animation_mode", "max_frames", "angle", "zoom", "translation_x", "translation_y", "frames_scale",
    "frames_skip_steps", "fps", "resume",
)  # fmt: skip


def _lines(prompts: Mapping[int, Sequence[str]]) -> str:
    if list(prompts) == [0]:
        return "\n".join(prompts[0])
    return "\n".join(f"{frame}: {line}" for frame, lines in sorted(prompts.items()) for line in lines)


def controls(
    samplers: Sequence[str], schedules: Sequence[str], clip_names: Sequence[str]
) -> list[tuple[str, list]]:
    """The tab's sections ``(title, control specs)`` with the latent engine's defaults."""
    d = DiscoSettings.defaults("latent")
    a = AnimationSettings()
    schedule_choices = [s.lower() for s in schedules] if schedules else [d.schedule]
    return [
        ("Basic settings", [
            {"name": "text_prompts_text", "kind": "textarea", "label": "Text prompts (text:weight per line; "
             "'N:' starts the prompts of animation frame N)", "default": _lines(d.text_prompts)},
            {"name": "image_prompts_text", "kind": "textarea", "label": "Image prompts (path:weight per line; "
             "'N:' starts the prompts of animation frame N)", "default": ""},
            {"name": "engine", "kind": "radio", "label": "Engine", "choices": list(ENGINES), "default": d.engine},
            {"name": "batch_name", "kind": "textbox", "label": "Batch name", "default": d.batch_name},
            {"name": "steps", "kind": "slider", "label": "Steps", "default": d.steps, "minimum": 1, "maximum": 1000, "step": 1},
            {"name": "width", "kind": "slider", "label": "Width", "default": d.width, "minimum": 64, "maximum": 2048, "step": 8},
            {"name": "height", "kind": "slider", "label": "Height", "default": d.height, "minimum": 64, "maximum": 2048, "step": 8},
            {"name": "clip_guidance_scale", "kind": "number", "label": "clip_guidance_scale",
             "default": d.clip_guidance_scale, "minimum": 0},
            {"name": "seed", "kind": "number", "label": "Seed (-1: random)", "default": d.seed, "minimum": -1},
            {"name": "n_batches", "kind": "slider", "label": "n_batches", "default": d.n_batches, "minimum": 1, "maximum": 100, "step": 1},
            {"name": "clip_models_text", "kind": "textbox", "label": "CLIP models (comma separated; empty: "
             f"every installed one; installed: {', '.join(clip_names) or 'none'})", "default": ""},
            {"name": "init_upload", "kind": "image", "label": "Init image"},
            {"name": "skip_steps", "kind": "slider", "label": "skip_steps", "default": d.skip_steps, "minimum": 0, "maximum": 999, "step": 1},
            {"name": "init_scale", "kind": "number", "label": "init_scale", "default": d.init_scale, "minimum": 0},
            {"name": "reload_from", "kind": "textbox", "label": "Reload a run: path of its settings JSON or "
             "of one of its PNGs (replaces the fields of this tab)", "default": ""},
        ]),
        ("Advanced settings", [
            {"name": "sampler", "kind": "dropdown", "label": "Sampler (latent engine)",
             "choices": list(samplers) or [d.sampler], "default": d.sampler if d.sampler in samplers or not samplers else samplers[0]},
            {"name": "schedule", "kind": "dropdown", "label": "Schedule type", "choices": schedule_choices,
             "default": d.schedule if d.schedule in schedule_choices else schedule_choices[0]},
            {"name": "cfg_scale", "kind": "slider", "label": "CFG scale", "default": d.cfg_scale, "minimum": 1, "maximum": 30, "step": 0.5},
            {"name": "negative_prompt", "kind": "textbox", "label": "Negative prompt", "default": d.negative_prompt},
            {"name": "eta", "kind": "slider", "label": "eta", "default": d.eta, "minimum": 0, "maximum": 1, "step": 0.05},
            {"name": "tv_scale", "kind": "number", "label": "tv_scale", "default": d.tv_scale, "minimum": 0},
            {"name": "range_scale", "kind": "number", "label": "range_scale", "default": d.range_scale, "minimum": 0},
            {"name": "sat_scale", "kind": "number", "label": "sat_scale", "default": d.sat_scale, "minimum": 0},
            {"name": "cutn_batches", "kind": "slider", "label": "cutn_batches", "default": d.cutn_batches, "minimum": 1, "maximum": 32, "step": 1},
            {"name": "cut_preset", "kind": "dropdown", "label": "Cut schedule preset",
             "choices": [*SCHEDULE_PRESETS, CUSTOM_PRESET], "default": "default"},
            {"name": "cut_overview", "kind": "textbox", "label": "cut_overview (custom)", "default": d.cut_overview},
            {"name": "cut_innercut", "kind": "textbox", "label": "cut_innercut (custom)", "default": d.cut_innercut},
            {"name": "cut_ic_pow", "kind": "textbox", "label": "cut_ic_pow (custom)", "default": d.cut_ic_pow},
            {"name": "cut_icgray_p", "kind": "textbox", "label": "cut_icgray_p (custom)", "default": d.cut_icgray_p},
            {"name": "skip_augs", "kind": "checkbox", "label": "skip_augs", "default": d.skip_augs},
            {"name": "clamp_grad", "kind": "checkbox", "label": "clamp_grad", "default": d.clamp_grad},
            {"name": "clamp_max", "kind": "number", "label": "clamp_max", "default": d.clamp_max, "minimum": 0},
            {"name": "guide_every", "kind": "slider", "label": "Guide every N steps", "default": d.guide_every, "minimum": 1, "maximum": 20, "step": 1},
            {"name": "guidance_start", "kind": "slider", "label": "Guidance from (fraction of steps)", "default": d.guidance_start, "minimum": 0, "maximum": 1, "step": 0.05},
            {"name": "guidance_end", "kind": "slider", "label": "Guidance until (fraction of steps)", "default": d.guidance_end, "minimum": 0, "maximum": 1, "step": 0.05},
            {"name": "approximate_gradient", "kind": "checkbox", "label": "Approximate gradient (skip the UNet backward pass)", "default": d.approximate_gradient},
            {"name": "guidance_decoder", "kind": "radio", "label": "Decoder for the guidance path", "choices": list(GUIDANCE_DECODERS), "default": d.guidance_decoder},
            {"name": "use_horizontal_symmetry", "kind": "checkbox", "label": "use_horizontal_symmetry", "default": d.use_horizontal_symmetry},
            {"name": "use_vertical_symmetry", "kind": "checkbox", "label": "use_vertical_symmetry", "default": d.use_vertical_symmetry},
            {"name": "intermediate_saves", "kind": "slider", "label": "intermediate_saves (into partials/)",
             "default": 0, "minimum": 0, "maximum": 50, "step": 1},
            {"name": "display_rate", "kind": "slider", "label": "display_rate (preview every N steps)", "default": d.display_rate, "minimum": 1, "maximum": 100, "step": 1},
        ]),
        ("Animation", [
            {"name": "animation_mode", "kind": "radio", "label": "animation_mode", "choices": ["None", "2D"], "default": a.animation_mode},
            {"name": "max_frames", "kind": "slider", "label": "max_frames", "default": 10, "minimum": 1, "maximum": 10000, "step": 1},
            {"name": "angle", "kind": "textbox", "label": "angle", "default": a.angle},
            {"name": "zoom", "kind": "textbox", "label": "zoom", "default": a.zoom},
            {"name": "translation_x", "kind": "textbox", "label": "translation_x", "default": a.translation_x},
            {"name": "translation_y", "kind": "textbox", "label": "translation_y", "default": a.translation_y},
            {"name": "frames_scale", "kind": "number", "label": "frames_scale", "default": a.frames_scale, "minimum": 0},
            {"name": "frames_skip_steps", "kind": "textbox", "label": "frames_skip_steps", "default": a.frames_skip_steps},
            {"name": "fps", "kind": "slider", "label": "fps", "default": a.fps, "minimum": 1, "maximum": 60, "step": 1},
            {"name": "resume", "kind": "checkbox", "label": "Resume from the last saved frame", "default": a.resume},
        ]),
    ]  # fmt: skip


def settings_from_values(
    values: Mapping[str, Any],
) -> tuple[DiscoSettings, AnimationSettings, Image.Image | None]:
    """The tab's (or the API's) values -> the run's settings, its animation settings and an uploaded init.

    ``reload_from`` (a settings JSON or a PNG of an earlier run) replaces every disco setting."""
    values = dict(values)
    reload_from = str(values.pop("reload_from", "") or "").strip()
    init_upload = values.pop("init_upload", None)
    animation = {k: values.pop(k) for k in ANIMATION_FIELDS if k in values}
    if reload_from:
        settings = load_settings(reload_from)
    else:
        data = {k: v for k, v in values.items() if k not in UI_ONLY}
        if "text_prompts_text" in values:
            data["text_prompts"] = parse_frame_prompts(str(values["text_prompts_text"]))
        if str(values.get("image_prompts_text", "") or "").strip():
            data["image_prompts"] = parse_frame_prompts(str(values["image_prompts_text"]), "image_prompts")
        if "clip_models_text" in values:
            data["clip_models"] = [n.strip() for n in str(values["clip_models_text"]).split(",") if n.strip()]
        preset = values.get("cut_preset", CUSTOM_PRESET)
        if preset != CUSTOM_PRESET:
            for name in ("cut_overview", "cut_innercut", "cut_ic_pow", "cut_icgray_p"):
                data.pop(name, None)
        settings = DiscoSettings.from_dict(data, data.get("engine"))
        if preset != CUSTOM_PRESET:
            settings = settings.with_cut_preset(preset)
    if init_upload is not None and not isinstance(init_upload, Image.Image):
        raise InvalidParameter("init_upload", "expected an image")
    return settings, AnimationSettings.from_dict(animation), init_upload


def load_settings(source: str) -> DiscoSettings:
    """A run's settings from its settings JSON or from the ``Disco:`` entry in one of its PNGs."""
    path = Path(source)
    if not path.is_file():
        raise InvalidParameter("reload_from", f"file not found: {source}")
    if path.suffix.lower() == ".json":
        try:
            return DiscoSettings.load_json(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidParameter("reload_from", f"cannot read {source}: {exc}") from None
    try:
        with Image.open(path) as image:
            text = str(image.info.get("parameters", ""))
    except OSError as exc:
        raise InvalidParameter(
            "reload_from", f"{source} is neither a settings JSON nor an image ({exc})"
        ) from None
    return DiscoSettings.from_infotext_value(infotext_value(text, source))


def infotext_value(infotext: str, source: str = "infotext") -> str:
    """The value of the ``Disco:`` entry of an A1111 infotext (a quoted JSON string)."""
    start = infotext.rfind(INFOTEXT_PREFIX)
    if start < 0:
        raise InvalidParameter("reload_from", f"{source} has no Disco settings in its infotext")
    rest = infotext[start + len(INFOTEXT_PREFIX) :]
    try:
        value, _end = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as exc:
        raise InvalidParameter("reload_from", f"the Disco entry of {source} is damaged ({exc})") from None
    return value if isinstance(value, str) else json.dumps(value)
