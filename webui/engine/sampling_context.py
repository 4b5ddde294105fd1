"""What a denoiser wrapper may know about the sampling pass it wraps (guidance needs more than ``x, sigma``).

A :class:`SamplingContext` is built for every sampling pass (first pass, hires. fix pass, each img2img
batch) and handed to the wrappers that ask for it. Its decoders are differentiable, so a guidance wrapper
can score the current x0 estimate in pixel space and back-propagate to the latent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from webui.engine.images import LATENT_PREVIEW_FACTORS


@dataclass(frozen=True)
class SamplingContext:
    """One sampling pass, as a denoiser wrapper sees it.

    Attributes:
        params: the job's :class:`~webui.engine.params.GenerationParams` (read it, never change it).
        sigmas: the descending sigma schedule this pass samples (ending in 0).
        family: ``"sd1"``, ``"sd2"`` or ``"sdxl"``.
        latent_factor: pixels per latent cell along each side (8 for real checkpoints).
        device / dtype: where the latents live.
        seeds: the seeds of the images in this batch.
        report_text: shows a line of text with the job's progress bar (a no-op outside a job).
    """

    params: Any
    sigmas: torch.Tensor
    family: str
    latent_factor: int
    device: torch.device
    dtype: torch.dtype
    seeds: tuple[int, ...] = ()
    vae: Any = field(default=None, repr=False)
    report_text: Callable[[str], None] = field(default=lambda _text: None, repr=False)

    @property
    def extension_args(self) -> Mapping[str, Mapping[str, Any]]:
        """The job's extension values, ``{extension id: {control name: value}}``."""
        return getattr(self.params, "extension_args", None) or {}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` -> RGB ``[B, 3, h*f, w*f]`` in [-1, 1], float32, through the VAE.

        Differentiable with respect to ``latents`` (call it with grad enabled)."""
        if self.vae is None:
            raise RuntimeError("this sampling pass has no VAE to decode with")
        scale = float(self.vae.config.scaling_factor)
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((latents / scale).to(vae_dtype)).sample
        return images.float()

    def decode_approx(self, latents: torch.Tensor) -> torch.Tensor:
        """A cheap differentiable stand-in for :meth:`decode`: the live preview's linear latent-to-RGB map,
        upsampled to pixel size. Colours and layout only; fine detail is lost."""
        spec = LATENT_PREVIEW_FACTORS[self.family if self.family in LATENT_PREVIEW_FACTORS else "sd1"]
        factors = torch.tensor(spec.factors, dtype=torch.float32, device=latents.device)
        bias = torch.tensor(spec.bias, dtype=torch.float32, device=latents.device)
        if latents.shape[1] != factors.shape[0]:
            raise RuntimeError(f"expected {factors.shape[0]} latent channels, got {latents.shape[1]}")
        rgb = torch.einsum("bchw,cr->brhw", latents.float(), factors) + bias[:, None, None]
        if spec.scale != 1.0:
            rgb = rgb / (spec.scale / 2.0) - 1.0
        size = (latents.shape[-2] * self.latent_factor, latents.shape[-1] * self.latent_factor)
        return F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
