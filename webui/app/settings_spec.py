"""The settings shown in the Settings tab: A1111's option names, labels, sections and control kinds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webui.engine.prompts.emphasis import EMPHASIS_MODES
from webui.engine.seeds import RNG_SOURCES

QUICKSETTINGS_KEY = "quicksettings_list"
DEFAULT_QUICKSETTINGS = ("sd_model_checkpoint",)


@dataclass(frozen=True)
class SettingSpec:
    """One option: ``kind`` is checkbox, number, slider, text, radio or dropdown."""

    key: str
    label: str
    section: str
    kind: str
    choices: tuple[Any, ...] = ()
    minimum: float = 0
    maximum: float = 1
    step: float = 1
    default: Any = None  # the value before anyone changed it (core options take theirs from Options)


def _s(section: str, rows: tuple[tuple[Any, ...], ...]) -> tuple[SettingSpec, ...]:
    return tuple(SettingSpec(key, label, section, *rest) for key, label, *rest in rows)


IMAGE_FORMATS = ("png", "jpg", "webp")

SETTINGS: tuple[SettingSpec, ...] = (
    *_s("Saving images/grids", (
        ("samples_save", "Always save all generated images", "checkbox"),
        ("samples_format", "File format for images", "radio", IMAGE_FORMATS),
        ("samples_filename_pattern", "Images filename pattern", "text"),
        ("save_images_add_number", "Add number to filename when saving", "checkbox"),
        ("grid_save", "Always save all generated image grids", "checkbox"),
        ("grid_format", "File format for grids", "radio", IMAGE_FORMATS),
        ("grid_extended_filename", "Add extended info (seed, prompt) to filename when saving grid", "checkbox"),
        ("n_rows", "Grid row count; use -1 for autodetect and 0 for it to be same as batch size", "slider", (), -1, 16, 1),
        ("return_grid", "Show grid in gallery", "checkbox"),
        ("enable_pnginfo", "Save text information about generation parameters as chunks to png files", "checkbox"),
        ("jpeg_quality", "Quality for saved jpeg and webp images", "slider", (), 1, 100, 1),
        ("webp_lossless", "Use lossless compression for webp images", "checkbox"),
    )),
    *_s("Paths for saving", (
        ("outdir_samples", "Output directory for images; if empty, defaults to the folders below", "text"),
        ("save_to_dirs", "Save images to a subdirectory", "checkbox"),
        ("grid_save_to_dirs", "Save grids to a subdirectory", "checkbox"),
        ("directories_filename_pattern", "Directory name pattern", "text"),
        ("directories_max_prompt_words", "Max prompt words for [prompt_words] pattern", "slider", (), 1, 20, 1),
    )),
    *_s("Stable Diffusion", (
        ("sd_checkpoints_limit", "Maximum number of checkpoints loaded at the same time", "slider", (), 1, 10, 1),
        ("sd_checkpoint_cache", "Checkpoints to cache in RAM", "slider", (), 0, 10, 1),
        ("CLIP_stop_at_last_layers", "Clip skip", "slider", (), 1, 12, 1),
        ("emphasis", "Emphasis mode", "radio", EMPHASIS_MODES),
        ("use_old_scheduling", "Use old prompt editing timelines", "checkbox"),
        ("randn_source", "Random number generator source", "radio", RNG_SOURCES),
        ("img2img_fix_steps", "With img2img, do exactly the amount of steps the slider specifies", "checkbox"),
        ("initial_noise_multiplier", "Noise multiplier for img2img", "slider", (), 0.0, 1.5, 0.001),
        ("inpainting_mask_weight", "Inpainting conditioning mask strength", "slider", (), 0.0, 1.0, 0.01),
        ("sdxl_crop_top", "SDXL crop top coordinate", "number"),
        ("sdxl_crop_left", "SDXL crop left coordinate", "number"),
        ("sdxl_refiner_low_aesthetic_score", "SDXL low aesthetic score", "number"),
        ("sdxl_refiner_high_aesthetic_score", "SDXL high aesthetic score", "number"),
    )),
    *_s("Sampler parameters", (
        ("eta_ancestral", "Eta for k-diffusion samplers", "slider", (), 0.0, 1.0, 0.01),
        ("eta_ddim", "Eta for DDIM", "slider", (), 0.0, 1.0, 0.01),
        ("eta_noise_seed_delta", "Eta noise seed delta", "number"),
        ("s_churn", "sigma churn", "slider", (), 0.0, 100.0, 0.01),
        ("s_tmin", "sigma tmin", "slider", (), 0.0, 10.0, 0.01),
        ("s_tmax", "sigma tmax", "slider", (), 0.0, 999.0, 0.01),
        ("s_noise", "sigma noise", "slider", (), 0.0, 1.1, 0.001),
        ("sigma_min", "sigma min (0 = default)", "number"),
        ("sigma_max", "sigma max (0 = default)", "number"),
        ("rho", "rho (0 = default)", "number"),
        ("always_discard_next_to_last_sigma", "Always discard next-to-last sigma", "checkbox"),
    )),
    *_s("Optimizations", (
        ("cuda_graphs", "Replay the UNet as CUDA graphs: faster steps at small batch sizes, at the cost of keeping one "
                        "step's activations in VRAM per image size (up to 3 sizes)", "checkbox"),
    )),
    *_s("Upscaling", (
        ("ESRGAN_tile", "Tile size for ESRGAN upscalers; 0 = no tiling", "slider", (), 0, 512, 16),
        ("ESRGAN_tile_overlap", "Tile overlap for ESRGAN upscalers; low values = visible seam", "slider", (), 0, 48, 1),
    )),
    *_s("Live previews", (
        ("live_previews_enable", "Show live previews of the created image", "checkbox"),
        ("show_progress_every_n_steps", "Live preview display period (steps); -1 after each image, 0 off", "slider", (), -1, 32, 1),
        ("live_preview_content", "Live preview subject", "radio", ("Combined", "Prompt", "Negative prompt")),
        ("show_progress_type", "Live preview method", "radio", ("Full", "Approx cheap")),
    )),
    *_s("User interface", (
        (QUICKSETTINGS_KEY, "Quicksettings list (shown in the top bar)", "multiselect"),
        ("max_image_size", "Largest width / height allowed", "number"),
        ("max_batch_count", "Largest batch count", "number"),
        ("max_batch_size", "Largest batch size", "number"),
    )),
)  # fmt: skip

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(spec.section for spec in SETTINGS))


def spec_for(key: str) -> SettingSpec | None:
    """The spec of an option, or None."""
    return next((s for s in SETTINGS if s.key == key), None)


def coerce(spec: SettingSpec, value: Any, default: Any) -> Any:
    """A control's value in the option's own type (sliders and numbers come back as floats)."""
    if spec.kind == "checkbox":
        return bool(value)
    if spec.kind == "multiselect":
        return [str(v) for v in value or []]
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        return round(float(value))
    if isinstance(default, float):
        return float(value)
    return "" if value is None else str(value)


def extension_setting(spec: Any) -> SettingSpec:
    """The Settings tab's view of a setting an extension added (``api.add_setting``)."""
    default = spec.default
    if spec.choices:
        kind = "radio"
    elif isinstance(default, bool):
        kind = "checkbox"
    elif isinstance(default, (int, float)) and spec.minimum is not None and spec.maximum is not None:
        kind = "slider"
    elif isinstance(default, (int, float)):
        kind = "number"
    else:
        kind = "text"
    step = spec.step if spec.step is not None else (1 if isinstance(default, int) else 0.01)
    return SettingSpec(
        spec.name, spec.label, spec.section, kind, tuple(spec.choices or ()),
        spec.minimum if spec.minimum is not None else 0, spec.maximum if spec.maximum is not None else 1,
        step, default,
    )  # fmt: skip
