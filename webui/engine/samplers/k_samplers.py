"""Single-step samplers of the k-diffusion family: Euler, Heun, DPM2, their ancestral forms, DPM++ 2S a,
DPM++ SDE and LCM.

All follow ``sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, **options) -> x`` where
``model(x, sigma_batch, **extra_args)`` returns the denoised estimate. ``disable`` (a progress-bar switch in
k-diffusion) is accepted and ignored: progress is reported through ``callback``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from webui.engine.samplers.noise import LazyNoise, NoiseSampler
from webui.engine.samplers.step_math import (
    Denoiser,
    StepCallback,
    ancestral_step,
    churn_gamma,
    report,
    sigma_batch,
    to_d,
)

Generators = torch.Generator | Sequence[torch.Generator] | None


def _churned(
    x: torch.Tensor,
    sigma: torch.Tensor,
    steps: int,
    noise: LazyNoise,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raise the noise level from sigma to sigma_hat by adding fresh noise (no-op without churn)."""
    gamma = churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax)
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise(sigma, sigma_hat) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2, optional churn)."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = _churned(x, sigmas[i], steps, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_batch(x, sigma_hat), **extra_args)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(
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
) -> torch.Tensor:
    """Euler step down to sigma_down, then fresh noise up to the next sigma ("Euler a")."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Heun's second-order method (trapezoidal corrector); the final step to sigma 0 is an Euler step."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma_next = sigmas[i + 1]
        x, sigma_hat = _churned(x, sigmas[i], steps, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_batch(x, sigma_hat), **extra_args)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        d = to_d(x, sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
            continue
        x_euler = x + d * dt
        d_next = to_d(x_euler, sigma_next, model(x_euler, sigma_batch(x, sigma_next), **extra_args))
        x = x + (d + d_next) / 2 * dt
    return x


def _log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.log() + b.log()).div(2).exp()


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """DPM-Solver-2 in Karras' form: the slope at the log-midpoint sigma drives the whole step."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma_next = sigmas[i + 1]
        x, sigma_hat = _churned(x, sigmas[i], steps, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_batch(x, sigma_hat), **extra_args)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        d = to_d(x, sigma_hat, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
            continue
        sigma_mid = _log_midpoint(sigma_hat, sigma_next)
        x_mid = x + d * (sigma_mid - sigma_hat)
        d_mid = to_d(x_mid, sigma_mid, model(x_mid, sigma_batch(x, sigma_mid), **extra_args))
        x = x + d_mid * (sigma_next - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
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
) -> torch.Tensor:
    """DPM2 down to sigma_down, then fresh noise up to the next sigma ("DPM2 a")."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_mid = x + d * (sigma_mid - sigma)
            d_mid = to_d(x_mid, sigma_mid, model(x_mid, sigma_batch(x, sigma_mid), **extra_args))
            x = x + d_mid * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


def _exp_step(
    x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor, denoised: torch.Tensor
) -> torch.Tensor:
    """First-order exponential-integrator step ``x -> D + (sigma_to / sigma) (x - D)`` (DPM-Solver-1)."""
    return denoised + (x - denoised) * (sigma_to / sigma)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
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
) -> torch.Tensor:
    """DPM-Solver++(2S): a half step (in log-sigma) to re-evaluate D, then the full step; ancestral noise."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            sigma_mid = _log_midpoint(sigma, sigma_down)
            x_mid = _exp_step(x, sigma, sigma_mid, denoised)
            denoised_mid = model(x_mid, sigma_batch(x, sigma_mid), **extra_args)
            x = _exp_step(x, sigma, sigma_down, denoised_mid)
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
    seed: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic, second order): two ancestral sub-steps per step, meeting at fraction ``r``
    of the step in log-sigma. ``seed`` (int or one per image) builds a Brownian-tree noise sampler.
    """
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator, seed, brownian=True)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
            continue
        log_ratio = sigma.log() - sigma_next.log()  # h, the step length in -log(sigma)
        sigma_r = (sigma.log() - r * log_ratio).exp()
        # First sub-step: ancestral step from sigma to sigma_r.
        down, up = ancestral_step(sigma, sigma_r, eta)
        x_r = _exp_step(x, sigma, down, denoised)
        if up > 0:
            x_r = x_r + noise(sigma, sigma_r) * s_noise * up
        denoised_r = model(x_r, sigma_batch(x, sigma_r), **extra_args)
        # Second sub-step: the full step with D extrapolated from the two estimates.
        weight = 1 / (2 * r)
        blended = (1 - weight) * denoised + weight * denoised_r
        down, up = ancestral_step(sigma, sigma_next, eta)
        x = _exp_step(x, sigma, down, blended)
        if up > 0:
            x = x + noise(sigma, sigma_next) * s_noise * up
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Latent Consistency Model sampling: jump to the denoised estimate, then re-noise to the next sigma."""
    extra_args = extra_args or {}
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma, sigma, denoised)
        x = denoised
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * sigma_next
    return x
