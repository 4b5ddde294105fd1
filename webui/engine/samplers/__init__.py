"""Samplers with k-diffusion's contract, their noise sources and the sampler / schedule catalogues.

A sampler is ``sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, **options) -> x`` with
``model(x, sigma_batch, **extra_args) -> denoised``. Randomness only comes from an injected ``noise_sampler``,
a ``generator`` (one, or one per batch item) or, for SDE samplers, a ``seed`` for a Brownian tree.
"""

from webui.engine.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from webui.engine.samplers.k_samplers import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lcm,
)
from webui.engine.samplers.multistep import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m_sde,
    sample_lms,
)
from webui.engine.samplers.noise import BrownianTreeNoiseSampler, GeneratorNoiseSampler, NoiseSampler
from webui.engine.samplers.registry import (
    SamplerInfo,
    SamplerRegistry,
    ScheduleInfo,
    ScheduleRegistry,
    builtin_samplers,
    builtin_schedules,
    create_registries,
    prepare_sigmas,
)
from webui.engine.samplers.restart import sample_restart
from webui.engine.samplers.timestep_samplers import sample_ddim, sample_plms, sample_unipc

__all__ = [
    "BrownianTreeNoiseSampler",
    "GeneratorNoiseSampler",
    "NoiseSampler",
    "SamplerInfo",
    "SamplerRegistry",
    "ScheduleInfo",
    "ScheduleRegistry",
    "builtin_samplers",
    "builtin_schedules",
    "create_registries",
    "prepare_sigmas",
    "sample_ddim",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
    "sample_lms",
    "sample_plms",
    "sample_restart",
    "sample_unipc",
]
