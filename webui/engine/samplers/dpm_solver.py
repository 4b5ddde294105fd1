"""DPM-Solver (Lu et al. 2022) with fixed ("DPM fast") and adaptive ("DPM adaptive") step sizes.

Both work in ``t = -log(sigma)`` on the noise prediction ``eps = (x - D) / sigma``. As in k-diffusion they only
use the schedule's end points: they integrate from ``sigmas[0]`` to the smallest non-zero sigma and return the
sample there (no final denoise to sigma 0). ``DPM fast`` spends ``len(sigmas) - 1`` model evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from webui.engine.errors import InvalidParameter
from webui.engine.samplers.noise import LazyNoise, NoiseSampler
from webui.engine.samplers.step_math import Denoiser, StepCallback, ancestral_step, report, sigma_batch

Generators = torch.Generator | Sequence[torch.Generator] | None


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return (-t).exp()


def _time(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma.log()


class _Solver:
    """DPM-Solver steps of order 1, 2 and 3 with a per-step cache of eps evaluations."""

    def __init__(self, model: Denoiser, extra_args: dict) -> None:
        self.model = model
        self.extra_args = extra_args
        self.evaluations = 0

    def eps(self, cache: dict, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = _sigma(t)
            cache[key] = (x - self.model(x, sigma_batch(x, sigma), **self.extra_args)) / sigma
            self.evaluations += 1
        return cache[key]

    def step_1(self, x, t, t_next, cache) -> torch.Tensor:
        h = t_next - t
        return x - _sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x, t, t_next, cache, r1: float = 0.5) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1: float = 1 / 3, r2: float = 2 / 3) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - _sigma(s2) * (r2 * h).expm1() * eps
            - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (
            x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        )


def _end_points(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = sigmas[sigmas > 0]
    if positive.numel() < 1 or float(positive.min()) >= float(sigmas.max()):
        raise InvalidParameter(
            "steps", "DPM fast/adaptive need a schedule with two different non-zero sigmas"
        )
    return positive.min(), sigmas.max()


def _noise_after(t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor, eta: float):
    """Deterministic target time and the noise to add afterwards, for a step ``t -> t_next``."""
    if not eta:
        return t_next, torch.zeros_like(t_next)
    sigma_down, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_target = torch.minimum(t_end, _time(sigma_down))
    sigma_up = (_sigma(t_next) ** 2 - _sigma(t_target) ** 2).clamp(min=0) ** 0.5
    return t_target, sigma_up


@torch.no_grad()
def sample_dpm_fast(
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
    """DPM-Solver with ``len(sigmas) - 1`` evaluations in steps of order 3 (ending with 2/1), uniform in t."""
    extra_args = extra_args or {}
    sigma_min, sigma_max = _end_points(sigmas)
    nfe = len(sigmas) - 1
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    solver = _Solver(model, extra_args)
    t_start, t_end = _time(sigma_max), _time(sigma_min)
    count = nfe // 3 + 1
    times = torch.linspace(float(t_start), float(t_end), count + 1, dtype=sigmas.dtype)
    orders = [3] * (count - 2) + [2, 1] if nfe % 3 == 0 else [3] * (count - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = times[i], times[i + 1]
        t_target, sigma_up = _noise_after(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        report(callback, x, i, _sigma(t), _sigma(t), x - _sigma(t) * eps)
        step = {1: solver.step_1, 2: solver.step_2, 3: solver.step_3}[order]
        x = step(x, t, t_target, cache)
        if sigma_up > 0:
            x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * sigma_up
    return x


class PIDStepSizeController:
    """Step-size control for the adaptive solver (a PID controller on the inverse error, Söderlind 2003)."""

    def __init__(
        self,
        h: float,
        pcoeff: float,
        icoeff: float,
        dcoeff: float,
        order: float = 1,
        accept_safety: float = 0.81,
        eps: float = 1e-8,
    ) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self._inverse_errors: list[float] = []

    def propose_step(self, error: float) -> bool:
        """Scale ``h`` from the latest error estimate; return whether the step just taken is accepted."""
        inverse = 1 / (float(error) + self.eps)
        if not self._inverse_errors:
            self._inverse_errors = [inverse] * 3
        self._inverse_errors[0] = inverse
        e0, e1, e2 = self._inverse_errors
        factor = e0**self.b1 * e1**self.b2 * e2**self.b3
        factor = 1 + math.atan(factor - 1)  # soft limiter
        accepted = factor >= self.accept_safety
        if accepted:
            self._inverse_errors = [e0, e0, e1]
        self.h *= factor
        return accepted


@torch.no_grad()
def sample_dpm_adaptive(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
    max_steps: int = 10_000,
) -> torch.Tensor:
    """DPM-Solver-12 / -23 with embedded error estimates and PID step control, from sigma_max to sigma_min.

    ``order`` 3 compares a 2nd- and a 3rd-order step, 2 a 1st- and 2nd-order one; ``rtol``/``atol`` set the
    tolerated error per step. The step count is not fixed by ``sigmas`` (only its end points are used).
    """
    if order not in (2, 3):
        raise InvalidParameter("order", f"DPM adaptive order must be 2 or 3, got {order}")
    extra_args = extra_args or {}
    sigma_min, sigma_max = _end_points(sigmas)
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    solver = _Solver(model, extra_args)
    s, t_end = _time(sigma_max), _time(sigma_min)
    controller = PIDStepSizeController(
        abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety
    )
    x_prev = x
    step = 0
    while s < t_end - 1e-5:
        if step >= max_steps:
            raise InvalidParameter(
                "rtol", f"DPM adaptive did not finish in {max_steps} steps; raise rtol/atol"
            )
        cache: dict = {}
        t = torch.minimum(t_end, s + controller.h)
        t_target, sigma_up = _noise_after(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_target, cache)
            x_high = solver.step_2(x, s, t_target, cache)
        else:
            x_low = solver.step_2(x, s, t_target, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_target, cache)
        tolerance = torch.maximum(
            torch.full_like(x_low, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs())
        )
        error = torch.linalg.vector_norm((x_low - x_high) / tolerance) / x.numel() ** 0.5
        if controller.propose_step(float(error)):
            x_prev = x_low
            x = x_high
            if sigma_up > 0:
                x = x + noise(_sigma(s), _sigma(t)) * s_noise * sigma_up
            s = t
        report(callback, x, step, _sigma(s), _sigma(s), denoised)
        step += 1
    return x
