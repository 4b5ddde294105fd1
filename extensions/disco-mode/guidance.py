"""CLIP guidance: the loss of Disco Diffusion and a k-diffusion denoiser wrapper that applies its gradient.

:class:`ClipGuide` scores decoded images against weighted text / image prompts with one or more CLIP models
(losses summed), plus Disco's TV, range and saturation terms. :class:`CLIPGuidedDenoiser` wraps any
``model(x, sigma, **cond) -> x0`` (CFG or not) and moves x0 along the loss gradient, k-diffusion's
``cond_model`` formulation: ``x0 + sigma**2 * grad``, so every sampler can use it.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from webui.extensions.api import InvalidParameter

from .clip_interface import GuidanceClip
from .cutouts import Cutouts, pad_to_square, resize
from .losses import range_loss, sat_loss, spherical_dist_loss, tv_loss
from .prompts import WeightedPrompt, check_weights
from .schedules import SCHEDULE_LENGTH, parse_schedule, schedule_value
from .settings import DiscoSettings

log = logging.getLogger(__name__)

Decode = Callable[[torch.Tensor], torch.Tensor]
ImagePrompt = tuple  # (PIL.Image.Image, weight)


@dataclasses.dataclass(frozen=True)
class GuidanceLoss:
    """One evaluation of the guidance loss.

    Attributes:
        total: the scaled sum that is minimised (a scalar tensor; part of the autograd graph when it comes
            from :meth:`ClipGuide.evaluate`).
        clip: the CLIP term before ``clip_guidance_scale``: weighted spherical distance averaged over cuts and
            cut batches, summed over images and CLIP models.
        tv, range, sat, init: the other terms before their scales, summed over images (``init`` is 0 without
            an init image or with ``init_scale`` 0).
    """

    total: torch.Tensor
    clip: float
    tv: float
    range: float
    sat: float
    init: float


@dataclasses.dataclass(frozen=True)
class _Targets:
    clip: GuidanceClip
    embeds: torch.Tensor  # [T, D]
    weights: torch.Tensor  # [T], divided by |sum|
    init: torch.Tensor | None  # [1 or B, D]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _image_to_tensor(image) -> torch.Tensor:
    """A PIL image as ``[1, 3, H, W]`` float in [0, 1]."""
    try:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except AttributeError:
        raise InvalidParameter("image_prompts", f"expected PIL images, got {type(image).__name__}") from None
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def clip_device(clip: GuidanceClip) -> torch.device:
    """Where ``clip`` runs: its ``device`` attribute, else its first parameter's device, else the CPU."""
    device = getattr(clip, "device", None)
    if device is not None:
        return torch.device(device)
    if isinstance(clip, torch.nn.Module):
        for tensor in (*clip.parameters(), *clip.buffers()):
            return tensor.device
    return torch.device("cpu")


def whole_image_embedding(clip: GuidanceClip, images01: torch.Tensor) -> torch.Tensor:
    """CLIP embedding of whole images in [0, 1] (padded to a square, resized, no augmentation)."""
    return clip.encode_image(resize(pad_to_square(images01), clip.image_size))


class ClipGuide:
    """Disco's guidance loss for one set of prompts.

    Args:
        clips: the CLIP models; their losses are summed.
        prompts: weighted text prompts (encoded once here).
        image_prompts: optional ``(PIL image, weight)`` pairs; each image counts as one target, embedded whole.
        settings: scales, cut schedules, ``cutn_batches``, ``skip_augs``.
        init: optional init image ``[1 or B, 3, H, W]`` in [-1, 1] for the ``init_scale`` term. LPIPS is not
            available, so the init term is the spherical distance between the CLIP embeddings (per model,
            averaged over models) of the whole image and of the init: a perceptual distance like LPIPS, and in
            the same 0..~2 range, so Disco's ``init_scale`` keeps its order of magnitude.

    Prompt weights (text and image together) are divided by the absolute value of their sum, as in Disco;
    weights summing to zero raise :class:`InvalidParameter`.
    """

    def __init__(
        self,
        clips: Sequence[GuidanceClip],
        prompts: Sequence[WeightedPrompt],
        image_prompts: Sequence[ImagePrompt] | None,
        settings: DiscoSettings,
        init: torch.Tensor | None = None,
    ) -> None:
        if not clips:
            raise InvalidParameter("clip_models", "CLIP guidance needs at least one CLIP model")
        image_prompts = list(image_prompts or [])
        for item in image_prompts:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and _is_number(item[1])):
                raise InvalidParameter("image_prompts", "expected (PIL image, weight) pairs")
        weights = [float(p.weight) for p in prompts] + [float(w) for _, w in image_prompts]
        total = check_weights(weights, "text_prompts")
        if init is not None and (init.ndim != 4 or init.shape[1] != 3):
            raise InvalidParameter("init_image", f"expected [B, 3, H, W], got shape {tuple(init.shape)}")
        self.settings = settings
        self._overview = parse_schedule(settings.cut_overview, SCHEDULE_LENGTH, int, "cut_overview")
        self._innercut = parse_schedule(settings.cut_innercut, SCHEDULE_LENGTH, int, "cut_innercut")
        self._ic_pow = parse_schedule(settings.cut_ic_pow, SCHEDULE_LENGTH, float, "cut_ic_pow")
        self._icgray_p = parse_schedule(settings.cut_icgray_p, SCHEDULE_LENGTH, float, "cut_icgray_p")
        self._uses_init = init is not None and settings.init_scale > 0
        self._targets = [
            self._encode_targets(clip, prompts, image_prompts, weights, total, init) for clip in clips
        ]

    def _encode_targets(self, clip, prompts, image_prompts, weights, total, init) -> _Targets:
        device = clip_device(clip)
        with torch.no_grad():
            parts = []
            if prompts:
                parts.append(clip.encode_text([p.text for p in prompts]).float())
            for image, _ in image_prompts:
                parts.append(whole_image_embedding(clip, _image_to_tensor(image).to(device)).float())
            embeds = torch.cat([part.to(parts[0].device) for part in parts])
            init_embeds = None
            if self._uses_init:
                init01 = ((init.float() + 1) / 2).clamp(0, 1)
                init_embeds = whole_image_embedding(clip, init01.to(device)).float().to(embeds.device)
        weight_tensor = torch.tensor(weights, dtype=torch.float32, device=embeds.device) / abs(total)
        return _Targets(clip, embeds, weight_tensor, init_embeds)

    def cutouts(self, cut_size: int, step: int, steps: int) -> Cutouts:
        """The cutouts for sampling step ``step`` of ``steps`` (Disco's schedules evaluated there)."""
        return Cutouts(
            cut_size,
            schedule_value(self._overview, step, steps),
            schedule_value(self._innercut, step, steps),
            schedule_value(self._ic_pow, step, steps),
            schedule_value(self._icgray_p, step, steps),
            self.settings.skip_augs,
        )

    def _clip_parts(
        self, images: torch.Tensor, step: int, steps: int, generator: torch.Generator
    ) -> Iterator[torch.Tensor]:
        """Per CLIP model and cut batch: the CLIP loss summed over images, divided by ``cutn_batches``."""
        batch = images.shape[0]
        batches = self.settings.cutn_batches
        for target in self._targets:
            cutouts = self.cutouts(target.clip.image_size, step, steps)
            for _ in range(batches):
                # a fresh [0, 1] view per cut batch: each batch's backward pass frees only its own graph
                cuts = cutouts((images + 1) / 2, generator)
                embeds = target.clip.encode_image(cuts).float()
                dists = spherical_dist_loss(embeds.unsqueeze(1), target.embeds.unsqueeze(0))
                per_image = (dists.view(cutouts.count, batch, -1) * target.weights).sum(-1).mean(0)
                yield per_image.sum() / batches

    def _image_terms(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """TV, range, saturation and init terms: their scaled sum and the unscaled values."""
        s = self.settings
        terms = {
            "tv": tv_loss(images).sum(),
            "range": range_loss(images).sum(),
            "sat": sat_loss(images).sum(),
            "init": images.new_zeros(()),
        }
        if self._uses_init:
            images01 = (images + 1) / 2
            dists = [
                spherical_dist_loss(whole_image_embedding(t.clip, images01).float(), t.init).sum()
                for t in self._targets
            ]
            terms["init"] = torch.stack(dists).mean()
        scaled = (
            terms["tv"] * s.tv_scale
            + terms["range"] * s.range_scale
            + terms["sat"] * s.sat_scale
            + terms["init"] * s.init_scale
        )
        return scaled, {name: float(value.detach()) for name, value in terms.items()}

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidParameter(
                "images", f"expected [B, 3, H, W] RGB images, got shape {tuple(images.shape)}"
            )

    def evaluate(
        self, images: torch.Tensor, step: int, steps: int, generator: torch.Generator
    ) -> GuidanceLoss:
        """The loss of ``images`` ``[B, 3, H, W]`` in [-1, 1] at sampling step ``step`` of ``steps``.

        ``total`` keeps the autograd graph (all cut batches at once; :meth:`image_gradient` is leaner).
        """
        self._check_images(images)
        clip = images.new_zeros((), dtype=torch.float32)
        if self.settings.clip_guidance_scale > 0:
            clip = torch.stack(list(self._clip_parts(images, step, steps, generator))).sum()
        scaled, terms = self._image_terms(images)
        total = clip * self.settings.clip_guidance_scale + scaled
        return GuidanceLoss(total=total, clip=float(clip.detach()), **terms)

    def loss(self, images: torch.Tensor, step: int, steps: int, generator: torch.Generator) -> torch.Tensor:
        """The scalar loss of :meth:`evaluate` (differentiable in ``images``)."""
        return self.evaluate(images, step, steps, generator).total

    def image_gradient(
        self, images: torch.Tensor, step: int, steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, GuidanceLoss]:
        """``d loss / d images`` and the loss terms, one cut batch at a time (as Disco: low memory).

        Draws the same random numbers as :meth:`evaluate`, so both give the same gradient.
        """
        self._check_images(images)
        scale = self.settings.clip_guidance_scale
        with torch.enable_grad():
            leaf = images.detach().requires_grad_(True)
            grad = torch.zeros_like(leaf)
            clip = 0.0
            if scale > 0:
                for part in self._clip_parts(leaf, step, steps, generator):
                    clip += float(part.detach())
                    grad += torch.autograd.grad(part * scale, leaf)[0]
            scaled, terms = self._image_terms(leaf)
            if scaled.requires_grad:
                grad += torch.autograd.grad(scaled, leaf)[0]
        total = torch.tensor(clip * scale + float(scaled.detach()))
        return grad, GuidanceLoss(total=total, clip=clip, **terms)


def apply_symmetry(x: torch.Tensor, horizontal: bool, vertical: bool) -> torch.Tensor:
    """Mirror the left half onto the right (``horizontal``) and / or the top half onto the bottom.

    Returns a new tensor; with an odd side the middle column / row is kept.
    """
    out = x.clone()
    if horizontal:
        half = x.shape[-1] // 2
        out[..., x.shape[-1] - half :] = out[..., :half].flip(-1)
    if vertical:
        half = x.shape[-2] // 2
        out[..., x.shape[-2] - half :, :] = out[..., :half, :].flip(-2)
    return out


class CLIPGuidedDenoiser:
    """``(x, sigma, **cond) -> x0``: a k-diffusion denoiser whose x0 is moved down the guidance loss.

    Args:
        model: the inner denoiser (a UNet wrapper or a CFG denoiser).
        decode: x0 -> RGB in [-1, 1] for the guidance path (the VAE, a cheap approximation, or identity for
            pixel models); must be differentiable.
        guide: the :class:`ClipGuide`.
        settings: ``clip_guidance_scale`` etc., ``clamp_grad``/``clamp_max``, the guidance window
            (``guidance_start``/``guidance_end``/``guide_every``), ``approximate_gradient`` and symmetry.
        sigmas: the sampled schedule (descending, normally ending in 0). With ``skip_steps`` pass the full
            schedule: step indices, cut schedules and the window then count the skipped steps, as in Disco.
        generator: drives the cutouts (and nothing else), so runs reproduce.

    The gradient is ``-d loss / d x`` (through the inner model), or with ``approximate_gradient``
    ``-d loss / d x0`` without the model's backward pass. Non-finite gradients become zero (with one warning
    per run). With ``clamp_grad`` each image's gradient is scaled so that its RMS is at most ``clamp_max``.
    The result is ``x0 + sigma**2 * grad``. Symmetry (if enabled) is applied to the sampler's ``x`` in place,
    once, at the first model call of each step fraction in ``transformation_percent``: the only way a
    denoiser can change the sampler's state, and what Disco does to its sample at that step.

    Build one instance per run (it tracks the symmetry steps done and the NaN warning). Sample under
    ``torch.no_grad()`` as the samplers do, not ``torch.inference_mode()``, which would forbid the gradient.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        decode: Decode,
        guide: ClipGuide,
        settings: DiscoSettings,
        sigmas: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
        if len(sigmas) < 2 or bool((sigmas[1:] > sigmas[:-1]).any()):
            raise InvalidParameter("sigmas", "expected a descending schedule of at least two noise levels")
        if not isinstance(generator, torch.Generator):
            raise InvalidParameter("generator", "a torch.Generator drives the cutouts")
        self.model = model
        self.decode = decode
        self.guide = guide
        self.settings = settings
        self.generator = generator
        self.steps = len(sigmas) - 1
        self._ascending = sigmas.flip(0).tolist()
        self._symmetry_steps = sorted({int(p * self.steps) for p in settings.transformation_percent})
        self._symmetry_done: set[int] = set()
        self._warned_non_finite = False
        self.last_loss: GuidanceLoss | None = None

    # --- step bookkeeping -------------------------------------------------------------------------

    def step_index(self, sigma: torch.Tensor | float) -> int:
        """The step a model call belongs to: the last schedule entry whose sigma is >= ``sigma``.

        In-between sigmas of second-order samplers map to the step they are part of; sigmas above the
        schedule's top (churn, restarts) map to step 0.
        """
        value = float(torch.as_tensor(sigma).max())
        at_least = len(self._ascending) - bisect.bisect_left(self._ascending, value * (1 - 1e-6))
        return min(max(at_least - 1, 0), self.steps - 1)

    def guides_at(self, step: int) -> bool:
        """Whether step ``step`` is guided: inside the window and on the ``guide_every`` grid."""
        s = self.settings
        if not (s.clip_guidance_scale or s.tv_scale or s.range_scale or s.sat_scale or s.init_scale):
            return False
        fraction = step / self.steps
        return s.guidance_start <= fraction <= s.guidance_end and step % s.guide_every == 0

    def _symmetry(self, x: torch.Tensor, step: int) -> None:
        s = self.settings
        if not (s.use_horizontal_symmetry or s.use_vertical_symmetry):
            return
        due = [
            target for target in self._symmetry_steps if target <= step and target not in self._symmetry_done
        ]
        if due:
            self._symmetry_done.update(due)
            with torch.no_grad():
                x.copy_(apply_symmetry(x, s.use_horizontal_symmetry, s.use_vertical_symmetry))

    # --- the denoiser -----------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        step = self.step_index(sigma)
        self._symmetry(x, step)
        if not self.guides_at(step):
            with torch.no_grad():
                return self.model(x, sigma, **cond)
        with torch.enable_grad():
            if self.settings.approximate_gradient:
                with torch.no_grad():
                    x0 = self.model(x, sigma, **cond)
                wrt = x0.detach().requires_grad_(True)
                images = self.decode(wrt)
            else:
                wrt = x.detach().requires_grad_(True)
                x0 = self.model(wrt, sigma, **cond)
                images = self.decode(x0)
            image_grad, self.last_loss = self.guide.image_gradient(images, step, self.steps, self.generator)
            grad = -torch.autograd.grad(images, wrt, image_grad)[0]
        grad = self._clamp(self._finite(grad.detach()))
        sigma_b = torch.as_tensor(sigma, dtype=grad.dtype, device=grad.device).reshape(
            -1, *[1] * (x.ndim - 1)
        )
        return x0.detach() + (grad * sigma_b**2).to(x0.dtype)

    def _finite(self, grad: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(grad).flatten(1).all(1)
        if not bool(bad.any()):
            return grad
        if not self._warned_non_finite:
            self._warned_non_finite = True
            log.warning(
                "CLIP guidance produced a NaN or infinite gradient for %d of %d images; their guidance is "
                "skipped (further occurrences in this run are not reported)",
                int(bad.sum()),
                len(bad),
            )
        return torch.where(bad.view(-1, *[1] * (grad.ndim - 1)), torch.zeros_like(grad), grad)

    def _clamp(self, grad: torch.Tensor) -> torch.Tensor:
        if not self.settings.clamp_grad:
            return grad
        magnitude = grad.square().flatten(1).mean(1).sqrt()
        factor = torch.where(
            magnitude > self.settings.clamp_max,
            self.settings.clamp_max / magnitude.clamp(min=torch.finfo(grad.dtype).tiny),
            torch.ones_like(magnitude),
        )
        return grad * factor.view(-1, *[1] * (grad.ndim - 1))
