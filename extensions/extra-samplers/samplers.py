"""The sampling functions of the extra-samplers extension (k-diffusion's contract, facade helpers only).

Notation: ``D(x, sigma)`` is the denoised estimate, ``d = (x - D) / sigma`` the derivative of the
probability-flow ODE ``dx/dsigma = d``. Every sampler evaluates the model once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from numpy.polynomial import Polynomial

from webui.extensions.api import (
    Denoiser,
    InvalidParameter,
    LazyNoise,
    NoiseSampler,
    StepCallback,
    report,
    sigma_batch,
    to_d,
)

# Adams-Bashforth weights of the newest-first derivatives, by order (iPNDM uses them on any step sizes).
IPNDM_WEIGHTS = (
    (),
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)
Generators = torch.Generator | Sequence[torch.Generator] | None


@torch.no_grad()
def sample_ipndm(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    max_order: int = 4,
) -> torch.Tensor:
    """iPNDM: the step ``sigma_next - sigma`` times an Adams-Bashforth blend of the last derivatives.

    The weights are those of equal steps, used as they are on the schedule's steps (the "improved PNDM" of
    Zhang & Chen, 2023); early steps use lower orders. Second order on smoothly varying steps.
    """
    if max_order not in range(1, len(IPNDM_WEIGHTS)):
        raise InvalidParameter("max_order", f"must be 1 to {len(IPNDM_WEIGHTS) - 1}, got {max_order!r}")
    extra_args = extra_args or {}
    history: list[torch.Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        history = [to_d(x, sigma, denoised), *history][:max_order]
        weights = IPNDM_WEIGHTS[len(history)]
        slope = sum(w * d for w, d in zip(weights, history, strict=True))
        x = x + (sigma_next - sigma) * slope
    return x


def lagrange_step_weights(nodes: Sequence[float], start: float, end: float) -> list[float]:
    """Integrals over ``[start, end]`` of the Lagrange basis polynomials of ``nodes``.

    ``sum_j weights[j] * f(nodes[j])`` is the exact integral of the polynomial through the points.
    """
    weights = []
    for j, node in enumerate(nodes):
        basis = Polynomial([1.0])
        for k, other in enumerate(nodes):
            if k != j:
                basis = basis * Polynomial([-other, 1.0]) / (node - other)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(end) - antiderivative(start)))
    return weights


@torch.no_grad()
def sample_deis(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    order: int = 3,
) -> torch.Tensor:
    """DEIS (tAB form, Zhang & Chen 2023) in sigma space: the derivative is interpolated by the polynomial
    through the last ``order`` steps and integrated exactly over the step (lower orders while warming up).

    In sigma space the exponential integrator's linear part vanishes, so this is the exact-weight linear
    multistep method of that order.
    """
    if order not in (1, 2, 3):
        raise InvalidParameter("order", f"must be 1, 2 or 3, got {order!r}")
    extra_args = extra_args or {}
    values = [float(s) for s in sigmas]
    history: list[torch.Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        history = [to_d(x, sigmas[i], denoised), *history][:order]
        nodes = [values[i - k] for k in range(len(history))]
        weights = lagrange_step_weights(nodes, values[i], values[i + 1])
        x = x + sum(w * d for w, d in zip(weights, history, strict=True))
    return x


@torch.no_grad()
def sample_res_multistep(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """Res Multistep (RES, Zhang et al. 2023): exponential integrator in ``lambda = -log sigma`` with D
    linear in lambda through the last two steps, integrated exactly:

    ``x' = e^-h x + (1 - e^-h) D + (h - 1 + e^-h) (D - D_prev) / h_prev``.
    """
    extra_args = extra_args or {}
    previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (denoised, h) of the last step
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = sigma.log() - sigma_next.log()
        x = torch.exp(-h) * x - torch.expm1(-h) * denoised
        if previous is not None:
            denoised_prev, h_prev = previous
            x = x + (h + torch.expm1(-h)) * (denoised - denoised_prev) / h_prev
        previous = (denoised, h)
    return x


def default_noise_scaler(sigma: torch.Tensor) -> torch.Tensor:
    """The ER SDE paper's noise scale function ``sigma * (exp(sigma ** 0.3) + 10)``."""
    return sigma * (torch.exp(sigma**0.3) + 10.0)


def ode_noise_scaler(sigma: torch.Tensor) -> torch.Tensor:
    """``phi(sigma) = sigma``: no noise, the solver integrates the probability-flow ODE."""
    return sigma


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(8)


def _integral(
    fn: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    """Gauss-Legendre integral of a smooth scalar function over ``[start, end]`` (signed)."""
    half, mid = (end - start) / 2, (end + start) / 2
    nodes = torch.as_tensor(_GAUSS_NODES, dtype=start.dtype, device=start.device)
    weights = torch.as_tensor(_GAUSS_WEIGHTS, dtype=start.dtype, device=start.device)
    return half * (weights * fn(mid + half * nodes)).sum()


@torch.no_grad()
def sample_er_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    max_stage: int = 3,
    noise_scaler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
    seed: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """ER SDE solver (Cui et al. 2023), multistep with up to ``max_stage`` stages.

    For a noise scale function ``phi`` (increasing ``phi(sigma) / sigma``) the step from ``s`` to ``t`` is

    ``x_t = r x_s + phi_t * integral_s^t P(sigma) d(1/phi) + sqrt(sigma_t^2 - r^2 sigma_s^2) * noise``,

    ``r = phi_t / phi_s``, where ``P`` is the Newton polynomial of D through the last ``max_stage`` steps.
    ``phi(sigma) = sigma`` (:func:`ode_noise_scaler`) gives a noise-free ODE solver of that order.
    """
    if max_stage not in (1, 2, 3):
        raise InvalidParameter("max_stage", f"must be 1, 2 or 3, got {max_stage!r}")
    phi = noise_scaler or default_noise_scaler
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator, seed)
    older: list[tuple[torch.Tensor, torch.Tensor]] = []  # (sigma, denoised), newest first
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i].double(), sigmas[i + 1].double()
        denoised = model(x, sigma_batch(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if t == 0:
            x = denoised
            continue
        phi_s, phi_t = phi(s), phi(t)
        r = phi_t / phi_s
        x_next = r * x + (1 - r) * denoised
        if max_stage >= 2 and older:
            s_p, d_p = older[0]
            first_diff = (denoised - d_p) / float(s - s_p)
            weight = (t - s) - phi_t * _integral(lambda u: 1 / phi(u), s, t)
            x_next = x_next + float(weight) * first_diff
            if max_stage >= 3 and len(older) >= 2:
                s_pp, d_pp = older[1]
                second_diff = (first_diff - (d_p - d_pp) / float(s_p - s_pp)) / float(s - s_pp)
                integral = _integral(lambda u, a=s, b=s_p: (2 * u - a - b) / phi(u), s, t)
                weight = (t - s) * (t - s_p) - phi_t * integral
                x_next = x_next + float(weight) * second_diff
        variance = float(t**2 - (r * s) ** 2)
        if variance > 1e-10 * float(t) ** 2 and s_noise:  # phi = sigma leaves only rounding noise
            x_next = x_next + noise(sigmas[i], sigmas[i + 1]) * (variance**0.5) * s_noise
        older = [(s, denoised), *older][:2]
        x = x_next
    return x
