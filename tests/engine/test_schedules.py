"""Sigma schedules, the discrete model schedule and sigma preparation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from webui.engine import schedules
from webui.engine.discrete import DiscreteSchedule, rescale_zero_terminal_snr
from webui.engine.errors import InvalidParameter
from webui.engine.samplers.registry import builtin_schedules, create_registries, prepare_sigmas

MODEL = DiscreteSchedule.sd_default()
SCHEDULES = [info for info in builtin_schedules() if info.function is not None]


def test_sd_default_range_matches_published_values():
    assert MODEL.sigma_min == pytest.approx(0.0292, abs=1e-4)
    assert MODEL.sigma_max == pytest.approx(14.6146, abs=1e-3)
    assert MODEL.sigmas.shape == (1000,)
    assert bool((MODEL.sigmas[1:] > MODEL.sigmas[:-1]).all())


def test_timestep_conversion_round_trips_and_hits_discrete_levels():
    assert torch.allclose(MODEL.t_to_sigma(torch.tensor([0.0, 500.0, 999.0])), MODEL.sigmas[[0, 500, 999]])
    assert torch.allclose(MODEL.sigma_to_t(MODEL.sigmas[[3, 250, 998]]), torch.tensor([3.0, 250.0, 998.0]))
    t = torch.tensor([12.25, 480.5, 731.75])
    assert torch.allclose(MODEL.sigma_to_t(MODEL.t_to_sigma(t)), t, atol=1e-3)
    halfway = MODEL.t_to_sigma(torch.tensor(10.5))
    assert float(halfway) == pytest.approx(math.sqrt(float(MODEL.sigmas[10] * MODEL.sigmas[11])), rel=1e-5)


def test_zero_terminal_snr_rescale():
    rescaled = rescale_zero_terminal_snr(MODEL.alphas_cumprod)
    assert float(rescaled[0]) == pytest.approx(float(MODEL.alphas_cumprod[0]), rel=1e-5)
    assert float(rescaled[-1]) == pytest.approx(4.8973451890853435e-08)
    zsnr = DiscreteSchedule.sd_default(zero_terminal_snr=True)
    assert zsnr.sigma_max == pytest.approx(4518.8, rel=1e-3)
    # sqrt(alpha_bar) is an affine map of the original one: equal steps stay proportional.
    root, new_root = MODEL.alphas_cumprod.double().sqrt(), rescaled.double().sqrt()
    ratio = (new_root[:-2] - new_root[1:-1]) / (root[:-2] - root[1:-1])
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)


@pytest.mark.parametrize("info", SCHEDULES, ids=lambda info: info.name)
@pytest.mark.parametrize("n", [1, 4, 20, 25])
def test_schedule_shape(info, n):
    sigmas = info.function(n, MODEL.sigma_min, MODEL.sigma_max, model=MODEL)
    expected = len(range(1, 1000, 1000 // n)) + 1 if info.name == "ddim" else n + 1
    assert sigmas.shape == (expected,)
    assert sigmas.dtype == torch.float32
    assert float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all()), sigmas
    if info.name not in ("ddim", "align_your_steps"):
        assert float(sigmas[0]) == pytest.approx(MODEL.sigma_max, rel=1e-4)


def test_karras_formula():
    sigmas = schedules.karras(3, 0.1, 10.0, rho=7.0)
    middle = ((10.0 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7
    assert sigmas.tolist() == pytest.approx([10.0, middle, 0.1, 0.0], rel=1e-5)
    assert schedules.karras(3, 0.1, 10.0, rho=1.0).tolist() == pytest.approx([10.0, 5.05, 0.1, 0.0], rel=1e-5)


def test_exponential_and_polyexponential():
    sigmas = schedules.exponential(5, 0.1, 10.0)
    assert sigmas[:-1].tolist() == pytest.approx([10.0 * 10 ** (-k / 2) for k in range(5)], rel=1e-5)
    assert torch.allclose(schedules.polyexponential(5, 0.1, 10.0, rho=1.0), sigmas)
    bent = schedules.polyexponential(5, 0.1, 10.0, rho=2.0)
    ramp = [(1 - k / 4) ** 2 for k in range(5)]
    assert bent[:-1].tolist() == pytest.approx(
        [math.exp(r * math.log(100) + math.log(0.1)) for r in ramp], rel=1e-5
    )


def test_uniform_simple_and_ddim_use_discrete_levels():
    assert torch.allclose(schedules.uniform(1000, 0, 0, model=MODEL)[:-1], MODEL.sigmas.flip(0), rtol=1e-6)
    simple = schedules.simple(10, MODEL.sigma_min, MODEL.sigma_max, model=MODEL)
    assert torch.equal(simple[:-1], MODEL.sigmas[[999, 899, 799, 699, 599, 499, 399, 299, 199, 99]])
    ddim = schedules.ddim(10, MODEL.sigma_min, MODEL.sigma_max, model=MODEL)
    assert torch.equal(ddim[:-1], MODEL.sigmas[[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]])


def test_sgm_uniform_and_normal_are_even_in_timesteps():
    sgm = schedules.sgm_uniform(4, MODEL.sigma_min, MODEL.sigma_max, model=MODEL)
    assert MODEL.sigma_to_t(sgm[:-1]).tolist() == pytest.approx([999, 749.25, 499.5, 249.75], abs=1e-2)
    normal = schedules.normal(4, MODEL.sigma_min, MODEL.sigma_max, model=MODEL)
    assert MODEL.sigma_to_t(normal[:-1]).tolist() == pytest.approx([999, 666, 333, 0], abs=1e-2)


def test_kl_optimal_is_even_in_arctan():
    sigmas = schedules.kl_optimal(4, 0.1, 10.0)
    angles = [math.atan(10.0) + k / 4 * (math.atan(0.1) - math.atan(10.0)) for k in range(4)]
    assert sigmas[:-1].tolist() == pytest.approx([math.tan(a) for a in angles], rel=1e-5)


def test_align_your_steps_lists_and_interpolation():
    published = schedules.align_your_steps(11, 0, 0, model=MODEL)
    assert published.tolist() == pytest.approx([*schedules.AYS_SD1_SIGMAS, 0.0], rel=1e-6)
    sdxl = DiscreteSchedule.sd_default(is_sdxl=True)
    assert schedules.align_your_steps(11, 0, 0, model=sdxl)[:-1].tolist() == pytest.approx(
        schedules.AYS_SDXL_SIGMAS, rel=1e-6
    )
    # 21 points: every other one is a published value, the others are geometric means of neighbours.
    dense = schedules.align_your_steps(21, 0, 0, model=MODEL)[:-1].tolist()
    table = schedules.AYS_SD1_SIGMAS
    assert dense[0::2] == pytest.approx(table, rel=1e-5)
    assert dense[1::2] == pytest.approx([math.sqrt(a * b) for a, b in itertools.pairwise(table)], rel=1e-5)
    ten = schedules.align_your_steps(10, 0, 0, model=MODEL)
    assert (
        ten.shape == (11,)
        and float(ten[0]) == pytest.approx(14.615)
        and float(ten[-2]) == pytest.approx(0.029)
    )


def test_beta_schedule_is_symmetric_for_equal_parameters():
    sigmas = schedules.beta(9, 0.1, 10.0)[:-1]
    assert float(sigmas[0]) == pytest.approx(10.0) and float(sigmas[-1]) == pytest.approx(0.1)
    assert (sigmas + sigmas.flip(0)).tolist() == pytest.approx([10.1] * 9, rel=1e-5)
    assert float(sigmas[4]) == pytest.approx(5.05, rel=1e-5)
    # alpha = beta < 1 crowds the steps at both ends.
    gaps = (sigmas[:-1] - sigmas[1:]).tolist()
    assert gaps[0] < gaps[4] and gaps[-1] < gaps[4]


def test_invalid_inputs():
    with pytest.raises(InvalidParameter) as info:
        schedules.karras(0, 0.1, 10.0)
    assert info.value.field == "steps"
    with pytest.raises(InvalidParameter):
        schedules.karras(5, 10.0, 0.1)
    _, schedule_registry = create_registries()
    with pytest.raises(InvalidParameter) as info:
        schedule_registry.get("Karas")
    assert info.value.field == "scheduler"
    assert "Karras" in info.value.message and "Align Your Steps" in info.value.message


def test_prepare_sigmas_discards_penultimate_and_applies_overrides():
    samplers, schedule_registry = create_registries()
    dpm2, karras = samplers.resolve("DPM2")
    assert karras.name == "karras"
    sigmas = prepare_sigmas(dpm2, karras, 10, MODEL)
    full = schedules.karras(11, MODEL.sigma_min, MODEL.sigma_max)
    assert sigmas.shape == (11,)
    assert torch.equal(sigmas, torch.cat([full[:-2], full[-1:]]))
    euler = samplers.get("Euler")
    plain = prepare_sigmas(euler, karras, 10, MODEL)
    assert torch.equal(plain, schedules.karras(10, MODEL.sigma_min, MODEL.sigma_max))
    forced = prepare_sigmas(euler, karras, 10, MODEL, discard_penultimate_sigma=True)
    assert torch.equal(forced, sigmas)
    custom = prepare_sigmas(euler, karras, 10, MODEL, sigma_min=0.5, sigma_max=8.0, rho=3.0)
    assert torch.equal(custom, schedules.karras(10, 0.5, 8.0, rho=3.0))
    # 0 means "model default", as in A1111's settings.
    assert torch.equal(prepare_sigmas(euler, karras, 10, MODEL, sigma_min=0, rho=0), plain)
    automatic = prepare_sigmas(euler, schedule_registry.get("Automatic"), 10, MODEL)
    assert torch.equal(automatic, schedules.uniform(10, 0, 0, model=MODEL))
