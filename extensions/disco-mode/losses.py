"""The loss terms of CLIP guidance (Disco Diffusion / k-diffusion), on images in [-1, 1].

The image losses return one value per image (shape ``[B]``) so that a batch is guided image by image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def spherical_dist_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between embeddings, along the last dimension (with broadcasting).

    Both are normalised; the result is ``2 * arcsin(|x - y| / 2) ** 2``: 0 for equal directions, ``pi**2 / 2``
    for opposite ones.
    """
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    half_chord = torch.linalg.vector_norm(x - y, dim=-1).div(2).clamp(max=1.0)
    return half_chord.arcsin().pow(2).mul(2)


def tv_loss(images: torch.Tensor) -> torch.Tensor:
    """Total variation per image: mean squared difference to the right and lower neighbour.

    The image is padded by repeating its last row and column, so border pixels count with a zero difference.
    """
    padded = F.pad(images, (0, 1, 0, 1), mode="replicate")
    dx = padded[..., :-1, 1:] - padded[..., :-1, :-1]
    dy = padded[..., 1:, :-1] - padded[..., :-1, :-1]
    return (dx.square() + dy.square()).flatten(1).mean(1)


def range_loss(images: torch.Tensor) -> torch.Tensor:
    """Mean squared amount by which pixels leave [-1, 1], per image."""
    return (images - images.clamp(-1, 1)).square().flatten(1).mean(1)


def sat_loss(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute amount by which pixels leave [-1, 1], per image (Disco's saturation loss)."""
    return (images - images.clamp(-1, 1)).abs().flatten(1).mean(1)
