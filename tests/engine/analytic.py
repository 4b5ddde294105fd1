"""Closed-form references for sampler tests: Gaussian data ``x0 ~ N(mu, s^2 I)``.

For this data the ideal denoiser and the probability-flow ODE are known exactly, so sampler outputs can be
compared with true answers rather than with recorded outputs.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class GaussianData:
    """Data distribution ``N(mu, s^2)`` per dimension."""

    mu: float = 0.5
    s: float = 0.7

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        """Exact MMSE denoiser ``E[x0 | x]`` for ``x = x0 + sigma * n``; ``sigma`` has shape [batch]."""
        sigma2 = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) ** 2
        return (self.s**2 * x + sigma2 * self.mu) / (self.s**2 + sigma2)

    def ode_solution(self, x_start: torch.Tensor, sigma_start: float, sigma_end: float) -> torch.Tensor:
        """Exact probability-flow ODE solution from ``sigma_start`` to ``sigma_end``."""
        scale = ((self.s**2 + sigma_end**2) / (self.s**2 + sigma_start**2)) ** 0.5
        return self.mu + (x_start - self.mu) * scale

    def noisy_sample(self, shape: tuple[int, ...], sigma: float, generator: torch.Generator) -> torch.Tensor:
        """Draw from the marginal ``N(mu, s^2 + sigma^2)`` at noise level ``sigma``."""
        std = (self.s**2 + sigma**2) ** 0.5
        return self.mu + std * torch.randn(shape, generator=generator, dtype=torch.float64)
