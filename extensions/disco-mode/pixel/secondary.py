"""Disco Diffusion's secondary model (``secondary_model_imagenet_2.pth``), written fresh.

A small v-objective UNet (Katherine Crowson) on the cosine schedule: it predicts the clean image cheaply,
so the CLIP gradient need not flow through the big UNet. Parameter names follow the checkpoint
(``timestep_embed.weight``, ``net.0.0.weight``, ``net.2.main.1.0.weight`` ... ``net.4.weight``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

BASE_CHANNELS = 64
# Channel count of each resolution level, outermost first.
LEVEL_CHANNELS = (64, 128, 128, 256, 256, 512)
EMBED_FEATURES = 16


@dataclasses.dataclass(frozen=True)
class SecondaryOutput:
    """The model's ``v`` prediction and the ``pred`` (clean image) and ``eps`` (noise) derived from it."""

    v: torch.Tensor
    pred: torch.Tensor
    eps: torch.Tensor


def alpha_sigma_to_t(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Cosine-schedule time in [0, 1] for a signal level ``alpha`` and noise level ``sigma``."""
    return torch.atan2(sigma, alpha) * 2 / math.pi


def t_to_alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos(t pi/2), sin(t pi/2))``."""
    return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)


class FourierFeatures(nn.Module):
    """Random Fourier features of a scalar input: ``[cos(2 pi x W^T), sin(2 pi x W^T)]``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features // 2, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class ConvBlock(nn.Sequential):
    """3x3 conv + ReLU (parameters ``N.0.weight`` / ``N.0.bias``)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True))


class SkipBlock(nn.Module):
    """``cat([main(x), x])`` along channels (parameters under ``main.N``)."""

    def __init__(self, *main: nn.Module) -> None:
        super().__init__()
        self.main = nn.Sequential(*main)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.main(x), x], dim=1)


class _Down(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2)


class _Up(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _level(channels: tuple[int, ...]) -> SkipBlock:
    """The skip block that goes from ``channels[0]`` down to ``channels[1]`` and everything deeper, and back."""
    c_parent, c, *rest = channels
    if not rest:
        inner: list[nn.Module] = [ConvBlock(c, c), ConvBlock(c, c_parent)]
        return SkipBlock(_Down(), ConvBlock(c_parent, c), ConvBlock(c, c), *inner, _Up())
    return SkipBlock(
        _Down(),
        ConvBlock(c_parent, c),
        ConvBlock(c, c),
        _level((c, *rest)),
        ConvBlock(c * 2, c),
        ConvBlock(c, c_parent),
        _Up(),
    )


class SecondaryDiffusionImageNet2(nn.Module):
    """Disco's secondary model: ``forward(x, t) -> SecondaryOutput`` with cosine time ``t`` in [0, 1].

    Image sides must be multiples of 32 (five 2x poolings).
    """

    def __init__(self) -> None:
        super().__init__()
        cs = LEVEL_CHANNELS
        self.timestep_embed = FourierFeatures(1, EMBED_FEATURES)
        self.net = nn.Sequential(
            ConvBlock(3 + EMBED_FEATURES, cs[0]),
            ConvBlock(cs[0], cs[0]),
            _level(cs),
            ConvBlock(cs[0] * 2, cs[0]),
            nn.Conv2d(cs[0], 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SecondaryOutput:
        """Predict ``v`` for ``x`` at cosine times ``t`` ([N]); ``pred`` and ``eps`` follow from it."""
        embed = self.timestep_embed(t[:, None])[:, :, None, None].expand(-1, -1, *x.shape[2:])
        v = self.net(torch.cat([x, embed.to(x.dtype)], dim=1))
        alpha, sigma = (a[:, None, None, None] for a in t_to_alpha_sigma(t))
        return SecondaryOutput(v=v, pred=x * alpha - v * sigma, eps=x * sigma + v * alpha)
