"""What CLIP guidance needs of a CLIP model, as a structural type (any loader's wrapper can satisfy it)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class GuidanceClip(Protocol):
    """A CLIP model as the guidance uses it.

    Attributes:
        name: the model's name as settings and infotext spell it (e.g. ``"ViT-B/32"``).
        image_size: the side of the square images ``encode_image`` takes.
    """

    name: str
    image_size: int

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed ``[B, 3, image_size, image_size]`` RGB in [0, 1] as ``[B, D]``; differentiable in ``pixels``.

        The model applies its own mean / std normalisation.
        """
        ...

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Embed ``N`` texts as ``[N, D]`` (same ``D`` as images)."""
        ...
