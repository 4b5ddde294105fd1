"""A tiny, deterministic CLIP-like model implementing the disco ``GuidanceClip`` protocol, for tests.

Image tower: mean/std normalisation, two strided convolutions, global average pooling, a linear projection.
Text tower: an embedding bag over hashed character trigrams (a stable hash, not Python's salted ``hash``).
All weights come from a seeded generator, so every instance built with the same seed is identical.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

VOCAB = 512


class TinyClip(torch.nn.Module):
    """``encode_image([B, 3, S, S] in [0, 1]) -> [B, dim]``, ``encode_text(list[str]) -> [N, dim]``."""

    def __init__(self, seed: int = 0, image_size: int = 24, dim: int = 16, name: str = "tiny-clip") -> None:
        super().__init__()
        self.name = name
        self.image_size = image_size
        generator = torch.Generator().manual_seed(seed)

        def weights(*shape: int, scale: float) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.randn(*shape, generator=generator) * scale, requires_grad=False)

        self.conv1 = weights(8, 3, 3, 3, scale=0.4)
        self.conv2 = weights(16, 8, 3, 3, scale=0.25)
        self.project = weights(dim, 16 + 3, scale=0.5)
        self.embedding = weights(VOCAB, dim, scale=1.0)
        self.register_buffer("mean", torch.tensor([0.48, 0.46, 0.41]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.27, 0.26, 0.28]).view(1, 3, 1, 1))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed RGB ``pixels`` in [0, 1] of the model's ``image_size``."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected {self.image_size}x{self.image_size} images, got {tuple(pixels.shape)}"
            )
        x = (pixels - self.mean) / self.std
        colour = x.mean(dim=(2, 3))
        x = torch.tanh(F.conv2d(x, self.conv1, stride=2, padding=1))
        x = torch.tanh(F.conv2d(x, self.conv2, stride=2, padding=1))
        features = torch.cat([x.mean(dim=(2, 3)), colour], dim=1)
        return features @ self.project.T

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Embed each text as the mean embedding of its hashed character trigrams."""
        rows = []
        for text in texts:
            padded = f"  {text.lower()}  "
            ids = [zlib.crc32(padded[i : i + 3].encode()) % VOCAB for i in range(len(padded) - 2)]
            rows.append(self.embedding[torch.tensor(ids)].mean(0))
        return torch.stack(rows)
