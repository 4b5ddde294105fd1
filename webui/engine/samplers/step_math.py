"""Small pieces of arithmetic shared by the samplers (Karras ODE derivative, ancestral split, callbacks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Denoiser = Callable[..., torch.Tensor]
StepCallback = Callable[[dict[str, Any]], None]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Derivative ``dx/dsigma = (x - D(x, sigma)) / sigma`` of the probability-flow ODE (equals eps)."""
    return (x - denoised) / sigma


def ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step into a deterministic part down to ``sigma_down`` and fresh noise of size ``sigma_up``.

    ``sigma_down ** 2 + sigma_up ** 2 == sigma_to ** 2``; eta 1 is the ancestral (DDPM-like) step, eta 0 the
    deterministic one.
    """
    sigma_to = torch.as_tensor(sigma_to)
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    ratio = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).clamp(min=0)
    sigma_up = torch.minimum(sigma_to, eta * ratio**0.5)
    sigma_down = (sigma_to**2 - sigma_up**2).clamp(min=0) ** 0.5
    return sigma_down, sigma_up


def sigma_batch(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Expand a scalar sigma to one value per batch item."""
    return sigma * x.new_ones([x.shape[0]])


def report(
    callback: StepCallback | None,
    x: torch.Tensor,
    i: int,
    sigma: torch.Tensor,
    sigma_hat: torch.Tensor,
    denoised: torch.Tensor,
) -> None:
    """Call the step callback (if any) with k-diffusion's keys; exceptions it raises propagate."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def churn_gamma(sigma: torch.Tensor, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al.'s stochastic "churn": how much to raise sigma before a step (0 disables it)."""
    if s_churn <= 0 or not (s_tmin <= float(sigma) <= s_tmax):
        return 0.0
    return min(s_churn / steps, 2**0.5 - 1)


def first_order_to(
    x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, denoised: torch.Tensor
) -> torch.Tensor:
    """Exact step of the ODE when D is constant over the step (DDIM / Euler): ``D + sigma_next * eps``."""
    return denoised + (x - denoised) * (sigma_next / sigma)
