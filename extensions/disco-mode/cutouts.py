"""Disco Diffusion's cutouts: whole-image "overview" cuts and random "inner" crops, with light augmentations.

Every random choice comes from the ``torch.Generator`` passed to the call, so the same generator state gives
the same cuts. Implemented with plain torch (``interpolate``, ``affine_grid`` / ``grid_sample``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from webui.extensions.api import InvalidParameter

_LUMA = (0.299, 0.587, 0.114)
# Augmentation strengths (Disco's torchvision pipeline): pixel noise std, rotation in degrees, translation as
# a fraction of the size, grayscale probability, brightness / contrast / saturation / hue jitter.
NOISE_STD = 0.01
MAX_ROTATION_DEGREES = 10.0
MAX_TRANSLATE = 0.05
GRAY_P = 0.1
JITTER = 0.1
HUE_JITTER = 0.1


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """Luma of RGB ``images`` ``[N, 3, H, W]`` repeated over the three channels."""
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True).expand(-1, 3, -1, -1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of ``[N, C, H, W]`` to ``size`` x ``size``."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def pad_to_square(images: torch.Tensor) -> torch.Tensor:
    """Pad the shorter side with black (0) equally on both ends so that the image becomes square."""
    height, width = images.shape[-2:]
    side = max(height, width)
    left, top = (side - width) // 2, (side - height) // 2
    return F.pad(images, (left, side - width - left, top, side - height - top))


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(count, generator=generator, device=generator.device) * (high - low) + low


def _hue_matrices(angles: torch.Tensor) -> torch.Tensor:
    """RGB -> RGB matrices rotating the chroma plane (YIQ) by ``angles`` radians, shape ``[N, 3, 3]``."""
    to_yiq = angles.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    cos, sin = angles.cos(), angles.sin()
    rotation = torch.zeros(len(angles), 3, 3, dtype=angles.dtype, device=angles.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    return torch.linalg.inv(to_yiq) @ rotation @ to_yiq


class Cutouts:
    """Make ``overview + inner_cut`` cuts of ``cut_size`` pixels per image.

    Args:
        cut_size: side of every cut (the CLIP model's input size).
        overview: cuts of the whole image (padded to a square); they cycle through plain, gray, flipped and
            gray-flipped, so four or more overview cuts include all of Disco's variants.
        inner_cut: random square crops whose side is ``min + u ** ic_size_pow * (max - min)`` for uniform
            ``u`` (a larger power favours small crops); the first ``round(ic_gray_p * inner_cut)`` are gray.
        skip_augs: no noise, flips, affine jitter, random grayscale or colour jitter.
    """

    def __init__(
        self,
        cut_size: int,
        overview: int,
        inner_cut: int,
        ic_size_pow: float = 1.0,
        ic_gray_p: float = 0.2,
        skip_augs: bool = False,
    ) -> None:
        for name, value in (("cut_size", cut_size), ("cut_overview", overview), ("cut_innercut", inner_cut)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (1 if name == "cut_size" else 0)
            ):
                raise InvalidParameter(
                    name, f"must be a whole number >= {int(name == 'cut_size')}, got {value!r}"
                )
        if overview + inner_cut < 1:
            raise InvalidParameter("cut_overview", "overview + inner cuts must be at least 1")
        if not (isinstance(ic_size_pow, (int, float)) and math.isfinite(ic_size_pow) and ic_size_pow > 0):
            raise InvalidParameter("cut_ic_pow", f"must be a positive number, got {ic_size_pow!r}")
        if not (isinstance(ic_gray_p, (int, float)) and 0 <= ic_gray_p <= 1):
            raise InvalidParameter("cut_icgray_p", f"must be between 0 and 1, got {ic_gray_p!r}")
        self.cut_size = cut_size
        self.overview = overview
        self.inner_cut = inner_cut
        self.ic_size_pow = float(ic_size_pow)
        self.ic_gray_p = float(ic_gray_p)
        self.skip_augs = bool(skip_augs)

    @property
    def count(self) -> int:
        """Cuts per image."""
        return self.overview + self.inner_cut

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Cuts of ``images`` ``[B, 3, H, W]`` in [0, 1]: ``[count * B, 3, cut_size, cut_size]`` in [0, 1].

        Row ``k * B + b`` is cut ``k`` of image ``b`` (overview cuts first).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidParameter(
                "images", f"expected [B, 3, H, W] RGB images, got shape {tuple(images.shape)}"
            )
        if not isinstance(generator, torch.Generator):
            raise InvalidParameter("generator", "a torch.Generator drives the random cuts")
        cuts = self._overview_cuts(images) + self._inner_cuts(images, generator)
        out = torch.cat(cuts)
        if not self.skip_augs:
            out = self._augment(out, generator)
        return out.clamp(0, 1)

    def _overview_cuts(self, images: torch.Tensor) -> list[torch.Tensor]:
        if not self.overview:
            return []
        whole = resize(pad_to_square(images), self.cut_size)
        flipped = whole.flip(-1)
        variants = (whole, to_gray(whole), flipped, to_gray(flipped))
        return [variants[k % 4] for k in range(self.overview)]

    def _inner_cuts(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        if not self.inner_cut:
            return []
        height, width = images.shape[-2:]
        max_size = min(height, width)
        min_size = min(height, width, self.cut_size)
        draws = torch.rand(
            self.inner_cut, 3, generator=generator, device=generator.device, dtype=torch.float64
        )
        gray_count = round(self.ic_gray_p * self.inner_cut)
        cuts = []
        for i, (u_size, u_x, u_y) in enumerate(draws.tolist()):
            size = min(max_size, int(u_size**self.ic_size_pow * (max_size - min_size) + min_size))
            x = int(u_x * (width - size + 1))
            y = int(u_y * (height - size + 1))
            cut = images[:, :, y : y + size, x : x + size]
            if i < gray_count:
                cut = to_gray(cut)
            cuts.append(resize(cut, self.cut_size))
        return cuts

    def _augment(self, cuts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count = cuts.shape[0]
        device, dtype = cuts.device, cuts.dtype

        def draw(low: float, high: float) -> torch.Tensor:
            return _uniform(count, low, high, generator).to(device=device, dtype=dtype)

        def noise(x: torch.Tensor) -> torch.Tensor:
            fresh = torch.randn(x.shape, generator=generator, device=generator.device)
            return x + fresh.to(device=device, dtype=dtype) * NOISE_STD

        def per_cut(values: torch.Tensor) -> torch.Tensor:
            return values.view(count, 1, 1, 1)

        cuts = noise(cuts)
        flip = per_cut(draw(0, 1) < 0.5)
        cuts = torch.where(flip, cuts.flip(-1), cuts)
        angle = draw(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES) * (math.pi / 180)
        shift_x, shift_y = draw(-MAX_TRANSLATE, MAX_TRANSLATE) * 2, draw(-MAX_TRANSLATE, MAX_TRANSLATE) * 2
        theta = torch.stack(
            [
                torch.stack([angle.cos(), -angle.sin(), shift_x], -1),
                torch.stack([angle.sin(), angle.cos(), shift_y], -1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(cuts.shape), align_corners=False)
        cuts = F.grid_sample(cuts, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        cuts = noise(cuts)
        gray = per_cut(draw(0, 1) < GRAY_P)
        cuts = torch.where(gray, to_gray(cuts), cuts)
        cuts = noise(cuts)
        return self._color_jitter(cuts, draw)

    @staticmethod
    def _color_jitter(cuts: torch.Tensor, draw) -> torch.Tensor:
        count = cuts.shape[0]
        brightness = draw(1 - JITTER, 1 + JITTER).view(count, 1, 1, 1)
        contrast = draw(1 - JITTER, 1 + JITTER).view(count, 1, 1, 1)
        saturation = draw(1 - JITTER, 1 + JITTER).view(count, 1, 1, 1)
        hue = draw(-HUE_JITTER, HUE_JITTER) * (2 * math.pi)
        cuts = (cuts * brightness).clamp(0, 1)
        mean = to_gray(cuts).mean(dim=(1, 2, 3), keepdim=True)
        cuts = (mean + (cuts - mean) * contrast).clamp(0, 1)
        gray = to_gray(cuts)
        cuts = (gray + (cuts - gray) * saturation).clamp(0, 1)
        return torch.einsum("nij,njhw->nihw", _hue_matrices(hue.float()).to(cuts.dtype), cuts)
