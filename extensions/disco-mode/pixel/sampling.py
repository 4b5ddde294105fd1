"""Disco Diffusion's guided sampling on the pixel models: :func:`run_pixel`.

The guidance function is Disco's ``cond_fn``: at step ``i`` it predicts the clean image (cheaply with the
secondary model, or through the UNet with autograd), mixes it with the noisy ``x`` by the noise level
(``x_in = pred * s + x * (1 - s)``, ``s = sqrt(1 - abar)``), differentiates the caller's loss at ``x_in``
back to ``x``, replaces non-finite gradients by zero and clamps the gradient's RMS to ``clamp_max``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from webui.extensions.api import InvalidParameter

from ..guidance import apply_symmetry
from .diffusion import Diffusion, StepReport, ddim_sample, plms_sample
from .secondary import SecondaryDiffusionImageNet2, alpha_sigma_to_t
from .unet import UNetModel

# loss_fn(images in [-1, 1], step, steps) -> scalar tensor, differentiable in the images.
LossFn = Callable[[torch.Tensor, int, int], torch.Tensor]
SAMPLING_MODES = ("ddim", "plms")


def clamp_gradient(grad: torch.Tensor, clamp_max: float) -> torch.Tensor:
    """Scale each image's gradient so that its RMS is at most ``clamp_max`` (Disco's ``clamp_grad``)."""
    magnitude = grad.square().flatten(1).mean(1).sqrt().view(-1, *[1] * (grad.ndim - 1))
    factor = magnitude.clamp(max=clamp_max) / magnitude.clamp(min=torch.finfo(grad.dtype).tiny)
    return grad * factor


def finite_or_zero(grad: torch.Tensor) -> torch.Tensor:
    """Zero the gradient of every image whose gradient has a NaN or infinity (Disco skips those steps)."""
    bad = ~torch.isfinite(grad).flatten(1).all(1)
    return torch.where(bad.view(-1, *[1] * (grad.ndim - 1)), torch.zeros_like(grad), grad)


def make_cond_fn(
    diffusion: Diffusion,
    loss_fn: LossFn,
    *,
    clamp_grad: bool,
    clamp_max: float,
    secondary: SecondaryDiffusionImageNet2 | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Disco's ``cond_fn(x, t, pred_xstart) -> grad`` for the loops of :mod:`.diffusion`.

    Without ``secondary``, ``pred_xstart`` must carry the autograd graph to ``x`` (``grad_through_model``).
    ``loss_fn`` gets ``step`` counted over the whole respaced run (skipped steps included) and ``steps`` =
    the run's length, so cut schedules line up with Disco's 1000-step schedules.
    """
    steps = diffusion.num_timesteps

    def cond_fn(x: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        i = int(t[0])
        fac = diffusion.sqrt_one_minus_alpha_bar(i)
        with torch.enable_grad():
            if secondary is not None:
                x = x.detach().requires_grad_()
                alpha = torch.tensor(math.sqrt(diffusion.alpha_bar(i)), dtype=torch.float32)
                cosine_t = alpha_sigma_to_t(alpha, torch.tensor(fac, dtype=torch.float32))
                times = cosine_t.repeat(x.shape[0]).to(x.device)
                pred_xstart = secondary(x.float(), times).pred.to(x.dtype)
            elif not pred_xstart.requires_grad:
                raise InvalidParameter(
                    "cond_fn", "without a secondary model the prediction needs a graph to x"
                )
            x_in = pred_xstart * fac + x * (1 - fac)
            loss = loss_fn(x_in, steps - 1 - i, steps)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise InvalidParameter("loss_fn", "the guidance loss must be a scalar tensor")
            if not loss.requires_grad:
                return torch.zeros_like(x)
            x_in_grad = torch.autograd.grad(loss, x_in, retain_graph=True)[0]
            x_in_grad = finite_or_zero(x_in_grad)
            grad = -torch.autograd.grad(x_in, x, x_in_grad)[0]
        grad = finite_or_zero(grad.detach())
        return clamp_gradient(grad, clamp_max) if clamp_grad else grad

    return cond_fn


def _symmetry_transform(settings: Any, total: int) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    horizontal = bool(getattr(settings, "use_horizontal_symmetry", False))
    vertical = bool(getattr(settings, "use_vertical_symmetry", False))
    if not (horizontal or vertical):
        return None
    due = {int(total * p) for p in getattr(settings, "transformation_percent", ())}

    def transform(x: torch.Tensor, step: int) -> torch.Tensor:
        return apply_symmetry(x, horizontal, vertical) if step in due else x

    return transform


def run_pixel(
    unet: UNetModel,
    settings: Any,
    guide_fn: LossFn | None,
    generator: torch.Generator,
    callback: StepReport | None,
    secondary: SecondaryDiffusionImageNet2 | None = None,
    *,
    sampling_mode: str = "ddim",
    init_image: torch.Tensor | None = None,
    batch_size: int = 1,
) -> torch.Tensor:
    """Sample ``batch_size`` images with Disco's CLIP-guided DDIM or PLMS; returns ``[B, 3, H, W]`` in [-1, 1].

    Args:
        unet: the guided-diffusion UNet (its device and dtype are used).
        settings: an object with Disco's attributes: ``steps``, ``width``, ``height``, ``clamp_grad``,
            ``clamp_max``, ``eta``, ``skip_steps`` (optional ``use_horizontal_symmetry``,
            ``use_vertical_symmetry``, ``transformation_percent``). Loss scales (``clip_guidance_scale``,
            ``tv_scale``, ``range_scale``, ``sat_scale``, ``init_scale``) belong to ``guide_fn``.
        guide_fn: ``loss(images in [-1, 1], step, steps) -> scalar``, already scaled; ``None``: unguided.
        generator: the only source of randomness for the sampler (starting noise, DDIM's eta noise).
        callback: ``callback(step, total, pred_xstart)`` after each step; an exception from it stops the run.
        secondary: Disco's secondary model; with it the gradient skips the UNet's backward pass.
        sampling_mode: ``"ddim"`` or ``"plms"`` (order 2, as Disco).
        init_image: ``[B, 3, H, W]`` in [-1, 1], noised to the first unskipped step.
    """
    mode = str(sampling_mode).lower()
    if mode not in SAMPLING_MODES:
        raise InvalidParameter(
            "sampling_mode", f"must be one of {', '.join(SAMPLING_MODES)}, got {sampling_mode!r}"
        )
    if batch_size < 1:
        raise InvalidParameter("batch_size", f"must be at least 1, got {batch_size}")
    width, height = int(settings.width), int(settings.height)
    multiple = 2 ** (len(unet.config.resolved_channel_mult()) - 1)
    if width % multiple or height % multiple or width <= 0 or height <= 0:
        raise InvalidParameter(
            "width", f"{width}x{height} must be positive multiples of {multiple} for this model"
        )
    if secondary is not None and (width % 32 or height % 32):
        raise InvalidParameter("width", "the secondary model needs sides that are multiples of 32")
    param = next(unet.parameters())
    device = param.device
    diffusion = Diffusion.for_disco(int(settings.steps), mode)
    cond_fn = None
    if guide_fn is not None:
        cond_fn = make_cond_fn(
            diffusion,
            guide_fn,
            clamp_grad=bool(settings.clamp_grad),
            clamp_max=float(settings.clamp_max),
            secondary=secondary,
        )
    common = {
        "diffusion": diffusion,
        "generator": generator,
        "cond_fn": cond_fn,
        "grad_through_model": cond_fn is not None and secondary is None,
        "skip_timesteps": int(settings.skip_steps),
        "init_image": init_image,
        "callback": callback,
        "device": device,
        "transform": _symmetry_transform(settings, diffusion.num_timesteps - int(settings.skip_steps)),
    }
    shape = (batch_size, unet.config.in_channels, height, width)
    if mode == "ddim":
        loop = ddim_sample(unet, shape, eta=float(settings.eta), **common)
    else:
        loop = plms_sample(unet, shape, **common)
    sample = None
    for out in loop:
        sample = out.sample
    if sample is None:
        raise InvalidParameter("steps", "the run produced no steps")
    return sample.clamp(-1, 1)
