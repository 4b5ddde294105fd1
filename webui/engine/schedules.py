"""Sigma schedules ("Schedule type" in A1111): how a step count becomes a list of noise levels.

Every schedule is a function ``fn(n, sigma_min, sigma_max, *, model, device=None, **opts)`` returning a 1-D
float32 tensor of descending noise levels that ends in 0. Most return ``n + 1`` values (``n`` steps); the
"DDIM" schedule reproduces A1111's DDIM timestep spacing and yields one extra step when ``n`` does not divide
the number of training timesteps (e.g. 31 steps for 30), exactly as A1111 does.

``sigma_min`` / ``sigma_max`` normally are the model's trained range; schedules that pick the model's own
discrete noise levels (Uniform, Simple, DDIM) ignore them, as in A1111.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from webui.engine.discrete import DiscreteSchedule
from webui.engine.errors import InvalidParameter

# NVIDIA's "Align Your Steps" 10-step noise levels (11 values, https://research.nvidia.com/labs/toronto-ai/
# AlignYourSteps/howto.html), for SD 1.x/2.x and for SDXL.
AYS_SD1_SIGMAS: tuple[float, ...] = (
    14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029,
)  # fmt: skip
AYS_SDXL_SIGMAS: tuple[float, ...] = (
    14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029,
)  # fmt: skip

DEFAULT_KARRAS_RHO = 7.0
DEFAULT_POLYEXPONENTIAL_RHO = 1.0
DEFAULT_BETA_ALPHA = 0.6
DEFAULT_BETA_BETA = 0.6


def _with_zero(values: torch.Tensor | list[float], device: torch.device | str | None) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    return torch.cat([tensor, tensor.new_zeros(1)]).to(device or "cpu")


def _check_steps(n: int) -> None:
    if int(n) != n or n < 1:
        raise InvalidParameter("steps", f"must be a positive whole number, got {n!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max):
        raise InvalidParameter(
            "sigma_min", f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def _need_model(model: DiscreteSchedule | None, schedule: str) -> DiscreteSchedule:
    if model is None:
        raise InvalidParameter(
            "scheduler", f"the {schedule} schedule needs the model's discrete noise levels"
        )
    return model


def uniform(
    n: int, sigma_min: float, sigma_max: float, *, model: DiscreteSchedule | None = None, device=None
) -> torch.Tensor:
    """Timesteps evenly spaced from the last training step down to step 0 (k-diffusion's ``get_sigmas``)."""
    _check_steps(n)
    model = _need_model(model, "Uniform")
    timesteps = torch.linspace(model.num_timesteps - 1, 0, n)
    return _with_zero(model.t_to_sigma(timesteps), device)


def karras(
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    model: DiscreteSchedule | None = None,
    device=None,
    rho: float = DEFAULT_KARRAS_RHO,
) -> torch.Tensor:
    """Karras et al. (2022): evenly spaced in ``sigma ** (1 / rho)`` from sigma_max to sigma_min."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((high + ramp * (low - high)) ** rho, device)


def exponential(
    n: int, sigma_min: float, sigma_max: float, *, model: DiscreteSchedule | None = None, device=None
) -> torch.Tensor:
    """Evenly spaced in log-sigma from sigma_max to sigma_min."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    return _with_zero(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp(), device
    )


def polyexponential(
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    model: DiscreteSchedule | None = None,
    device=None,
    rho: float = DEFAULT_POLYEXPONENTIAL_RHO,
) -> torch.Tensor:
    """Log-sigma follows ``ramp ** rho`` (ramp from 1 to 0); rho 1 equals the exponential schedule."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return _with_zero((ramp * (log_max - log_min) + log_min).exp(), device)


def sgm_uniform(
    n: int, sigma_min: float, sigma_max: float, *, model: DiscreteSchedule | None = None, device=None
) -> torch.Tensor:
    """Continuous timesteps evenly spaced over ``n + 1`` points, the last (sigma_min) replaced by 0."""
    _check_steps(n)
    model = _need_model(model, "SGM Uniform")
    start, end = model.sigma_to_t(sigma_max), model.sigma_to_t(sigma_min)
    timesteps = torch.linspace(float(start), float(end), n + 1)[:-1]
    return _with_zero(model.t_to_sigma(timesteps), device)


def normal(
    n: int, sigma_min: float, sigma_max: float, *, model: DiscreteSchedule | None = None, device=None
) -> torch.Tensor:
    """Continuous timesteps evenly spaced from sigma_max's to sigma_min's (both included), then 0."""
    _check_steps(n)
    model = _need_model(model, "Normal")
    start, end = model.sigma_to_t(sigma_max), model.sigma_to_t(sigma_min)
    timesteps = torch.linspace(float(start), float(end), n)
    return _with_zero(model.t_to_sigma(timesteps), device)


def simple(
    n: int, sigma_min: float, sigma_max: float, *, model: DiscreteSchedule | None = None, device=None
) -> torch.Tensor:
    """Every ``T / n``-th trained noise level, counted down from the largest."""
    _check_steps(n)
    model = _need_model(model, "Simple")
    stride = model.num_timesteps / n
    picks = [model.sigmas[-(1 + int(step * stride))] for step in range(n)]
    return _with_zero(torch.stack(picks), device)


def ddim(
    n: int, sigma_min: float, sigma_max: float, *, model: DiscreteSchedule | None = None, device=None
) -> torch.Tensor:
    """DDIM's timesteps ``1, 1 + k, 1 + 2k, ...`` (``k = T // n``) as noise levels, descending, then 0."""
    _check_steps(n)
    model = _need_model(model, "DDIM")
    stride = max(model.num_timesteps // n, 1)
    timesteps = torch.arange(1, model.num_timesteps, stride)
    return _with_zero(model.sigmas[timesteps].flip(0), device)


def kl_optimal(
    n: int, sigma_min: float, sigma_max: float, *, model: DiscreteSchedule | None = None, device=None
) -> torch.Tensor:
    """ "KL Optimal" (Sabour et al. 2024): evenly spaced in ``arctan(sigma)``.

    A1111 returns ``n + 1`` values ending at sigma_min; here the first ``n`` are the same and the last is 0,
    so that every schedule ends in 0.
    """
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    angle_min, angle_max = math.atan(sigma_min), math.atan(sigma_max)
    fraction = torch.arange(n, dtype=torch.float64) / n
    return _with_zero(torch.tan(fraction * angle_min + (1 - fraction) * angle_max), device)


def _loglinear_resample(values: tuple[float, ...], count: int) -> np.ndarray:
    """Resample a descending list to ``count`` values, interpolating log-values linearly over position."""
    ascending_logs = np.log(np.asarray(values[::-1], dtype=np.float64))
    positions = np.linspace(0, 1, len(values))
    resampled = np.interp(np.linspace(0, 1, count), positions, ascending_logs)
    return np.exp(resampled)[::-1].copy()


def align_your_steps(
    n: int, sigma_min: float, sigma_max: float, *, model: DiscreteSchedule | None = None, device=None
) -> torch.Tensor:
    """NVIDIA's Align Your Steps noise levels for SD 1.x (default) or SDXL (``model.is_sdxl``).

    Like A1111, ``n`` steps use ``n`` non-zero noise levels resampled log-linearly from the published
    11-value list (so the list is reproduced as is at ``n = 11``), then 0.
    """
    _check_steps(n)
    table = AYS_SDXL_SIGMAS if model is not None and model.is_sdxl else AYS_SD1_SIGMAS
    values = np.asarray(table, dtype=np.float64) if n == len(table) else _loglinear_resample(table, n)
    return _with_zero(torch.from_numpy(values), device)


def beta(
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    model: DiscreteSchedule | None = None,
    device=None,
    alpha: float = DEFAULT_BETA_ALPHA,
    beta: float = DEFAULT_BETA_BETA,
) -> torch.Tensor:
    """ "Beta Sampling is All You Need" (Lee et al. 2024), as A1111 applies it.

    The quantiles ``ppf(1 - i / (n - 1))`` of a Beta(alpha, beta) distribution place the ``n`` noise levels
    linearly between sigma_min and sigma_max; steps crowd at both ends for alpha = beta < 1.
    """
    from scipy import stats

    _check_steps(n)
    if alpha <= 0 or beta <= 0:
        raise InvalidParameter("beta", f"Beta schedule alpha and beta must be positive, got {alpha}, {beta}")
    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return _with_zero(torch.from_numpy(sigma_min + quantiles * (sigma_max - sigma_min)), device)
