"""Multistep samplers, which reuse denoiser outputs of earlier steps: LMS, DPM++ 2M, DPM++ 2M SDE (midpoint
or Heun) and DPM++ 3M SDE. One model evaluation per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from numpy.polynomial import Polynomial

from webui.engine.errors import InvalidParameter
from webui.engine.samplers.noise import LazyNoise, NoiseSampler
from webui.engine.samplers.step_math import Denoiser, StepCallback, report, sigma_batch, to_d

Generators = torch.Generator | Sequence[torch.Generator] | None
SOLVER_TYPES = ("midpoint", "heun")


def lms_coefficient(sigmas: Sequence[float], i: int, j: int, order: int) -> float:
    """Weight of the derivative from step ``i - j`` in the linear multistep update of step ``i``.

    It is the integral over ``[sigma_i, sigma_{i+1}]`` of the Lagrange basis polynomial that is 1 at
    ``sigma_{i-j}`` and 0 at the other ``order - 1`` nodes ``sigma_i, sigma_{i-1}, ...``, integrated exactly.
    """
    nodes = [float(sigmas[i - k]) for k in range(order)]
    basis = Polynomial([1.0])
    for k, node in enumerate(nodes):
        if k != j:
            basis = basis * Polynomial([-node, 1.0]) / (nodes[j] - node)
    antiderivative = basis.integ()
    return float(antiderivative(float(sigmas[i + 1])) - antiderivative(float(sigmas[i])))


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep method of up to ``order`` on the ODE in sigma (lower orders while warming up)."""
    extra_args = extra_args or {}
    sigma_list = [float(value) for value in sigmas]
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigma_batch(x, sigmas[i]), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        history.append(to_d(x, sigmas[i], denoised))
        del history[:-order]
        current_order = len(history)
        for j, derivative in enumerate(reversed(history)):
            x = x + lms_coefficient(sigma_list, i, j, current_order) * derivative
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): exponential integrator with D linearly extrapolated from the last two steps."""
    extra_args = extra_args or {}
    previous: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            target = denoised
            if previous is not None:
                h = sigma.log() - sigma_next.log()
                h_last = sigmas[i - 1].log() - sigma.log()
                half_inverse_ratio = h / (2 * h_last)
                target = (1 + half_inverse_ratio) * denoised - half_inverse_ratio * previous
            x = target + (x - target) * (sigma_next / sigma)
        previous = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
    seed: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE; ``solver_type`` "midpoint" or "heun" (the latter is "DPM++ 2M SDE Heun")."""
    if solver_type not in SOLVER_TYPES:
        raise InvalidParameter(
            "solver_type", f"unknown solver type {solver_type!r}; valid: {', '.join(SOLVER_TYPES)}"
        )
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator, seed, brownian=True)
    previous: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            eta_h = eta * h
            # phi = 1 - exp(-(1 + eta) h): the weight the (noise-damped) step gives to D.
            phi = -torch.expm1(-h - eta_h)
            x = (sigma_next / sigma) * torch.exp(-eta_h) * x + phi * denoised
            if previous is not None:
                slope = (denoised - previous) * (h / h_last)
                if solver_type == "heun":
                    x = x + (1 - phi / (h + eta_h)) * slope
                else:
                    x = x + 0.5 * phi * slope
            if eta:
                x = x + noise(sigma, sigma_next) * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
            h_last = h
        previous = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
    seed: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep with D's first and second divided differences."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator, seed, brownian=True)
    older: list[tuple[torch.Tensor, torch.Tensor]] = []  # (denoised, h) of the last two steps, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = sigma.log() - sigma_next.log()
        h_eta = h * (eta + 1)
        x = torch.exp(-h_eta) * x - torch.expm1(-h_eta) * denoised
        phi_2 = torch.expm1(-h_eta) / h_eta + 1
        if len(older) == 2:
            (d_1, h_1), (d_2, h_2) = older
            r0, r1 = h_1 / h, h_2 / h
            diff_0 = (denoised - d_1) / r0
            diff_1 = (d_1 - d_2) / r1
            first = diff_0 + (diff_0 - diff_1) * r0 / (r0 + r1)
            second = (diff_0 - diff_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * first - phi_3 * second
        elif len(older) == 1:
            (d_1, h_1) = older[0]
            x = x + phi_2 * (denoised - d_1) / (h_1 / h)
        if eta:
            x = x + noise(sigma, sigma_next) * sigma_next * (-torch.expm1(-2 * h * eta)).sqrt() * s_noise
        older = [(denoised, h), *older][:2]
    return x
