"""DDIM, PLMS and UniPC, rewritten in sigma space so that they share the k-diffusion contract.

In the variance-exploding coordinates ``x = x0 + sigma * eps`` (``sigma = sqrt((1 - a) / a)``, ``x`` scaled
by ``1 / sqrt(a)``) these classic alpha-space samplers become:

- DDIM: ``x_next = x0 + sigma_down * eps (+ sigma_up * noise)``, the eta-weighted split of Song et al.;
- PLMS: Adams-Bashforth (up to 4th order) on eps, warmed up with one pseudo improved-Euler step;
- UniPC: the UniP predictor / UniC corrector in log-SNR (Zhao et al. 2023), data prediction, "bh1"/"bh2".

Used with the "DDIM" schedule they visit A1111's DDIM timesteps; the last step goes to sigma 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from webui.engine.errors import InvalidParameter
from webui.engine.samplers.noise import LazyNoise, NoiseSampler
from webui.engine.samplers.step_math import Denoiser, StepCallback, ancestral_step, report, sigma_batch, to_d

Generators = torch.Generator | Sequence[torch.Generator] | None
UNIPC_VARIANTS = ("bh1", "bh2")

# Adams-Bashforth weights on (eps_i, eps_{i-1}, ...), by number of available eps values.
_ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021); eta 0 is deterministic, eta 1 adds DDPM-like noise each step."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        eps = to_d(x, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = denoised + sigma_down * eps
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_plms(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """Pseudo linear multistep (Liu et al. 2022): Adams-Bashforth on eps, first step by improved Euler."""
    extra_args = extra_args or {}
    history: list[torch.Tensor] = []  # eps of earlier steps, newest last
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        eps = to_d(x, sigma, denoised)
        if not history and sigma_next > 0:
            x_euler = x + eps * (sigma_next - sigma)
            eps_next = to_d(x_euler, sigma_next, model(x_euler, sigma_batch(x, sigma_next), **extra_args))
            eps_combined = (eps + eps_next) / 2
        else:
            recent = [eps, *reversed(history)][:4]
            weights = _ADAMS_BASHFORTH[len(recent)]
            eps_combined = sum(w * e for w, e in zip(weights, recent, strict=True))
        x = x + eps_combined * (sigma_next - sigma)
        history.append(eps)
        del history[:-3]
    return x


def _unipc_weights(
    h: torch.Tensor, ratios: list[torch.Tensor], variant: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(B(h), R, b)`` of UniPC's linear systems ``R rho = b`` for data prediction.

    ``ratios`` are ``r_k = (lambda_{i-k} - lambda_i) / h`` for the older points, then 1 for the new point;
    ``R[p] = r ** p`` and ``b[p] = p! * phi_{p+1}(-h) * (-h)^(p+1) / B(h)``-style terms of the expansion.
    """
    hh = -h
    h_phi = torch.expm1(hh) / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    order = len(ratios)
    rows, rhs = [], []
    factorial = 1
    r = torch.stack(ratios)
    for p in range(1, order + 1):
        rows.append(r ** (p - 1))
        rhs.append(h_phi * factorial / b_h)
        factorial *= p + 1
        h_phi = h_phi / hh - 1 / factorial
    return b_h, torch.stack(rows), torch.stack(rhs)


def _unipc_update(
    x: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    history: list[tuple[torch.Tensor, torch.Tensor]],
    order: int,
    variant: str,
    model_next: torch.Tensor | None = None,
) -> torch.Tensor:
    """One UniPC update from ``sigma`` to ``sigma_next`` of the given order.

    Without ``model_next`` it is the predictor (UniP, using ``order - 1`` older points); with the model's
    output at the predicted point it is the corrector (UniC, one order higher).
    """
    lam, lam_next = -sigma.log(), -sigma_next.log()
    h = lam_next - lam
    newest = history[-1][1]
    ratios, differences = [], []
    for k in range(1, order):
        lam_k, denoised_k = history[-(k + 1)]
        ratio = (lam_k - lam) / h
        ratios.append(ratio)
        differences.append((denoised_k - newest) / ratio)
    ratios.append(torch.ones_like(h))
    b_h, matrix, rhs = _unipc_weights(h, ratios, variant)
    base = newest + (x - newest) * (sigma_next / sigma)
    if model_next is None:
        if not differences:
            return base
        rhos = (
            torch.tensor([0.5], dtype=h.dtype)
            if order == 2
            else torch.linalg.solve(matrix[:-1, :-1], rhs[:-1])
        )
        return base - b_h * sum(rho * diff for rho, diff in zip(rhos, differences, strict=True))
    rhos = torch.tensor([0.5], dtype=h.dtype) if order == 1 else torch.linalg.solve(matrix, rhs)
    correction = sum(
        (rho * diff for rho, diff in zip(rhos[:-1], differences, strict=True)), torch.zeros_like(x)
    )
    return base - b_h * (correction + rhos[-1] * (model_next - newest))


@torch.no_grad()
def sample_unipc(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC multistep predictor-corrector; one model evaluation per step.

    ``order`` (1-3, A1111's "UniPC order" 3), ``variant`` "bh1" (A1111's default) or "bh2", and
    ``lower_order_final`` (lower orders on the last steps, which stabilises few-step sampling). The step to
    sigma 0 returns the latest denoised estimate.
    """
    if variant not in UNIPC_VARIANTS:
        raise InvalidParameter(
            "variant", f"unknown UniPC variant {variant!r}; valid: {', '.join(UNIPC_VARIANTS)}"
        )
    if not 1 <= order <= 3:
        raise InvalidParameter("order", f"UniPC order must be 1, 2 or 3, got {order}")
    extra_args = extra_args or {}
    steps = len(sigmas) - 1
    denoised = model(x, sigma_batch(x, sigmas[0]), **extra_args)
    history = [(-sigmas[0].log(), denoised)]
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            return denoised
        step_order = min(order, len(history), steps - i) if lower_order_final else min(order, len(history))
        predicted = _unipc_update(x, sigma, sigma_next, history, step_order, variant)
        if i == steps - 1:
            return predicted
        denoised = model(predicted, sigma_batch(x, sigma_next), **extra_args)
        x = _unipc_update(x, sigma, sigma_next, history, step_order, variant, denoised)
        history.append((-sigma_next.log(), denoised))
        del history[:-order]
    return x
