"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes").

Heun steps follow the ODE; at chosen points the sample is pushed back up to a higher noise level with fresh
noise and the interval is integrated again, which contracts accumulated errors. With no explicit plan the
sampler chooses one as A1111 does: from 20 steps on, the base schedule is rebuilt as a Karras schedule with
fewer steps and one (from 36 steps: two) restart segments from sigma ~0.1 back up to sigma 2 are inserted, so
the total number of steps stays close to ``len(sigmas) - 1``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch

from webui.engine.samplers.noise import LazyNoise, NoiseSampler
from webui.engine.samplers.step_math import Denoiser, StepCallback, report, sigma_batch, to_d
from webui.engine.schedules import karras

Generators = torch.Generator | Sequence[torch.Generator] | None
# restart plan: {sigma where the restart starts: (steps of each restart segment, repetitions, sigma to go up to)}
RestartPlan = Mapping[float, tuple[int, int, float]]


def _nearest_index(sigmas: torch.Tensor, value: float) -> int:
    return int(torch.argmin((sigmas - value).abs()))


def automatic_restart_plan(sigmas: torch.Tensor) -> tuple[torch.Tensor, dict[float, tuple[int, int, float]]]:
    """A1111's default: the (possibly shortened) base schedule and the restart plan for ``len(sigmas) - 1``."""
    steps = len(sigmas) - 1
    if steps < 20:
        return sigmas, {}
    segment_steps, repeats = (steps // 4, 2) if steps >= 36 else (9, 1)
    base = karras(steps - segment_steps * repeats, float(sigmas[-2]), float(sigmas[0])).to(sigmas)
    return base, {0.1: (segment_steps + 1, repeats, 2.0)}


def restart_step_list(sigmas: torch.Tensor, plan: RestartPlan) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Expand a schedule and a restart plan into the ordered ``(sigma_from, sigma_to)`` pairs to integrate."""
    starts = {_nearest_index(sigmas, key): value for key, value in plan.items()}
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in starts:
            continue
        segment_steps, repeats, sigma_top = starts[i + 1]
        low_index, high_index = i + 1, _nearest_index(sigmas, sigma_top)
        if high_index >= low_index:
            continue
        segment = karras(segment_steps, float(sigmas[low_index]), float(sigmas[high_index])).to(sigmas)[:-1]
        for _ in range(repeats):
            pairs.extend(itertools.pairwise(segment))
    return pairs


@torch.no_grad()
def sample_restart(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: StepCallback | None = None,
    disable: bool | None = None,
    s_noise: float = 1.0,
    restart_list: RestartPlan | None = None,
    noise_sampler: NoiseSampler | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Heun sampling with restarts; ``restart_list`` overrides the automatic plan (see module docstring)."""
    extra_args = extra_args or {}
    if restart_list is None:
        sigmas, restart_list = automatic_restart_plan(sigmas)
    noise = LazyNoise(x, sigmas, noise_sampler, generator)
    last_sigma: torch.Tensor | None = None
    for i, (sigma, sigma_next) in enumerate(restart_step_list(sigmas, restart_list)):
        if last_sigma is not None and last_sigma < sigma:
            x = x + noise(last_sigma, sigma) * s_noise * (sigma**2 - last_sigma**2) ** 0.5
        denoised = model(x, sigma_batch(x, sigma), **extra_args)
        report(callback, x, i, sigma_next, sigma, denoised)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_euler = x + d * dt
            d_next = to_d(x_euler, sigma_next, model(x_euler, sigma_batch(x, sigma_next), **extra_args))
            x = x + (d + d_next) / 2 * dt
        last_sigma = sigma_next
    return x
