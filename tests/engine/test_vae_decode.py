"""VAE decode in chunks: the chunk shrinks when the card runs out of memory, and nothing is lost or reordered."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from webui.engine.processing import vae_decode


class _Decoded:
    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


class _FakeVae:
    """Decodes a latent to its first channel's mean as a flat grey picture; 'runs out of memory' above
    ``limit`` images per call."""

    config = SimpleNamespace(scaling_factor=1.0)

    def __init__(self, limit: int, error: type[BaseException] = torch.OutOfMemoryError) -> None:
        self.limit, self.error, self.calls = limit, error, []

    def decode(self, z: torch.Tensor) -> _Decoded:
        self.calls.append(z.shape[0])
        if z.shape[0] > self.limit:
            raise self.error("CUDA out of memory (test)")
        level = z[:, :1].mean(dim=(1, 2, 3), keepdim=True)
        return _Decoded(level.expand(z.shape[0], 3, 16, 16).clone())


def _model(vae: _FakeVae) -> SimpleNamespace:
    return SimpleNamespace(vae=vae, latent_factor=2, device=torch.device("cpu"), vae_dtype=torch.float32)


def test_out_of_memory_halves_the_chunk_and_keeps_every_image_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    levels = torch.linspace(-0.9, 0.9, 7)
    latents = levels.reshape(7, 1, 1, 1).expand(7, 4, 8, 8).clone()
    vae = _FakeVae(limit=2)
    images = vae_decode(_model(vae), latents)
    assert len(images) == 7
    got = [int(np.asarray(im)[0, 0, 0]) for im in images]
    expected = [round((float(v) + 1) * 127.5) for v in levels]
    assert got == expected
    assert max(vae.calls) > 2 and vae.calls[-1] <= 2  # tried big, then settled on what fits
    assert "ran out of memory" in caplog.text


def test_other_errors_and_a_single_image_that_does_not_fit_are_raised() -> None:
    latents = torch.zeros(3, 4, 8, 8)
    with pytest.raises(ValueError):
        vae_decode(_model(_FakeVae(limit=1, error=ValueError)), latents)
    with pytest.raises(torch.OutOfMemoryError):
        vae_decode(_model(_FakeVae(limit=0)), latents)
