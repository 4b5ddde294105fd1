"""Samplers on an analytic Gaussian denoiser, noise sources and the sampler registry."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.engine.analytic import GaussianData
from webui.engine import schedules
from webui.engine.discrete import DiscreteSchedule
from webui.engine.errors import InvalidParameter, JobCancelled
from webui.engine.samplers import (
    BrownianTreeNoiseSampler,
    SamplerInfo,
    create_registries,
    prepare_sigmas,
    sample_ddim,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpm_adaptive,
    sample_dpm_fast,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lcm,
    sample_lms,
    sample_plms,
    sample_unipc,
)

DATA = GaussianData(mu=0.5, s=0.7)
MODEL = DiscreteSchedule.sd_default()
SIGMA_MAX, SIGMA_END = 14.6, 0.03


def _ode_error(sampler, steps: int, **options) -> float:
    """Max error against the exact ODE solution, integrating down to SIGMA_END (schedule without the 0)."""
    sigmas = schedules.karras(steps, SIGMA_END, SIGMA_MAX)[:-1].double()
    x = DATA.noisy_sample((2, 16), SIGMA_MAX, torch.Generator().manual_seed(0))
    out = sampler(DATA.denoiser, x.clone(), sigmas, **options)
    return float((out - DATA.ode_solution(x, SIGMA_MAX, SIGMA_END)).abs().max())


# (sampler, options, lowest acceptable observed order, highest for first-order methods)
CONVERGENCE = {
    "euler": (sample_euler, {}, 0.8, 1.3),
    "ddim_eta0": (sample_ddim, {"eta": 0.0}, 0.8, 1.3),
    "heun": (sample_heun, {}, 1.7, None),
    "dpm_2": (sample_dpm_2, {}, 1.7, None),
    "dpmpp_2m": (sample_dpmpp_2m, {}, 1.7, None),
    "lms": (sample_lms, {}, 2.5, None),
    "plms": (sample_plms, {}, 1.7, None),
    "unipc_bh1": (sample_unipc, {}, 1.8, None),
    "unipc_bh2": (sample_unipc, {"variant": "bh2"}, 1.8, None),
    "dpmpp_2s_a_eta0": (sample_dpmpp_2s_ancestral, {"eta": 0.0}, 1.7, None),
    "dpmpp_sde_eta0": (sample_dpmpp_sde, {"eta": 0.0}, 1.7, None),
    "dpmpp_2m_sde_eta0": (sample_dpmpp_2m_sde, {"eta": 0.0}, 1.7, None),
    "dpmpp_2m_sde_heun_eta0": (sample_dpmpp_2m_sde, {"eta": 0.0, "solver_type": "heun"}, 1.7, None),
    "dpmpp_3m_sde_eta0": (sample_dpmpp_3m_sde, {"eta": 0.0}, 1.7, None),
}


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_deterministic_samplers_converge_to_exact_ode_solution(name):
    sampler, options, min_order, max_order = CONVERGENCE[name]
    coarse, fine = _ode_error(sampler, 40, **options), _ode_error(sampler, 80, **options)
    order = math.log2(coarse / fine)
    assert fine < 0.1
    assert order > min_order, (coarse, fine)
    if max_order is not None:
        assert order < max_order, (coarse, fine)


def test_dpm_fast_and_adaptive_reach_the_exact_solution():
    errors = [_ode_error(sample_dpm_fast, nfe) for nfe in (15, 30, 60)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3
    # The error follows the tolerance (checked against k-diffusion's implementation, which behaves the same).
    second = [
        _ode_error(sample_dpm_adaptive, 10, order=2, rtol=rtol, atol=rtol / 10) for rtol in (0.05, 0.01, 1e-3)
    ]
    assert second[0] > second[1] > second[2] and second[2] < 2e-3
    assert _ode_error(sample_dpm_adaptive, 10, rtol=1e-4, atol=1e-6) < 1e-3


def test_final_step_to_zero_lands_near_the_ode_end_point():
    sigmas = schedules.karras(40, MODEL.sigma_min, MODEL.sigma_max)
    x = DATA.noisy_sample((1, 16), float(sigmas[0]), torch.Generator().manual_seed(3))
    exact = DATA.ode_solution(x, float(sigmas[0]), 0.0)
    for sampler in (
        sample_euler,
        sample_heun,
        sample_lms,
        sample_dpmpp_2m,
        sample_plms,
        sample_unipc,
        sample_ddim,
    ):
        out = sampler(DATA.denoiser, x.clone(), sigmas)
        assert float((out - exact).abs().max()) < 0.05, sampler.__name__


def test_ddim_matches_closed_form_alpha_space_update():
    alphas = MODEL.alphas_cumprod.double()
    timesteps = [999, 749, 499, 249]
    sigmas = torch.cat(
        [((1 - alphas[timesteps]) / alphas[timesteps]).sqrt(), torch.zeros(1, dtype=torch.float64)]
    )
    x_ve = DATA.noisy_sample((1, 32), float(sigmas[0]), torch.Generator().manual_seed(4))
    seen = []
    out = sample_ddim(
        DATA.denoiser, x_ve.clone(), sigmas, callback=lambda info: seen.append(info["x"].clone())
    )
    # The same steps in DDPM's alpha space, x_vp = sqrt(a) * x_ve.
    x_vp = x_ve * alphas[timesteps[0]].sqrt()
    prev_alphas = [*(alphas[t] for t in timesteps[1:]), torch.tensor(1.0, dtype=torch.float64)]
    for k, (t, a_prev) in enumerate(zip(timesteps, prev_alphas, strict=True)):
        a = alphas[t]
        assert torch.allclose(seen[k] * a.sqrt(), x_vp, atol=1e-10)
        sigma = ((1 - a) / a).sqrt()
        x0 = DATA.denoiser(x_vp / a.sqrt(), sigma.reshape(1))
        eps = (x_vp - a.sqrt() * x0) / (1 - a).sqrt()
        x_vp = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    assert torch.allclose(out, x_vp, atol=1e-10)


def _start(shape, sigma_max, seed=1):
    return DATA.noisy_sample(shape, sigma_max, torch.Generator().manual_seed(seed))


STOCHASTIC = ["DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "Restart",
              "DPM fast", "DPM adaptive"]  # fmt: skip


@pytest.mark.parametrize("label", STOCHASTIC)
def test_stochastic_samplers_reproduce_the_data_distribution(label):
    samplers, _ = create_registries()
    info, schedule = samplers.resolve(label)
    sigmas = prepare_sigmas(info, schedule, 30, MODEL).double()
    x = _start((4, 4096), float(sigmas[0]))
    options = dict(info.default_options)
    if info.brownian_noise:
        options["seed"] = [1, 2, 3, 4]
    else:
        options["generator"] = torch.Generator().manual_seed(5)
    out = info.function(DATA.denoiser, x, sigmas, **options)
    # 16384 values: the standard error of the mean is 0.0055, of the variance about 1.1 %.
    assert float(out.mean()) == pytest.approx(DATA.mu, abs=0.025)
    assert float(out.var()) == pytest.approx(DATA.s**2, rel=0.07)


def test_euler_ancestral_variance_follows_its_exact_discrete_recursion():
    # Euler a maps y = x - mu linearly: y' = c y + sigma_up z with c = (s^2 + sigma_down sigma) / (s^2 + sigma^2),
    # so its output variance is known exactly for every schedule (it falls short of s^2 by O(1/steps)).
    sigmas = schedules.karras(30, MODEL.sigma_min, MODEL.sigma_max).double()
    x = _start((4, 4096), float(sigmas[0]))
    out = sample_euler_ancestral(DATA.denoiser, x, sigmas, generator=torch.Generator().manual_seed(7))
    var = DATA.s**2 + float(sigmas[0]) ** 2
    s2 = DATA.s**2
    for sigma, sigma_next in itertools.pairwise(sigmas.tolist()):
        up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        down = math.sqrt(sigma_next**2 - up**2)
        var = ((s2 + down * sigma) / (s2 + sigma**2)) ** 2 * var + up**2
    assert var < 0.95 * s2
    assert float(out.var()) == pytest.approx(var, rel=0.04)
    assert float(out.mean()) == pytest.approx(DATA.mu, abs=0.025)


def test_ddim_with_eta_one_is_euler_ancestral():
    sigmas = schedules.karras(12, MODEL.sigma_min, MODEL.sigma_max).double()
    x = _start((2, 64), float(sigmas[0]))
    ddim = sample_ddim(DATA.denoiser, x, sigmas, eta=1.0, generator=torch.Generator().manual_seed(9))
    euler_a = sample_euler_ancestral(DATA.denoiser, x, sigmas, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(ddim, euler_a, atol=1e-9)


def test_lcm_follows_its_denoise_and_renoise_recursion():
    sigmas = schedules.karras(4, MODEL.sigma_min, MODEL.sigma_max).double()
    x = _start((4, 4096), float(sigmas[0]))
    out = sample_lcm(DATA.denoiser, x, sigmas, generator=torch.Generator().manual_seed(2))
    s2, var = DATA.s**2, DATA.s**2 + float(sigmas[0]) ** 2
    for sigma, sigma_next in itertools.pairwise(sigmas.tolist()):
        var = (s2 / (s2 + sigma**2)) ** 2 * var + sigma_next**2
    assert float(out.var()) == pytest.approx(var, rel=0.04)
    assert float(out.mean()) == pytest.approx(DATA.mu, abs=0.025)


def test_generator_seeds_reproduce_and_differ():
    sigmas = schedules.karras(8, MODEL.sigma_min, MODEL.sigma_max)
    x = _start((1, 64), float(sigmas[0])).float()

    def run(seed: int) -> torch.Tensor:
        return sample_euler_ancestral(DATA.denoiser, x, sigmas, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_per_item_generators_make_batch_items_reproducible():
    sigmas = schedules.karras(8, MODEL.sigma_min, MODEL.sigma_max)
    x = _start((2, 64), float(sigmas[0])).float()
    gens = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(22)]
    batch = sample_dpm_2_ancestral(DATA.denoiser, x, sigmas, generator=gens)
    alone = sample_dpm_2_ancestral(
        DATA.denoiser, x[1:], sigmas, generator=[torch.Generator().manual_seed(22)]
    )
    assert torch.allclose(batch[1:], alone, atol=1e-6)


@pytest.mark.parametrize("sampler", [sample_dpmpp_sde, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde])
def test_brownian_seeds_reproduce_per_image(sampler):
    sigmas = schedules.exponential(10, MODEL.sigma_min, MODEL.sigma_max)
    x = _start((3, 32), float(sigmas[0])).float()
    batch = sampler(DATA.denoiser, x, sigmas, seed=[5, 6, 7])
    again = sampler(DATA.denoiser, x, sigmas, seed=[5, 6, 7])
    alone = sampler(DATA.denoiser, x[2:], sigmas, seed=[7])
    other = sampler(DATA.denoiser, x[2:], sigmas, seed=[8])
    assert torch.equal(batch, again)
    assert torch.allclose(batch[2:], alone, atol=1e-6)
    assert not torch.allclose(alone, other)


def test_brownian_noise_is_standard_normal_and_consistent():
    x = torch.zeros(1, 20000)
    sampler = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=3)
    noise = sampler(torch.tensor(5.0), torch.tensor(4.0))
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.04)
    assert float(noise.std()) == pytest.approx(1.0, abs=0.03)
    # Increments over [4, 4.5] and [4.5, 5] add up to the one over [4, 5].
    halves = sampler(5.0, 4.5) * 0.5**0.5 + sampler(4.5, 4.0) * 0.5**0.5
    assert torch.allclose(halves, noise, atol=1e-4)


def test_missing_noise_source_raises_only_when_noise_is_needed():
    sigmas = schedules.karras(5, MODEL.sigma_min, MODEL.sigma_max)
    x = torch.zeros(1, 8)
    with pytest.raises(InvalidParameter) as info:
        sample_euler_ancestral(DATA.denoiser, x, sigmas)
    assert info.value.field == "seed"
    with pytest.raises(InvalidParameter):
        sample_euler(DATA.denoiser, x, sigmas, s_churn=1.0)
    deterministic = sample_euler_ancestral(DATA.denoiser, x + 1, sigmas, eta=0.0)
    assert torch.allclose(deterministic, sample_euler(DATA.denoiser, x + 1, sigmas), atol=1e-6)


def test_callback_runs_once_per_step_and_its_exceptions_propagate():
    sigmas = schedules.karras(6, MODEL.sigma_min, MODEL.sigma_max)
    x = torch.ones(1, 4)
    calls = []
    sample_heun(DATA.denoiser, x, sigmas, callback=calls.append)
    assert [c["i"] for c in calls] == list(range(6))
    assert set(calls[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert float(calls[2]["sigma"]) == pytest.approx(float(sigmas[2]))

    def cancel(info):
        if info["i"] == 2:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        sample_dpmpp_2m(DATA.denoiser, x, sigmas, callback=cancel)


def test_invalid_sampler_options():
    sigmas = schedules.karras(5, MODEL.sigma_min, MODEL.sigma_max)
    with pytest.raises(InvalidParameter) as info:
        sample_dpmpp_2m_sde(DATA.denoiser, torch.zeros(1, 4), sigmas, solver_type="rk4", seed=1)
    assert "midpoint" in info.value.message and "heun" in info.value.message
    samplers, _ = create_registries()
    with pytest.raises(InvalidParameter) as info:
        samplers.get("Euler").options_with({"etta": 1.0})
    assert info.value.field == "etta" and "s_churn" in info.value.message


def test_registry_lookup_and_legacy_names():
    samplers, schedule_registry = create_registries()
    assert samplers.get("k_dpmpp_2m").label == "DPM++ 2M"
    assert samplers.get("euler A").label == "Euler a"
    assert samplers.get("k_euler_ancestral").label == "Euler a"
    sampler, schedule = samplers.resolve("DPM++ 2M Karras")
    assert (sampler.label, schedule.label) == ("DPM++ 2M", "Karras")
    sampler, schedule = samplers.resolve("DPM++ 2M SDE Heun Exponential")
    assert (sampler.label, schedule.name) == ("DPM++ 2M SDE Heun", "exponential")
    sampler, schedule = samplers.resolve("k_dpm_2_a_ka")
    assert (sampler.label, schedule.name) == ("DPM2 a", "karras")
    sampler, schedule = samplers.resolve("Euler a")
    assert (sampler.label, schedule.name) == ("Euler a", "uniform")
    assert samplers.resolve("DPM++ 3M SDE", "Automatic")[1].name == "exponential"
    assert samplers.resolve("DPM++ 2M", None)[1].name == "karras"
    assert samplers.resolve("Euler", "SGMUniform")[1].label == "SGM Uniform"
    assert samplers.resolve("DDIM")[1].name == "ddim"
    with pytest.raises(InvalidParameter) as info:
        samplers.resolve("Eulr")
    assert info.value.field == "sampler_name" and "DPM++ 2M" in info.value.message
    with pytest.raises(InvalidParameter) as info:
        samplers.resolve("Euler", "Karass")
    assert info.value.field == "scheduler"
    assert len(samplers.labels()) == 19 and len(schedule_registry.labels()) == 12


def test_registry_flags_match_a1111():
    samplers, _ = create_registries()
    discard = {info.label for info in samplers.items() if info.discard_penultimate_sigma}
    assert discard == {"DPM2", "DPM2 a", "DPM++ 3M SDE"}
    brownian = {info.label for info in samplers.items() if info.brownian_noise}
    assert brownian == {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    defaults = {info.label: info.default_schedule for info in samplers.items()}
    assert defaults["DPM++ 2M"] == "karras" and defaults["DPM++ 2M SDE"] == "exponential"
    assert defaults["Euler a"] == "uniform" and defaults["Restart"] == "karras"
    heun = samplers.get("DPM++ 2M SDE Heun").api_options()
    assert heun == {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}
    for info in samplers.items():
        for option in info.default_options:
            assert info.accepts(option), (info.label, option)


def test_unregister_owner_removes_only_that_owner():
    samplers, schedule_registry = create_registries()
    extra = SamplerInfo("My Sampler", ("my_sampler",), sample_euler, "karras")
    samplers.register(extra, owner="ext-a")
    samplers.register(SamplerInfo("Other", (), sample_euler), owner="ext-b")
    with pytest.raises(ValueError):
        samplers.register(SamplerInfo("Clash", ("k_euler",), sample_euler), owner="ext-a")
    assert samplers.get("my_sampler") is extra
    assert samplers.resolve("My Sampler Karras")[0] is extra
    assert samplers.unregister_owner("ext-a") == 1
    assert "My Sampler" not in samplers and "my_sampler" not in samplers
    assert "Other" in samplers and "Euler" in samplers and "k_euler" in samplers
    assert schedule_registry.unregister_owner("ext-a") == 0
    assert samplers.unregister_owner("core") == 19
    assert samplers.labels() == ("Other",)
