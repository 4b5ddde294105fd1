"""From API requests to engine parameters, and from engine results to API answers.

:func:`prepare_generation` turns a txt2img / img2img request into validated :class:`GenerationParams`
(infotext defaults, styles, the legacy ``sampler_index``, image decoding, size limits) and collects a
warning for every field the engine does not support yet. :func:`generation_answer` renders a
:class:`Processed` as A1111's ``{images, parameters, info}``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from webui.api.limits import DEFAULT_MAX_PIXELS
from webui.api.request_images import ImagePolicy, decode_image
from webui.api.schemas import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from webui.api.settings_check import check_settings, known_settings
from webui.config.options import Options
from webui.engine.errors import InvalidParameter
from webui.engine.images import LATENT_UPSCALE_MODES, encode_png_base64, resize_mode_index
from webui.engine.params import GenerationParams, validate
from webui.engine.processing import MASKED_CONTENT, Processed
from webui.engine.progress import JOB_TIMESTAMP_FORMAT
from webui.engine.styles import StyleDatabase
from webui.infotext.parse import infotext_to_params, parse_generation_parameters
from webui.models.errors import ModelNotFound

log = logging.getLogger(__name__)

SAME_CHECKPOINT = ("", "None", "Use same checkpoint")
IMAGE_FIELDS = ("init_images", "mask", "firstpass_image", "latent_mask")


@dataclass
class PreparedGeneration:
    """A request ready for the queue."""

    params: GenerationParams
    overrides: dict[str, Any]
    restore_afterwards: bool
    job_id: str | None
    send_images: bool
    parameters: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EngineView:
    """What request conversion needs from the application context."""

    options: Options
    samplers: Any  # SamplerRegistry
    upscalers: Any  # UpscalerRegistry
    models: Any  # ModelManager
    styles: StyleDatabase


def image_policy(options: Options) -> ImagePolicy:
    """The image limits and URL policy from the settings."""
    return ImagePolicy(
        allow_urls=bool(options.get("api_enable_requests", False)),
        max_pixels=int(options.get("api_max_pixels", DEFAULT_MAX_PIXELS)),
    )


# --- infotext ---------------------------------------------------------------------------------------


def apply_infotext(
    req: GenerationRequest, settings_names: set[str], warnings: list[str]
) -> GenerationRequest:
    """Fill the fields the request did not set from its ``infotext`` (A1111 1.7+); explicit fields win.

    Infotext values that are settings (model, VAE, clip skip ...) join ``override_settings`` unless the
    request overrides them itself; values that fit neither are reported in ``warnings``.
    """
    if not req.infotext:
        return req
    values = infotext_to_params(parse_generation_parameters(req.infotext))
    settings = dict(values.pop("override_settings", None) or {})  # type: ignore[call-overload]
    values.pop("clip_skip", None)  # also among the settings, as CLIP_stop_at_last_layers
    fields = type(req).model_fields
    update: dict[str, Any] = {}
    for name, value in values.items():
        if name in fields:
            if name not in req.model_fields_set:
                update[name] = value
        elif name in settings_names:
            settings.setdefault(name, value)
        else:
            warnings.append(f"infotext: {name!r} does not apply to this request; ignored")
    merged = dict(req.override_settings or {})
    for name, value in settings.items():
        merged.setdefault(name, value)
    if merged:
        update["override_settings"] = merged
    return req.model_copy(update=update)


# --- unsupported fields -------------------------------------------------------------------------------


def unsupported_warnings(req: GenerationRequest) -> list[str]:
    """One readable warning per request field that is set but not supported (yet)."""
    out: list[str] = []

    def warn(name: str, why: str) -> None:
        out.append(f"{name}: {why}; ignored")

    if req.restore_faces:
        warn("restore_faces", "face restoration is not supported yet")
    if req.tiling:
        warn("tiling", "tiling is not supported yet")
    if req.script_name:
        warn("script_name", f"scripts are not supported yet (asked for {req.script_name!r})")
    if req.script_args:
        warn("script_args", "scripts are not supported yet")
    positional = [
        str(name)
        for name, entry in (req.alwayson_scripts or {}).items()
        if not (isinstance(entry, dict) and isinstance(entry.get("args"), dict))
        and entry not in ({}, None)
        and not (isinstance(entry, dict) and entry.get("args") in ([], None))
    ]
    if positional:
        warn(
            "alwayson_scripts",
            f"positional script args are not supported (for {', '.join(positional)}); "
            'pass {"args": {control name: value}} to an extension',
        )
    if req.s_min_uncond:
        warn("s_min_uncond", "skipping the negative prompt at low sigmas is not supported yet")
    if req.refiner_checkpoint not in (None, *SAME_CHECKPOINT):
        warn("refiner_checkpoint", "the refiner switch is not supported yet")
    elif req.refiner_switch_at is not None:
        warn("refiner_switch_at", "the refiner switch is not supported yet")
    if req.disable_extra_networks:
        warn("disable_extra_networks", "extra networks are not supported yet")
    if req.firstpass_image:
        warn("firstpass_image", "a given first-pass image is not supported yet")
    if req.comments:
        warn("comments", "comments are not supported yet")
    if isinstance(req, Txt2ImgRequest):
        if req.firstphase_width or req.firstphase_height:
            warn(
                "firstphase_width/firstphase_height",
                "the pre-1.0 hires fix fields are obsolete; use hr_resize_x/y",
            )
        if req.hr_checkpoint_name not in (None, *SAME_CHECKPOINT):
            warn("hr_checkpoint_name", "a separate hires checkpoint is not supported yet")
    if isinstance(req, Img2ImgRequest):
        if req.image_cfg_scale is not None:
            warn("image_cfg_scale", "only instruct-pix2pix models use it, and they are not supported yet")
        if req.mask_blur is None and req.mask_blur_x != req.mask_blur_y:
            warn(
                "mask_blur_y",
                f"separate vertical blur is not supported; mask_blur_x={req.mask_blur_x} is used",
            )
        if req.mask_round is False:
            warn("mask_round", "soft (unrounded) latent masks are not supported yet")
        if req.latent_mask:
            warn("latent_mask", "a separate latent mask is not supported yet")
    if req.model_extra:
        out.append(f"unknown fields ignored: {', '.join(sorted(req.model_extra))}")
    return out


# --- parameters ---------------------------------------------------------------------------------------


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _overrides(
    req: GenerationRequest, view: EngineView, from_infotext: set[str], warnings: list[str]
) -> dict[str, Any]:
    overrides = check_settings(view.options, req.override_settings or {}, "override_settings.")
    checkpoint = overrides.get("sd_model_checkpoint")
    if checkpoint:
        try:
            view.models.find(str(checkpoint))
        except ModelNotFound as exc:
            if "sd_model_checkpoint" not in from_infotext:
                raise InvalidParameter("override_settings.sd_model_checkpoint", str(exc)) from None
            warnings.append(f"infotext model {checkpoint!r} is not available; the current model is used")
            del overrides["sd_model_checkpoint"]
    elif "sd_model_checkpoint" in overrides:
        del overrides["sd_model_checkpoint"]
    vae = overrides.get("sd_vae")
    if vae not in (None, "Automatic", "None"):
        try:
            view.models.find_vae(str(vae))
        except ModelNotFound as exc:
            raise InvalidParameter("override_settings.sd_vae", str(exc)) from None
    return overrides


def _base_params(req: GenerationRequest, mode: str, view: EngineView) -> GenerationParams:
    save = bool(req.save_images)
    styles = list(req.styles or [])
    prompt, negative = req.prompt or "", req.negative_prompt or ""
    if styles:
        view.styles.reload()
        prompt = view.styles.apply_styles_to_prompt(prompt, styles)
        negative = view.styles.apply_negative_styles_to_prompt(negative, styles)
    return GenerationParams(
        mode=mode,
        prompt=prompt,
        negative_prompt=negative,
        styles=styles,
        seed=_or(req.seed, -1),
        subseed=_or(req.subseed, -1),
        subseed_strength=_or(req.subseed_strength, 0.0),
        seed_resize_from_h=_or(req.seed_resize_from_h, -1),
        seed_resize_from_w=_or(req.seed_resize_from_w, -1),
        sampler_name=req.sampler_name or req.sampler_index or "Euler",
        scheduler=req.scheduler or "Automatic",
        steps=_or(req.steps, 50),
        cfg_scale=_or(req.cfg_scale, 7.0),
        width=_or(req.width, 512),
        height=_or(req.height, 512),
        batch_size=_or(req.batch_size, 1),
        n_iter=_or(req.n_iter, 1),
        eta=req.eta,
        s_churn=req.s_churn,
        s_tmin=req.s_tmin,
        s_tmax=req.s_tmax,
        s_noise=req.s_noise,
        do_not_save_samples=not save or bool(req.do_not_save_samples),
        do_not_save_grid=not save or bool(req.do_not_save_grid),
        denoising_strength=req.denoising_strength,
        extension_args=extension_args(req.alwayson_scripts),
    )


def extension_args(scripts: Any) -> dict[str, dict[str, Any]]:
    """Extension values from A1111's ``alwayson_scripts``: ``{"<extension id>": {"args": {control: value}}}``.

    Entries whose ``args`` is an object become the job's ``extension_args`` (the host checks ids, control
    names and values when the job is submitted). A1111's positional ``args`` lists cannot be matched to
    controls safely; :func:`unsupported_warnings` reports them."""
    result: dict[str, dict[str, Any]] = {}
    for ext_id, entry in (scripts or {}).items():
        args = entry.get("args") if isinstance(entry, dict) else None
        if isinstance(args, dict):
            result[str(ext_id)] = dict(args)
    return result


def _txt2img_fields(p: GenerationParams, req: Txt2ImgRequest) -> None:
    p.enable_hr = bool(req.enable_hr)
    p.hr_scale = _or(req.hr_scale, 2.0)
    p.hr_upscaler = req.hr_upscaler or "Latent"
    p.hr_second_pass_steps = _or(req.hr_second_pass_steps, 0)
    p.hr_resize_x = _or(req.hr_resize_x, 0)
    p.hr_resize_y = _or(req.hr_resize_y, 0)
    p.hr_sampler_name = req.hr_sampler_name
    p.hr_scheduler = req.hr_scheduler
    p.hr_prompt = req.hr_prompt or ""
    p.hr_negative_prompt = req.hr_negative_prompt or ""


def _img2img_fields(
    p: GenerationParams, req: Img2ImgRequest, policy: ImagePolicy, warnings: list[str]
) -> None:
    images = req.init_images or []
    p.init_images = [decode_image(data, f"init_images.{i}", policy) for i, data in enumerate(images)]
    p.resize_mode = resize_mode_index(_or(req.resize_mode, 0))
    fill = _or(req.inpainting_fill, 0)
    if fill not in range(len(MASKED_CONTENT)):
        choices = ", ".join(f"{i} ({name})" for i, name in enumerate(MASKED_CONTENT))
        raise InvalidParameter("inpainting_fill", f"must be one of {choices}, got {fill!r}")
    p.inpainting_fill = fill
    p.mask_blur = _or(req.mask_blur, _or(req.mask_blur_x, 4))
    p.inpaint_full_res = bool(_or(req.inpaint_full_res, True))
    p.inpaint_full_res_padding = _or(req.inpaint_full_res_padding, 0)
    p.inpainting_mask_invert = int(_or(req.inpainting_mask_invert, 0))
    p.initial_noise_multiplier = req.initial_noise_multiplier
    if req.mask:
        mask = decode_image(req.mask, "mask", policy)
        if p.init_images and mask.size != p.init_images[0].size:
            warnings.append(
                f"mask: resized from {mask.width}x{mask.height} to the init image's "
                f"{p.init_images[0].width}x{p.init_images[0].height}"
            )
            mask = mask.resize(p.init_images[0].size, Image.Resampling.NEAREST)
        p.mask = mask


def _check(p: GenerationParams, view: EngineView) -> None:
    """Everything the engine would refuse, checked before the job is queued."""
    opts = view.options
    max_pixels = int(opts.get("api_max_pixels", DEFAULT_MAX_PIXELS))
    if p.width * p.height > max_pixels:
        raise InvalidParameter(
            "width", f"{p.width}x{p.height} is more than {max_pixels} pixels (option api_max_pixels)"
        )
    validate(
        p,
        max_size=int(opts.get("max_image_size", 4096)),
        max_batch_size=int(opts.get("max_batch_size", 64)),
        max_batch_count=int(opts.get("max_batch_count", 100)),
    )
    view.samplers.resolve(p.sampler_name, p.scheduler)
    if p.enable_hr and not p.is_img2img:
        w, h = p.hires_size()
        if w * h > max_pixels:
            raise InvalidParameter("hr_scale", f"the hires size {w}x{h} is more than {max_pixels} pixels")
        same = ("", "Use same sampler")
        view.samplers.resolve(
            p.sampler_name if p.hr_sampler_name in (None, *same) else p.hr_sampler_name,
            p.scheduler if p.hr_scheduler in (None, "", "Use same scheduler") else p.hr_scheduler,
        )
        if p.hr_upscaler not in LATENT_UPSCALE_MODES:
            view.upscalers.get(p.hr_upscaler, "hr_upscaler")


def echoed_parameters(req: GenerationRequest) -> dict[str, Any]:
    """The request as A1111 echoes it in ``parameters`` (images left out unless include_init_images)."""
    data = req.model_dump()
    if not (isinstance(req, Img2ImgRequest) and req.include_init_images):
        for name in IMAGE_FIELDS:
            if name in data:
                data[name] = None
    return data


def prepare_generation(req: GenerationRequest, view: EngineView) -> PreparedGeneration:
    """Validate and convert a txt2img / img2img request (raises :class:`InvalidParameter`)."""
    warnings: list[str] = []
    explicit_settings = set((req.override_settings or {}).keys())
    req = apply_infotext(req, set(known_settings(view.options)), warnings)
    from_infotext = set((req.override_settings or {}).keys()) - explicit_settings
    warnings.extend(unsupported_warnings(req))
    mode = "img2img" if isinstance(req, Img2ImgRequest) else "txt2img"
    params = _base_params(req, mode, view)
    if isinstance(req, Txt2ImgRequest):
        _txt2img_fields(params, req)
    elif isinstance(req, Img2ImgRequest):
        _img2img_fields(params, req, image_policy(view.options), warnings)
    _check(params, view)
    overrides = _overrides(req, view, from_infotext, warnings)
    for text in warnings:
        log.warning("%s request: %s", mode, text)
    return PreparedGeneration(
        params=params,
        overrides=overrides,
        restore_afterwards=_or(req.override_settings_restore_afterwards, True),
        job_id=req.force_task_id,
        send_images=_or(req.send_images, True),
        parameters=echoed_parameters(req),
        warnings=warnings,
    )


# --- answers ------------------------------------------------------------------------------------------


def generation_answer(
    prepared: PreparedGeneration, result: Processed, options: Options, started_at: float | None
) -> dict[str, Any]:
    """A1111's ``{images, parameters, info}`` for a finished job (PNG infotext per the settings)."""
    p = prepared.params
    images, texts = list(result.images), list(result.infotexts)
    info = dict(result.info)
    with_grid = result.grid is not None and not p.do_not_save_grid and bool(options.get("return_grid", True))
    if with_grid and texts:
        images.insert(0, result.grid)
        texts.insert(0, texts[0])
        info["index_of_first_image"] = 1
    embed = bool(options.get("enable_pnginfo", True))
    encoded = [encode_png_base64(im, text if embed else None) for im, text in zip(images, texts, strict=True)]
    if started_at is not None:
        info["job_timestamp"] = time.strftime(JOB_TIMESTAMP_FORMAT, time.localtime(started_at))
    if result.interrupted:
        info["interrupted"] = True
    info["warnings"] = [*prepared.warnings, *result.warnings]
    return {
        "images": encoded if prepared.send_images else [],
        "parameters": prepared.parameters,
        "info": json.dumps(info, default=str),
    }
