"""The discrete noise schedule of a DDPM-trained model, seen in sigma space.

A model trained on ``T`` discrete timesteps has ``alphas_cumprod[t]`` (the signal fraction left at step ``t``).
Samplers work with the equivalent noise level ``sigma = sqrt((1 - a) / a)`` of the variance-exploding form
``x = x0 + sigma * eps``. :class:`DiscreteSchedule` holds that table and converts between noise levels and
(continuous, interpolated) timesteps, which the sigma schedules and the UNet wrapper need.
"""

from __future__ import annotations

import dataclasses

import torch

# Terminal alpha_bar used after a zero-terminal-SNR rescale: exactly 0 would make sigma_max infinite, so the
# last step keeps a tiny signal fraction (the value A1111 uses, sigma_max ~ 4518).
ZERO_SNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Return ``alphas_cumprod`` of the "scaled_linear" beta schedule that Stable Diffusion was trained with.

    The betas are linear in ``sqrt(beta)``; the product is taken in float64 and returned as float32, as the
    original checkpoints store it.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Rescale ``alphas_cumprod`` so that the last timestep has (almost) zero signal-to-noise ratio.

    This is A1111's "Noise schedule for sampling: Zero Terminal SNR" (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed"): ``sqrt(alpha_bar)`` is shifted so that its last value is 0 and
    scaled so that its first value is unchanged. The last entry is then set to a tiny positive value so that
    sigma stays finite.
    """
    root = alphas_cumprod.to(torch.float64).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    rescaled = root**2
    rescaled[-1] = ZERO_SNR_TERMINAL_ALPHA_BAR
    return rescaled.to(alphas_cumprod.dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """Noise levels of a model trained on discrete timesteps.

    Attributes:
        alphas_cumprod: 1-D tensor, one value per training timestep (decreasing).
        is_sdxl: the model is SDXL-like (some schedules, e.g. Align Your Steps, have per-family tables).
        sigmas: ascending noise levels ``sqrt((1 - a) / a)``, one per timestep (index = timestep).
        log_sigmas: ``log(sigmas)``.
        sigma_min / sigma_max: the smallest and largest trained noise level, as floats.
    """

    alphas_cumprod: torch.Tensor
    is_sdxl: bool = False
    sigmas: torch.Tensor = dataclasses.field(init=False, repr=False)
    log_sigmas: torch.Tensor = dataclasses.field(init=False, repr=False)
    sigma_min: float = dataclasses.field(init=False)
    sigma_max: float = dataclasses.field(init=False)
    _log_sigmas_by_device: dict[torch.device, torch.Tensor] = dataclasses.field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        alphas = torch.as_tensor(self.alphas_cumprod).detach().to("cpu", torch.float32).clone()
        if alphas.ndim != 1 or alphas.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with at least two values")
        if not bool(((alphas > 0) & (alphas <= 1)).all()):
            raise ValueError("alphas_cumprod values must lie in (0, 1]")
        sigmas = ((1 - alphas) / alphas) ** 0.5
        object.__setattr__(self, "alphas_cumprod", alphas)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "log_sigmas", sigmas.log())
        object.__setattr__(self, "sigma_min", float(sigmas[0]))
        object.__setattr__(self, "sigma_max", float(sigmas[-1]))

    @classmethod
    def sd_default(
        cls,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        *,
        is_sdxl: bool = False,
        zero_terminal_snr: bool = False,
    ) -> DiscreteSchedule:
        """Build the schedule of SD 1.x / 2.x / SDXL checkpoints ("scaled_linear", 0.00085 .. 0.012)."""
        alphas = scaled_linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
        if zero_terminal_snr:
            alphas = rescale_zero_terminal_snr(alphas)
        return cls(alphas, is_sdxl=is_sdxl)

    @property
    def num_timesteps(self) -> int:
        """Number of training timesteps."""
        return int(self.sigmas.numel())

    def with_zero_terminal_snr(self) -> DiscreteSchedule:
        """Return a copy whose ``alphas_cumprod`` were rescaled with :func:`rescale_zero_terminal_snr`."""
        return DiscreteSchedule(rescale_zero_terminal_snr(self.alphas_cumprod), is_sdxl=self.is_sdxl)

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Map noise levels to continuous timesteps by linear interpolation in log-sigma.

        Values outside ``[sigma_min, sigma_max]`` are clamped to timestep 0 or ``T - 1``.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigmas = self._log_sigmas_on(sigma.device)  # computed where sigma lives: no host round trip
        log_sigma = sigma.log().reshape(-1)
        count = log_sigmas.numel()
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, count - 2)
        low_value, high_value = log_sigmas[low], log_sigmas[low + 1]
        weight = ((log_sigma - low_value) / (high_value - low_value)).clamp(0, 1)
        t = low.to(torch.float32) + weight
        return t.reshape(sigma.shape)

    def _log_sigmas_on(self, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":
            return self.log_sigmas
        if device not in self._log_sigmas_by_device:
            self._log_sigmas_by_device[device] = self.log_sigmas.to(device)
        return self._log_sigmas_by_device[device]

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Map continuous timesteps to noise levels, interpolating log-sigma between neighbouring steps."""
        t = torch.as_tensor(t, dtype=torch.float32)
        flat = t.to("cpu").reshape(-1).clamp(0, self.num_timesteps - 1)
        low = flat.floor().long()
        high = flat.ceil().long()
        weight = flat - low.to(torch.float32)
        log_sigma = torch.lerp(self.log_sigmas[low], self.log_sigmas[high], weight)
        return log_sigma.exp().reshape(t.shape).to(t.device)
