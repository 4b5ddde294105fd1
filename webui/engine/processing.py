"""One txt2img / img2img / inpaint request, parameters to saved PNGs (DESIGN.md, "One request").

Runs on the GPU worker. Steps: resolve sampler and schedule, seeds, conditioning, (img2img: prepare the
init image and mask, encode), sample on the CFG-wrapped denoiser, optional hires. fix pass, VAE decode,
inpaint overlay, infotext, saving, grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.engine.conditioning import TextConditioner
from webui.engine.denoisers import CFGDenoiser, StepTracker, UNetDenoiser
from webui.engine.discrete import DiscreteSchedule
from webui.engine.errors import InvalidParameter, JobCancelled
from webui.engine.images import (
    LATENT_UPSCALE_MODES,
    UpscalerRegistry,
    image_grid,
    latent_preview,
    resize_image,
    upscale_latent,
)
from webui.engine.jobs import ImageSkipped, JobContext, JobInterrupted
from webui.engine.masks import (
    apply_overlay,
    fill_latent,
    fill_masked,
    latent_mask,
    masked_region,
    overlay_mask,
    prepare_mask,
)
from webui.engine.outputs import FileNameContext, OutputSaver
from webui.engine.params import GenerationParams, validate
from webui.engine.samplers.noise import BrownianTreeNoiseSampler
from webui.engine.samplers.registry import SamplerInfo, SamplerRegistry, ScheduleInfo, prepare_sigmas
from webui.engine.sampling_context import SamplingContext
from webui.engine.seeds import ImageNoise, image_seeds, resolve_seed
from webui.infotext.format import format_infotext, generation_params
from webui.models import devices

log = logging.getLogger(__name__)
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")


@dataclass
class EngineServices:
    """What the engine needs from the application context."""

    models: Any  # webui.models.manager.ModelManager
    samplers: SamplerRegistry
    options: Any  # webui.config.options.Options
    outputs: OutputSaver | None
    upscalers: UpscalerRegistry = field(default_factory=UpscalerRegistry.with_builtins)
    version: str = "v0.1.0"
    hooks: Any = None  # a hook bus (fire / pipe); extensions subscribe through their facade
    # extension denoiser wrappers, in declared order: wrap_denoiser(model, sampling_context) -> model
    wrap_denoiser: Callable[..., Any] | None = None


@dataclass
class Processed:
    """The result of one job: images (no grid), grid, per-image seeds/prompts/infotexts, saved paths."""

    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    paths: list[Path] = field(default_factory=list)
    grid: Image.Image | None = None
    grid_path: Path | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class _Progress:
    """Maps sampler callbacks of every pass to one job-wide step count and previews."""

    def __init__(
        self,
        job: JobContext | None,
        total: int,
        family: str,
        on_step: Callable[..., Any] | None = None,
        decode: Callable[[torch.Tensor], Image.Image] | None = None,
    ) -> None:
        self.job, self.total, self.done, self.family, self.on_step = job, total, 0, family, on_step
        self.decode = decode  # full VAE decode for previews ("Full"); None: cheap linear approximation

    def preview(self, denoised: torch.Tensor) -> Image.Image:
        """The live preview of the first image of the batch."""
        if self.decode is not None:
            return self.decode(denoised[:1])
        return latent_preview(denoised[0].float().cpu(), self.family)

    def callback(self, tracker: StepTracker) -> Callable[[dict[str, Any]], None]:
        base = self.done

        def cb(d: dict[str, Any]) -> None:
            tracker.step = int(d["i"]) + 1
            self.done = base + tracker.step
            if self.on_step is not None:
                self.on_step(step=self.done, total=self.total, **d)
            if self.job is not None:
                denoised = d.get("denoised")
                preview = (lambda: self.preview(denoised)) if denoised is not None else None
                self.job.report_step(min(self.done, self.total), self.total, preview)

        return cb


def _to_tensor(images: list[Image.Image], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device=device, dtype=dtype)


def _to_images(x: torch.Tensor) -> list[Image.Image]:
    arr = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


@torch.no_grad()
def vae_encode(model: Any, images: list[Image.Image]) -> torch.Tensor:
    """Pixels -> scaled latents (distribution mode, so the same image always gives the same latent)."""
    x = _to_tensor(images, model.device, model.vae_dtype)
    latent = model.vae.encode(x).latent_dist.mode()
    return latent.float() * float(model.vae.config.scaling_factor)


VAE_DECODE_MAX_PIXELS = 2 * 1024 * 1024  # per decode call off CUDA: 8 images at 512x512, 2 at 1024x1024
# Peak working memory of an SD VAE decode per output pixel in fp32, measured on an H100: 8 SDXL images at
# 1024x1024 decoded at once peak 24 GiB above 2 at once; half as much in fp16/bf16.
VAE_DECODE_BYTES_PER_PIXEL_FP32 = 4096
VAE_DECODE_MEMORY_SHARE = 0.6  # of the memory free on the GPU


def vae_decode_chunk(model: Any, count: int, pixels: int) -> int:
    """Images per VAE decode call: on CUDA as many as fit in the free memory (one call is fastest), else
    a fixed pixel budget."""
    free = devices.available_memory(model.device)
    if free is None:
        return max(1, VAE_DECODE_MAX_PIXELS // pixels)
    per_image = pixels * VAE_DECODE_BYTES_PER_PIXEL_FP32 * torch.finfo(model.vae_dtype).bits // 32
    return max(1, min(count, int(free * VAE_DECODE_MEMORY_SHARE) // per_image))


@torch.no_grad()
def vae_decode(model: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Scaled latents -> PIL images, in chunks sized by :func:`vae_decode_chunk` to bound memory."""
    out = []
    scale = float(model.vae.config.scaling_factor)
    pixels = latents.shape[-1] * latents.shape[-2] * model.latent_factor**2
    chunk = vae_decode_chunk(model, latents.shape[0], pixels)
    i = 0
    while i < latents.shape[0]:
        z = (latents[i : i + chunk] / scale).to(device=model.device, dtype=model.vae_dtype)
        try:
            decoded = model.vae.decode(z).sample
        except Exception as error:
            if chunk == 1 or not devices.is_out_of_memory(error):
                raise
            del z
            devices.empty_cache(model.device)
            chunk = max(1, chunk // 2)  # the estimate was too generous for this card: smaller calls
            log.warning("VAE decode ran out of memory; decoding %d image(s) per call", chunk)
            continue
        out.extend(_to_images(decoded))
        i += z.shape[0]
    return out


def _sampler_options(sampler: SamplerInfo, p: GenerationParams, opts: Any) -> dict[str, Any]:
    wanted: dict[str, Any] = {}
    if sampler.uses_eta:
        eta = (
            p.eta
            if p.eta is not None
            else (opts.get("eta_ddim") if sampler.label == "DDIM" else opts.get("eta_ancestral"))
        )
        wanted["eta"] = float(eta)
    for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
        value = getattr(p, name)
        value = opts.get(name) if value is None else value
        if name == "s_tmax" and not value:
            value = float("inf")
        if sampler.accepts(name):
            wanted[name] = float(value)
    return sampler.options_with(wanted)


@dataclass
class _Pass:
    """One sampling pass over a batch."""

    sampler: SamplerInfo
    schedule: ScheduleInfo
    steps: int
    denoising: float | None  # None: txt2img from pure noise


class Generator:
    """Runs :class:`GenerationParams` on the active model. One instance per job."""

    def __init__(
        self, services: EngineServices, params: GenerationParams, job: JobContext | None = None
    ) -> None:
        self.s = services
        self.p = params
        self.job = job
        self.opts = services.options
        self.warnings: list[str] = []

    # ------------------------------------------------------------------------------------------------
    def _pipe(self, hook: str, value: Any, **payload: Any) -> Any:
        """Pass ``value`` through extension hooks (a no-op without a hook bus)."""
        return value if self.s.hooks is None else self.s.hooks.pipe(hook, value, **payload)

    def _fire(self, hook: str, **payload: Any) -> None:
        if self.s.hooks is not None:
            self.s.hooks.fire(hook, **payload)

    def run(self) -> Processed:
        """Generate every image of the job; interrupted jobs return the finished images."""
        self.extra: dict[str, Any] = {}
        self.p = self._pipe(
            "before_process", self.p, extension_args=self.p.extension_args, extra_generation_params=self.extra
        )
        p, opts = self.p, self.opts
        validate(p, max_size=int(opts.get("max_image_size", 4096)), max_batch_size=int(opts.get("max_batch_size", 64)),
                 max_batch_count=int(opts.get("max_batch_count", 100)))  # fmt: skip
        sampler, schedule = self.s.samplers.resolve(p.sampler_name, p.scheduler)
        self.model = model = self.s.models.load()
        if p.mode == "txt2img" and p.enable_hr:
            hr_name = (
                p.hr_sampler_name
                if p.hr_sampler_name not in (None, "", "Use same sampler")
                else p.sampler_name
            )
            hr_sched = (
                p.hr_scheduler if p.hr_scheduler not in (None, "", "Use same scheduler") else p.scheduler
            )
            self.hr_sampler, self.hr_schedule = self.s.samplers.resolve(hr_name, hr_sched)
            if p.hr_upscaler not in LATENT_UPSCALE_MODES:
                self.s.upscalers.get(p.hr_upscaler, "hr_upscaler")
        total = p.batch_size * p.n_iter
        seed, subseed = resolve_seed(p.seed), resolve_seed(p.subseed)
        self.seeds, self.subseeds = image_seeds(seed, subseed, total, p.subseed_strength)
        self.prompts = [p.prompt] * total
        self.negatives = [p.negative_prompt] * total
        self.sampler, self.schedule_info = sampler, schedule
        self.schedule = DiscreteSchedule(model.alphas_cumprod.float(), is_sdxl=model.spec.is_sdxl)
        clip_skip = int(p.clip_skip or opts.get("CLIP_stop_at_last_layers", 1))
        self.clip_skip = clip_skip
        self.conditioner = TextConditioner(model, clip_skip, str(opts.get("emphasis", "Original")))
        graphs = model.unet_graphs if bool(opts.get("cuda_graphs", True)) else None
        self.inner = UNetDenoiser(model.unet, self.schedule, model.spec.prediction_type, model.dtype, graphs)
        if p.is_img2img:
            self._prepare_img2img()
        steps_per_batch = self._steps_first_pass() + (
            self._hires_steps() if p.enable_hr and not p.is_img2img else 0
        )
        on_step = (lambda **d: self._fire("on_step", job=self.job, **d)) if self.s.hooks is not None else None
        full = str(opts.get("show_progress_type", "Approx cheap")) == "Full"
        decode = (lambda z: vae_decode(model, z)[0]) if full else None
        self.progress = _Progress(self.job, steps_per_batch * p.n_iter, model.spec.family, on_step, decode)

        result = Processed([], [], [], [], [], [], warnings=self.warnings)
        for n in range(p.n_iter):
            if self.job is not None:
                self.job.begin_image(n, p.n_iter)
            lo, hi = n * p.batch_size, (n + 1) * p.batch_size
            try:
                images = self._batch(lo, hi)
            except ImageSkipped:
                self.progress.done = (n + 1) * steps_per_batch
                continue
            except (JobInterrupted, JobCancelled):
                result.interrupted = True
                break
            images = self._pipe("after_decode", images, params=p, seeds=self.seeds[lo:hi])
            for k, image in enumerate(images):
                self._finish_image(result, image, lo + k, n, k)
        self._grid(result)
        result.info = self._info(result, seed, subseed)
        return result

    # ------------------------------------------------------------------------------------------------
    def _steps_first_pass(self) -> int:
        """Sampler steps of the first pass: img2img runs ``int(strength * steps) + 1`` as A1111 does."""
        p = self.p
        if not p.is_img2img:
            return p.steps
        strength = min(self._strength(), 0.999)
        if strength <= 0:
            return 0
        return p.steps if self.opts.get("img2img_fix_steps") else int(strength * p.steps) + 1

    def _hires_steps(self) -> int:
        return self.p.hr_second_pass_steps or self.p.steps

    def _strength(self) -> float:
        return 0.75 if self.p.denoising_strength is None else float(self.p.denoising_strength)

    def _hires_strength(self) -> float:
        return 0.7 if self.p.denoising_strength is None else float(self.p.denoising_strength)

    def _sigmas(self, sampler: SamplerInfo, schedule: ScheduleInfo, steps: int) -> torch.Tensor:
        o = self.opts
        return prepare_sigmas(
            sampler, schedule, steps, self.schedule,
            sigma_min=o.get("sigma_min"), sigma_max=o.get("sigma_max"), rho=o.get("rho"),
            discard_penultimate_sigma=True if o.get("always_discard_next_to_last_sigma") else None,
        )  # fmt: skip
        # The schedule stays on the CPU: samplers branch on its values every step (``sigma_next == 0``), which
        # on a CUDA tensor would wait for the GPU each time; as 0-dim CPU tensors they combine with CUDA
        # tensors without a copy.

    def _img2img_sigmas(
        self, sampler: SamplerInfo, schedule: ScheduleInfo, steps: int, strength: float, fixed: bool
    ) -> torch.Tensor:
        """A1111's img2img rule: the last ``int(strength * steps) + 1`` steps of a ``steps``-step schedule
        (or exactly ``steps`` steps of a longer schedule when fixed)."""
        strength = min(strength, 0.999)
        if fixed:
            full, t_enc = int(steps / strength) if strength > 0 else 0, steps - 1
        else:
            full, t_enc = steps, int(strength * steps)
        if t_enc <= 0 or full <= 0:
            return torch.zeros(1)
        sigmas = self._sigmas(sampler, schedule, full)
        return sigmas[full - t_enc - 1 :]

    # ------------------------------------------------------------------------------------------------
    def _sample(
        self,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        sampler: SamplerInfo,
        denoiser: CFGDenoiser,
        noise: ImageNoise,
        seeds: list[int],
    ) -> torch.Tensor:
        if len(sigmas) < 2:
            return x
        options = _sampler_options(sampler, self.p, self.opts)
        if sampler.brownian_noise:
            positive = sigmas[sigmas > 0]
            options["noise_sampler"] = BrownianTreeNoiseSampler(
                x, float(positive.min()), float(sigmas.max()), seed=list(seeds)
            )
        elif sampler.ancestral or sampler.stochastic or sampler.uses_eta:
            options["noise_sampler"] = noise.noise_sampler
        callback = self.progress.callback(denoiser.tracker)
        model = denoiser
        if self.s.wrap_denoiser is not None:
            model = self.s.wrap_denoiser(denoiser, self._sampling_context(x, sigmas, seeds))
        return sampler.function(model, x, sigmas, extra_args={}, callback=callback, disable=True, **options)

    def _sampling_context(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> SamplingContext:
        job = self.job
        return SamplingContext(
            params=self.p, sigmas=sigmas, family=self.model.spec.family, latent_factor=self.model.latent_factor,
            device=x.device, dtype=x.dtype, seeds=tuple(int(s) for s in seeds), vae=self.model.vae,
            report_text=(job.set_textinfo if job is not None else (lambda _text: None)),
        )  # fmt: skip

    def _conds(
        self, lo: int, hi: int, steps: int, prompts: list[str] | None = None, negatives: list[str] | None = None,
        hires_steps: int | None = None,
    ):  # fmt: skip
        prompts = prompts or self.prompts[lo:hi]
        negatives = negatives if negatives is not None else self.negatives[lo:hi]
        return (
            self.conditioner.image_conds(prompts, steps, hires_steps),
            self.conditioner.negative_conds(negatives, steps, hires_steps),
        )

    def _time_ids(self, n: int, width: int, height: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        spec = self.model.spec
        if not spec.is_sdxl:
            return None, None
        top, left = int(self.opts.get("sdxl_crop_top", 0)), int(self.opts.get("sdxl_crop_left", 0))
        if spec.family == "sdxl":
            ids = torch.tensor([height, width, top, left, height, width], dtype=torch.float32)
            return ids.repeat(n, 1), None
        hi_score = float(self.opts.get("sdxl_refiner_high_aesthetic_score", 6.0))
        lo_score = float(self.opts.get("sdxl_refiner_low_aesthetic_score", 2.5))
        pos = torch.tensor([height, width, top, left, hi_score], dtype=torch.float32).repeat(n, 1)
        neg = torch.tensor([height, width, top, left, lo_score], dtype=torch.float32).repeat(n, 1)
        return pos, neg

    def _denoiser(
        self, conds, unconds, width: int, height: int, image_cond: torch.Tensor | None
    ) -> CFGDenoiser:
        pos, neg = self._time_ids(len(conds), width, height)
        return CFGDenoiser(
            self.inner, conds, unconds, float(self.p.cfg_scale), StepTracker(),
            time_ids=pos, time_ids_uncond=neg, image_cond=image_cond,
        )  # fmt: skip

    def _inpaint_model_cond(
        self,
        n: int,
        width: int,
        height: int,
        pixels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The 5 extra input channels of an inpainting UNet: mask and masked-image latents."""
        if not self.model.spec.inpaint:
            return None
        dev = self.model.device
        if pixels is None:  # txt2img: nothing is kept; a grey image under a full mask
            pixels = torch.zeros(n, 3, height, width, device=dev)
            mask = torch.ones(n, 1, height, width, device=dev)
        weight = float(self.opts.get("inpainting_mask_weight", 1.0))
        masked = torch.lerp(pixels, pixels * (1.0 - mask), weight)
        scale = float(self.model.vae.config.scaling_factor)
        latents = self.model.vae.encode(masked.to(self.model.vae_dtype)).latent_dist.mode().float() * scale
        small = torch.nn.functional.interpolate(mask.float(), size=latents.shape[-2:])
        return torch.cat([small, latents], dim=1)

    def _noise(self, seeds: list[int], subseeds: list[int], width: int, height: int) -> ImageNoise:
        p, f = self.p, self.model.latent_factor
        return ImageNoise(
            (self.model.latent_channels, height // f, width // f), seeds, subseeds, p.subseed_strength,
            max(0, p.seed_resize_from_h), max(0, p.seed_resize_from_w),
            source=str(self.opts.get("randn_source", "GPU")), device=self.model.device,
            eta_noise_seed_delta=int(self.opts.get("eta_noise_seed_delta", 0)) if self.sampler.uses_ensd else 0,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------
    def _batch(self, lo: int, hi: int) -> list[Image.Image]:
        p = self.p
        seeds, subseeds = self.seeds[lo:hi], self.subseeds[lo:hi]
        n = hi - lo
        noise = self._noise(seeds, subseeds, p.width, p.height)
        if p.is_img2img:
            return self._img2img_batch(lo, hi, noise)
        conds, unconds = self._conds(lo, hi, p.steps)
        image_cond = self._inpaint_model_cond(n, p.width, p.height)
        denoiser = self._denoiser(conds, unconds, p.width, p.height, image_cond)
        sigmas = self._sigmas(self.sampler, self.schedule_info, p.steps)
        x = noise.first() * sigmas[0]
        samples = self._sample(x, sigmas, self.sampler, denoiser, noise, seeds)
        if p.enable_hr:
            return self._hires(samples, lo, hi)
        return vae_decode(self.model, samples)

    def _hires(self, samples: torch.Tensor, lo: int, hi: int) -> list[Image.Image]:
        p = self.p
        width, height = p.hires_size()
        if p.hr_upscaler in LATENT_UPSCALE_MODES:
            latents = upscale_latent(
                samples, p.hr_upscaler, width, height, latent_factor=self.model.latent_factor
            )
            pixels = None
        else:
            images = [
                resize_image(0, im, width, height, p.hr_upscaler, registry=self.s.upscalers)
                for im in vae_decode(self.model, samples)
            ]
            latents = vae_encode(self.model, images)
            pixels = _to_tensor(images, self.model.device, torch.float32)
        steps = self._hires_steps()
        prompts = [p.hr_prompt or q for q in self.prompts[lo:hi]]
        negatives = [p.hr_negative_prompt or q for q in self.negatives[lo:hi]]
        # A1111 schedules hires prompts over both passes: "[a:b:0.5]" is finished, "[a:b:1.5]" is halfway
        conds, unconds = self._conds(lo, hi, p.steps, prompts, negatives, hires_steps=steps)
        n = hi - lo
        image_cond = None
        if self.model.spec.inpaint:
            if pixels is None:
                pixels = _to_tensor(vae_decode(self.model, latents), self.model.device, torch.float32)
            image_cond = self._inpaint_model_cond(
                n, width, height, pixels, torch.ones(n, 1, height, width, device=self.model.device)
            )
        denoiser = self._denoiser(conds, unconds, width, height, image_cond)
        sigmas = self._img2img_sigmas(
            self.hr_sampler, self.hr_schedule, steps, self._hires_strength(), fixed=True
        )
        noise = self._noise(self.seeds[lo:hi], self.subseeds[lo:hi], width, height)
        x = latents + noise.first() * sigmas[0]
        samples = self._sample(x, sigmas, self.hr_sampler, denoiser, noise, self.seeds[lo:hi])
        return vae_decode(self.model, samples)

    # img2img ----------------------------------------------------------------------------------------
    def _prepare_img2img(self) -> None:
        p = self.p
        self.crop_box = None
        self.mask_overlay = None
        self.originals: list[Image.Image] = []
        prepared: list[Image.Image] = []
        mask = None
        if p.mask is not None:
            mask = prepare_mask(p.mask, invert=bool(p.inpainting_mask_invert), blur=p.mask_blur)
            if p.inpaint_full_res:
                self.crop_box = masked_region(
                    prepare_mask(p.mask, bool(p.inpainting_mask_invert), 0),
                    p.inpaint_full_res_padding,
                    p.width,
                    p.height,
                )
                if self.crop_box is None:
                    raise InvalidParameter("mask", "the mask is empty: nothing to inpaint")
                self.mask_overlay = overlay_mask(mask, only_masked=True)
                mask = resize_image(2, mask.crop(self.crop_box), p.width, p.height)
            else:
                mask = resize_image(p.resize_mode if p.resize_mode != 3 else 0, mask, p.width, p.height)
                self.mask_overlay = overlay_mask(mask, only_masked=False)
        for im in p.init_images:
            im = im.convert("RGB")
            if p.mask is not None and p.inpaint_full_res:
                self.originals.append(im)
                im = resize_image(2, im.crop(self.crop_box), p.width, p.height)
            else:
                im = resize_image(p.resize_mode, im, p.width, p.height) if p.resize_mode != 3 else im
                self.originals.append(im)
            if mask is not None and p.inpainting_fill == 0:
                im = fill_masked(im, mask)
            prepared.append(im)
        self.mask = mask
        if p.resize_mode == 3:  # latent upscale: encode at the image's own size, then scale the latent
            latents = vae_encode(self.model, prepared)
            self.init_latents = upscale_latent(
                latents, "Latent", p.width, p.height, latent_factor=self.model.latent_factor
            )
            prepared = [im.resize((p.width, p.height)) for im in prepared]
        else:
            self.init_latents = vae_encode(self.model, prepared)
        self.init_pixels = _to_tensor(prepared, self.model.device, torch.float32)
        if mask is not None:
            h, w = self.init_latents.shape[-2:]
            self.latent_repaint = latent_mask(mask, w, h).to(self.model.device)
            arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
            self.pixel_mask = torch.from_numpy(np.around(arr))[None, None].to(self.model.device)
        else:
            self.latent_repaint = None
            self.pixel_mask = None

    def _init_for(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        count = self.init_latents.shape[0]
        idx = [i % count for i in range(n)]
        return self.init_latents[idx], self.init_pixels[idx]

    def _img2img_batch(self, lo: int, hi: int, noise: ImageNoise) -> list[Image.Image]:
        p = self.p
        n = hi - lo
        # prompt editing counts over the requested steps, as in A1111, not over the steps actually run
        conds, unconds = self._conds(lo, hi, p.steps)
        init, pixels = self._init_for(n)
        if self.pixel_mask is not None:
            image_cond = self._inpaint_model_cond(
                n, p.width, p.height, pixels, self.pixel_mask.expand(n, -1, -1, -1)
            )
        else:
            image_cond = self._inpaint_model_cond(
                n, p.width, p.height, pixels, torch.ones(n, 1, p.height, p.width, device=self.model.device)
            )
        denoiser = self._denoiser(conds, unconds, p.width, p.height, image_cond)
        sigmas = self._img2img_sigmas(
            self.sampler,
            self.schedule_info,
            p.steps,
            self._strength(),
            bool(self.opts.get("img2img_fix_steps")),
        )
        first = noise.first()
        if self.latent_repaint is not None:
            init = fill_latent(init, self.latent_repaint, p.inpainting_fill, first)
            repaint = self.latent_repaint
            keep_latent = init

            def blend(_x: torch.Tensor, _sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
                return keep_latent * (1 - repaint) + denoised * repaint

            denoiser.post_denoise.append(blend)
        multiplier = (
            p.initial_noise_multiplier
            if p.initial_noise_multiplier is not None
            else float(self.opts.get("initial_noise_multiplier", 1.0))
        )
        x = init + first * sigmas[0] * multiplier
        samples = self._sample(x, sigmas, self.sampler, denoiser, noise, self.seeds[lo:hi])
        if self.latent_repaint is not None:
            samples = init * (1 - self.latent_repaint) + samples * self.latent_repaint
        images = vae_decode(self.model, samples)
        if self.mask_overlay is not None:
            out = []
            for k, image in enumerate(images):
                original = self.originals[(lo + k) % len(self.originals)]
                out.append(apply_overlay(image, original, self.mask_overlay, self.crop_box))
            images = out
        return images

    # results ----------------------------------------------------------------------------------------
    def _infotext(self, index: int) -> str:
        p, model = self.p, self.model
        vae = model.vae_info
        params: dict[str, Any] = {
            "steps": p.steps,
            "sampler": self.sampler.label,
            "schedule_type": self.schedule_info.label,
            "cfg_scale": float(p.cfg_scale),
            "seed": self.seeds[index],
            "width": p.width,
            "height": p.height,
            "model_hash": model.checkpoint.shorthash,
            "model": model.checkpoint.name_for_extra,
            "vae_hash": self.s.models.hashes.sha256(vae.path)[:10] if vae else None,
            "vae": vae.path.name if vae else None,
            "variation_seed": self.subseeds[index] if p.subseed_strength > 0 else None,
            "variation_seed_strength": p.subseed_strength,
            "seed_resize_from": (p.seed_resize_from_w, p.seed_resize_from_h)
            if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0
            else None,
            "clip_skip": self.clip_skip,
            "ensd": int(self.opts.get("eta_noise_seed_delta", 0)) or None,
            "emphasis": str(self.opts.get("emphasis", "Original")),
            "rng": str(self.opts.get("randn_source", "GPU")),
            "version": self.s.version,
        }
        if p.is_img2img:
            params["denoising_strength"] = self._strength()
            if p.mask is not None:
                params |= {
                    "mask_blur": p.mask_blur,
                    "inpaint_area": "Only masked" if p.inpaint_full_res else "Whole picture",
                    "masked_area_padding": p.inpaint_full_res_padding,
                    "mask_mode": "Inpaint not masked" if p.inpainting_mask_invert else "Inpaint masked",
                    "masked_content": MASKED_CONTENT[p.inpainting_fill],
                }
        elif p.enable_hr:
            w, h = p.hires_size()
            params |= {
                "denoising_strength": self._hires_strength(),
                "hires_upscale": p.hr_scale if not (p.hr_resize_x or p.hr_resize_y) else None,
                "hires_resize": (w, h) if (p.hr_resize_x or p.hr_resize_y) else None,
                "hires_steps": p.hr_second_pass_steps,
                "hires_upscaler": p.hr_upscaler,
                "hires_sampler": self.hr_sampler.label
                if self.hr_sampler.label != self.sampler.label
                else None,
                "hires_prompt": p.hr_prompt or None,
                "hires_negative_prompt": p.hr_negative_prompt or None,
            }
        extra = {**self.p.extra, **self.extra} if (self.p.extra or self.extra) else None
        return format_infotext(
            self.prompts[index], self.negatives[index], generation_params(**params, extra=extra)
        )

    def _name_context(self, index: int, iteration: int, batch_index: int) -> FileNameContext:
        p, model = self.p, self.model
        return FileNameContext(
            seed=self.seeds[index], prompt=self.prompts[index], negative_prompt=self.negatives[index],
            steps=p.steps, cfg_scale=p.cfg_scale, sampler=self.sampler.label, scheduler=self.schedule_info.label,
            model_name=model.checkpoint.name_for_extra, model_hash=model.checkpoint.shorthash or "",
            width=p.width, height=p.height, batch_index=batch_index, batch_size=p.batch_size,
            iteration=iteration, n_iter=p.n_iter, all_seeds=tuple(self.seeds), clip_skip=self.clip_skip,
            denoising_strength=p.denoising_strength,
        )  # fmt: skip

    def _finish_image(
        self, result: Processed, image: Image.Image, index: int, iteration: int, batch_index: int
    ) -> None:
        infotext = self._infotext(index)
        image = self._pipe("before_image_saved", image, infotext=infotext, params=self.p, index=index)
        result.images.append(image)
        result.infotexts.append(infotext)
        result.seeds.append(self.seeds[index])
        result.subseeds.append(self.subseeds[index])
        result.prompts.append(self.prompts[index])
        result.negative_prompts.append(self.negatives[index])
        if (
            self.s.outputs is not None
            and self.opts.get("samples_save", True)
            and not self.p.do_not_save_samples
        ):
            kind = "img2img" if self.p.is_img2img else "txt2img"
            path = self.s.outputs.save_image(
                image, kind, self._name_context(index, iteration, batch_index), infotext
            )
            result.paths.append(path)
            self._fire(
                "after_image_saved", image=image, path=path, infotext=infotext, params=self.p, index=index
            )

    def _grid(self, result: Processed) -> None:
        if len(result.images) < 2:
            return
        result.grid = image_grid(
            result.images, batch_size=self.p.batch_size, n_rows=int(self.opts.get("n_rows", -1))
        )
        if self.s.outputs is not None and self.opts.get("grid_save", True) and not self.p.do_not_save_grid:
            kind = "img2img" if self.p.is_img2img else "txt2img"
            result.grid_path = self.s.outputs.save_grid(
                result.grid, kind, self._name_context(0, 0, 0), result.infotexts[0]
            )

    def _info(self, result: Processed, seed: int, subseed: int) -> dict[str, Any]:
        p, model = self.p, self.model
        return {
            "prompt": p.prompt,
            "all_prompts": result.prompts,
            "negative_prompt": p.negative_prompt,
            "all_negative_prompts": result.negative_prompts,
            "seed": seed,
            "all_seeds": result.seeds,
            "subseed": subseed,
            "all_subseeds": result.subseeds,
            "subseed_strength": p.subseed_strength,
            "width": p.width,
            "height": p.height,
            "sampler_name": self.sampler.label,
            "scheduler": self.schedule_info.label,
            "cfg_scale": p.cfg_scale,
            "steps": p.steps,
            "batch_size": p.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": model.checkpoint.name_for_extra,
            "sd_model_hash": model.checkpoint.shorthash,
            "sd_vae_name": model.vae_info.name if model.vae_info else None,
            "sd_vae_hash": None,
            "seed_resize_from_w": p.seed_resize_from_w,
            "seed_resize_from_h": p.seed_resize_from_h,
            "denoising_strength": p.denoising_strength,
            "extra_generation_params": {**p.extra, **self.extra},
            "index_of_first_image": 0,
            "infotexts": result.infotexts,
            "styles": p.styles,
            "job_timestamp": "",
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": bool(model.spec.inpaint),
            "version": self.s.version,
        }


def generate(services: EngineServices, params: GenerationParams, job: JobContext | None = None) -> Processed:
    """Run one txt2img / img2img job (on the GPU worker)."""
    return Generator(services, params, job).run()
