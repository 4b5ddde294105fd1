"""Denoiser wrappers: the eps / v maths of UNetDenoiser and the guidance maths of CFGDenoiser.

Fake UNets and fake inner denoisers return known tensors, so every expected value below comes from the
hand formulas of the docstrings (k-diffusion's VE form ``x = x0 + sigma * eps``, CFG and AND weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from webui.engine.conditioning import CondTensors, ImageCond, ScheduledCond
from webui.engine.denoisers import CFGDenoiser, StepTracker, UNetDenoiser
from webui.engine.discrete import DiscreteSchedule

SCHEDULE = DiscreteSchedule.sd_default()


class FakeUNet(torch.nn.Module):
    """Returns ``output`` for any input and records what it was called with."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output
        self.calls: list[dict[str, object]] = []

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        self.calls.append(
            {"sample": sample, "t": timestep, "context": encoder_hidden_states, "added": added_cond_kwargs}
        )
        return SimpleNamespace(sample=self.output[: sample.shape[0]])


def _x_and_sigma() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 3, generator=generator) * 5
    sigma = torch.stack([SCHEDULE.sigmas[500], SCHEDULE.sigmas[900]])
    return x, sigma


def test_eps_prediction_gives_x_minus_sigma_eps_and_scales_the_input():
    x, sigma = _x_and_sigma()
    eps = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    unet = FakeUNet(eps)
    denoiser = UNetDenoiser(unet, SCHEDULE, "epsilon", torch.float32)
    context = torch.ones(2, 77, 8)

    x0 = denoiser(x, sigma, context=context)

    for i in range(2):
        s = float(sigma[i])
        torch.testing.assert_close(x0[i], x[i] - s * eps[i])
        # the UNet sees x / sqrt(sigma^2 + 1) at the discrete timestep of sigma
        torch.testing.assert_close(unet.calls[0]["sample"][i], x[i] / (s * s + 1) ** 0.5)
    torch.testing.assert_close(unet.calls[0]["t"], torch.tensor([500.0, 900.0]), atol=1e-3, rtol=0)
    assert unet.calls[0]["context"] is not None and unet.calls[0]["added"] is None


def test_v_prediction_formula():
    x, sigma = _x_and_sigma()
    v = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    denoiser = UNetDenoiser(FakeUNet(v), SCHEDULE, "v_prediction", torch.float32)

    x0 = denoiser(x, sigma, context=torch.zeros(2, 77, 8))

    for i in range(2):
        s = float(sigma[i])
        # x0 = c_skip x + c_out v with sigma_data 1: c_skip = 1 / (s^2 + 1), c_out = -s / sqrt(s^2 + 1)
        expected = x[i] / (s * s + 1) - v[i] * s / (s * s + 1) ** 0.5
        torch.testing.assert_close(x0[i], expected)


def test_v_prediction_of_a_clean_sample_recovers_it():
    """With v = alpha eps - sigma_vp x0 the wrapper must return the x0 the noisy input was made of."""
    x0 = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(6))
    eps = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(7))
    s = float(SCHEDULE.sigmas[700])
    alpha, sigma_vp = 1 / (s * s + 1) ** 0.5, s / (s * s + 1) ** 0.5
    v = alpha * eps - sigma_vp * x0
    denoiser = UNetDenoiser(FakeUNet(v), SCHEDULE, "v_prediction", torch.float32)

    out = denoiser(x0 + s * eps, torch.tensor([s]), context=torch.zeros(1, 77, 8))

    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_inpainting_channels_and_sdxl_conditioning_reach_the_unet():
    x, sigma = _x_and_sigma()
    unet = FakeUNet(torch.zeros(2, 4, 3, 3))
    denoiser = UNetDenoiser(unet, SCHEDULE, "epsilon", torch.float32)
    image_cond = torch.full((2, 5, 3, 3), 7.0)
    added = {"text_embeds": torch.ones(2, 16), "time_ids": torch.ones(2, 6)}

    denoiser(x, sigma, context=torch.zeros(2, 77, 8), image_cond=image_cond, added_cond=added)

    sample = unet.calls[0]["sample"]
    assert sample.shape == (2, 9, 3, 3)
    assert torch.equal(sample[:, 4:], image_cond)
    assert set(unet.calls[0]["added"]) == {"text_embeds", "time_ids"}


# --- CFG -------------------------------------------------------------------------------------------


def _cond(value: float, tokens: int = 77) -> ScheduledCond:
    return ScheduledCond(((10, CondTensors(torch.full((tokens, 4), value))),))


@dataclass
class FakeInner:
    """An x0-predictor whose answer is the context's mean value (one number per row), with a call log."""

    calls: list[tuple[int, int]] = field(default_factory=list)  # (batch rows, tokens)

    def __call__(self, x, sigma, *, context, added_cond=None, image_cond=None):
        self.calls.append((x.shape[0], context.shape[1]))
        return x * 0 + context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


def test_cfg_combines_and_subprompts_with_their_weights():
    x = torch.zeros(2, 4, 2, 2)
    sigma = torch.tensor([3.0, 3.0])
    conds = [
        ImageCond(((_cond(1.0), 0.5), (_cond(3.0), 2.0))),  # "a :0.5 AND b :2"
        ImageCond(((_cond(5.0), 1.0),)),
    ]
    unconds = [_cond(0.25), _cond(-1.0)]
    inner = FakeInner()
    denoiser = CFGDenoiser(inner, conds, unconds, 7.0, StepTracker())

    out = denoiser(x, sigma)

    expected_0 = 0.25 + 7.0 * (0.5 * (1.0 - 0.25) + 2.0 * (3.0 - 0.25))
    expected_1 = -1.0 + 7.0 * (5.0 - -1.0)
    torch.testing.assert_close(out[0], torch.full((4, 2, 2), expected_0))
    torch.testing.assert_close(out[1], torch.full((4, 2, 2), expected_1))
    # 5 rows of equal shape go through the model in one call
    assert inner.calls == [(5, 77)]


def test_cfg_scale_one_skips_the_unconditional_rows():
    x = torch.zeros(2, 4, 2, 2)
    inner = FakeInner()
    conds = [ImageCond(((_cond(2.0), 1.0),)), ImageCond(((_cond(4.0), 1.0),))]
    denoiser = CFGDenoiser(inner, conds, [_cond(100.0), _cond(100.0)], 1.0, StepTracker())

    out = denoiser(x, torch.tensor([1.0, 1.0]))

    assert inner.calls == [(2, 77)]
    assert out[0].unique().tolist() == [2.0] and out[1].unique().tolist() == [4.0]


def test_cfg_scale_one_with_weighted_and_still_uses_the_uncond():
    inner = FakeInner()
    conds = [ImageCond(((_cond(2.0), 0.5),))]
    denoiser = CFGDenoiser(inner, conds, [_cond(1.0)], 1.0, StepTracker())

    out = denoiser(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))

    assert inner.calls == [(2, 77)]
    torch.testing.assert_close(out, torch.full((1, 4, 2, 2), 1.0 + 0.5 * (2.0 - 1.0)))


def test_rows_of_different_token_lengths_run_in_separate_calls():
    inner = FakeInner()
    conds = [ImageCond(((_cond(2.0, tokens=154), 1.0),))]
    denoiser = CFGDenoiser(inner, conds, [_cond(1.0, tokens=77)], 3.0, StepTracker())

    out = denoiser(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))

    assert sorted(inner.calls) == [(1, 77), (1, 154)]
    torch.testing.assert_close(out, torch.full((1, 4, 2, 2), 1.0 + 3.0 * (2.0 - 1.0)))


def test_max_rows_splits_large_batches():
    inner = FakeInner()
    conds = [ImageCond(((_cond(float(i)), 1.0),)) for i in range(3)]
    denoiser = CFGDenoiser(inner, conds, [_cond(0.0)] * 3, 2.0, StepTracker(), max_rows=4)

    out = denoiser(torch.zeros(3, 4, 2, 2), torch.tensor([1.0, 1.0, 1.0]))

    assert [rows for rows, _ in inner.calls] == [4, 2]
    assert [float(out[i].mean()) for i in range(3)] == [0.0, 2.0, 4.0]


def test_prompt_editing_follows_the_step_tracker():
    early, late = CondTensors(torch.full((77, 4), 1.0)), CondTensors(torch.full((77, 4), 9.0))
    scheduled = ScheduledCond(((2, early), (4, late)))
    tracker = StepTracker()
    denoiser = CFGDenoiser(FakeInner(), [ImageCond(((scheduled, 1.0),))], [_cond(0.0)], 1.0, tracker)
    x, sigma = torch.zeros(1, 4, 2, 2), torch.tensor([1.0])

    seen = []
    for step in range(4):
        tracker.step = step
        seen.append(float(denoiser(x, sigma).mean()))

    assert seen == [1.0, 1.0, 1.0, 9.0]


def test_post_denoise_functions_run_in_order():
    inner = FakeInner()
    denoiser = CFGDenoiser(inner, [ImageCond(((_cond(2.0), 1.0),))], [_cond(0.0)], 1.0, StepTracker())
    denoiser.post_denoise.append(lambda x, sigma, d: d * 10)
    denoiser.post_denoise.append(lambda x, sigma, d: d + 1)

    out = denoiser(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))

    assert out.unique().tolist() == [21.0]


@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_scalar_sigma_is_broadcast(scale: float):
    inner = FakeInner()
    denoiser = CFGDenoiser(inner, [ImageCond(((_cond(2.0), 1.0),))], [_cond(1.0)], scale, StepTracker())

    out = denoiser(torch.zeros(1, 4, 2, 2), torch.tensor(1.0))

    torch.testing.assert_close(out, torch.full((1, 4, 2, 2), 1.0 + scale * (2.0 - 1.0)))
