"""The shipped extra-samplers extension: loads through the facade, and its samplers are right on the
analytic Gaussian denoiser (exact ODE solution known; see tests/engine/analytic.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.analytic import GaussianData
from tests.extensions.helpers import make_host
from webui.engine import schedules
from webui.engine.samplers import sample_lms
from webui.extensions.host import LOADED

REPO_EXTENSIONS = Path(__file__).resolve().parents[2] / "extensions"
DATA = GaussianData(mu=0.5, s=0.7)
SIGMA_MAX, SIGMA_END = 14.6, 0.03
LABELS = {"iPNDM": "ipndm", "DEIS": "deis", "Res Multistep": "res_multistep", "ER SDE": "er_sde"}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    host = make_host(tmp_path_factory.mktemp("ext") / "extensions", builtin_dirs=(REPO_EXTENSIONS,))
    statuses = {s.id: s for s in host.load_all()}
    assert statuses["extra-samplers"].status == LOADED, statuses["extra-samplers"].error
    yield host
    host.unload_all()


@pytest.fixture(scope="module")
def module(host):
    return sys.modules["webui_ext_extra_samplers.samplers"]


def test_samplers_are_registered_with_labels_aliases_and_default_schedules(host):
    registry = host.services.samplers
    for label, alias in LABELS.items():
        sampler, schedule = registry.resolve(alias, "Automatic")
        assert sampler.label == label and schedule.name == "karras"
    assert registry.get("ER SDE").stochastic and not registry.get("DEIS").stochastic
    assert registry.get("ER SDE").accepts("s_noise") and registry.get("DEIS").accepts("order")
    assert registry.labels()[-4:] == tuple(LABELS)


def test_extension_imports_only_the_facade():
    imports = set()
    for path in (REPO_EXTENSIONS / "extra-samplers").glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("import ", "from ")):
                imports.add(line.split()[1].split(".")[0] if not line.startswith("from .") else ".")
    assert imports <= {"__future__", "collections", "numpy", "torch", "webui", "."}
    assert all("webui.extensions.api" in line for p in (REPO_EXTENSIONS / "extra-samplers").glob("*.py")
               for line in p.read_text().splitlines() if line.startswith("from webui"))  # fmt: skip


def _ode_error(sampler, steps: int, **options) -> float:
    sigmas = schedules.karras(steps, SIGMA_END, SIGMA_MAX)[:-1].double()
    x = DATA.noisy_sample((2, 16), SIGMA_MAX, torch.Generator().manual_seed(0))
    out = sampler(DATA.denoiser, x.clone(), sigmas, **options)
    return float((out - DATA.ode_solution(x, SIGMA_MAX, SIGMA_END)).abs().max())


# name -> (function name, options, lowest acceptable observed order, highest (first-order methods))
CONVERGENCE = {
    "ipndm": ("sample_ipndm", {}, 1.8, None),
    "ipndm_order1": ("sample_ipndm", {"max_order": 1}, 0.8, 1.3),
    "deis": ("sample_deis", {}, 2.6, None),
    "deis_order2": ("sample_deis", {"order": 2}, 1.8, 2.3),
    "res_multistep": ("sample_res_multistep", {}, 1.8, None),
    "er_sde_ode_1": ("sample_er_sde", {"max_stage": 1, "noise_scaler": "ode"}, 0.8, 1.3),
    "er_sde_ode_2": ("sample_er_sde", {"max_stage": 2, "noise_scaler": "ode"}, 1.8, None),
    "er_sde_ode_3": ("sample_er_sde", {"max_stage": 3, "noise_scaler": "ode"}, 2.6, None),
}


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_samplers_converge_to_the_exact_ode_solution_at_their_order(module, name):
    function, options, min_order, max_order = CONVERGENCE[name]
    if options.get("noise_scaler") == "ode":
        options = {**options, "noise_scaler": module.ode_noise_scaler}
    sampler = getattr(module, function)
    coarse, fine = _ode_error(sampler, 40, **options), _ode_error(sampler, 80, **options)
    order = math.log2(coarse / fine)
    assert fine < 0.1
    assert order > min_order, (coarse, fine)
    if max_order is not None:
        assert order < max_order, (coarse, fine)


def test_deis_equals_third_order_linear_multistep(module):
    # In sigma space DEIS's exact-weight multistep is the linear multistep method of the same order; the core
    # LMS is an independent implementation of it.
    sigmas = schedules.karras(12, SIGMA_END, SIGMA_MAX)[:-1].double()
    x = DATA.noisy_sample((1, 8), SIGMA_MAX, torch.Generator().manual_seed(3))
    ours = module.sample_deis(DATA.denoiser, x.clone(), sigmas, order=3)
    core = sample_lms(DATA.denoiser, x.clone(), sigmas, order=3)
    torch.testing.assert_close(ours, core, rtol=0, atol=1e-10)


def test_first_steps_are_exact_for_a_constant_denoiser(module):
    # With D constant the ODE solution is D + (x - D) * sigma_end / sigma_start; every method must be exact.
    def constant(x, sigma, **_):
        return torch.full_like(x, 0.25)

    sigmas = torch.tensor([10.0, 4.0, 1.5, 0.5], dtype=torch.float64)
    x = torch.linspace(-3, 3, 6, dtype=torch.float64).reshape(1, 6)
    expected = 0.25 + (x - 0.25) * 0.5 / 10.0
    for name in ("sample_ipndm", "sample_deis", "sample_res_multistep"):
        torch.testing.assert_close(getattr(module, name)(constant, x.clone(), sigmas), expected)
    ode = module.sample_er_sde(constant, x.clone(), sigmas, noise_scaler=module.ode_noise_scaler)
    torch.testing.assert_close(ode, expected)


def test_samplers_end_on_the_denoised_estimate_at_sigma_zero(host):
    registry = host.services.samplers
    sigmas = schedules.karras(6, SIGMA_END, SIGMA_MAX).double()
    x = DATA.noisy_sample((1, 4), SIGMA_MAX, torch.Generator().manual_seed(1))
    for label in LABELS:
        out = registry.get(label).function(DATA.denoiser, x.clone(), sigmas, seed=5) if label == "ER SDE" else (
            registry.get(label).function(DATA.denoiser, x.clone(), sigmas))  # fmt: skip
        assert torch.isfinite(out).all()
        assert float((out - DATA.mu).abs().max()) < 3 * DATA.s


def test_er_sde_is_reproducible_per_seed_and_needs_a_noise_source(module):
    sigmas = schedules.karras(10, SIGMA_END, SIGMA_MAX).double()
    x = DATA.noisy_sample((1, 32), SIGMA_MAX, torch.Generator().manual_seed(0))
    first = module.sample_er_sde(DATA.denoiser, x.clone(), sigmas, seed=7)
    again = module.sample_er_sde(DATA.denoiser, x.clone(), sigmas, generator=torch.Generator().manual_seed(7))
    other = module.sample_er_sde(DATA.denoiser, x.clone(), sigmas, seed=8)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert float((first - other).abs().max()) > 1e-3
    from webui.extensions.api import InvalidParameter

    with pytest.raises(InvalidParameter, match="seed"):
        module.sample_er_sde(DATA.denoiser, x.clone(), sigmas)


def test_er_sde_samples_the_data_distribution(module):
    # Starting from the marginal at sigma_max, the SDE's output must follow N(mu, s^2).
    sigmas = schedules.karras(30, 0.02, SIGMA_MAX).double()
    x = DATA.noisy_sample((1, 20000), SIGMA_MAX, torch.Generator().manual_seed(11))
    out = module.sample_er_sde(DATA.denoiser, x, sigmas, generator=torch.Generator().manual_seed(12))
    assert abs(float(out.mean()) - DATA.mu) < 0.03
    assert abs(float(out.std()) - DATA.s) < 0.03
    # and it differs from the deterministic ODE map of the same start
    ode = module.sample_er_sde(DATA.denoiser, x, sigmas, noise_scaler=module.ode_noise_scaler)
    assert float((out - ode).abs().mean()) > 0.05


def test_invalid_options_are_rejected(module):
    from webui.extensions.api import InvalidParameter

    x, sigmas = torch.zeros(1, 2), torch.tensor([1.0, 0.0])
    with pytest.raises(InvalidParameter, match="max_order"):
        module.sample_ipndm(DATA.denoiser, x, sigmas, max_order=5)
    with pytest.raises(InvalidParameter, match="order"):
        module.sample_deis(DATA.denoiser, x, sigmas, order=4)
    with pytest.raises(InvalidParameter, match="max_stage"):
        module.sample_er_sde(DATA.denoiser, x, sigmas, max_stage=0)
