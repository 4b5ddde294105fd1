"""CLIP guidance: the loss, and the denoiser wrapper on every core sampler.

Setup: the exact Gaussian denoiser of ``tests/engine/analytic.py`` on 4x16x16 "latents", a fixed random
convolution decoding them to 32x32 RGB, and the tiny CLIP of ``tiny_clip.py``. The guidance target is a text
prompt; the measure of success is the spherical distance between the whole final image's embedding and the
prompt's.
"""

from __future__ import annotations

import logging
import types

import pytest
import torch
import torch.nn.functional as F

from tests.disco.tiny_clip import TinyClip
from tests.engine.analytic import GaussianData
from webui.engine.discrete import DiscreteSchedule
from webui.engine.samplers import create_registries, prepare_sigmas
from webui.extensions.api import InvalidParameter

DATA = GaussianData(mu=0.0, s=1.0)
PROMPT = "a red apple"
DECODER_WEIGHT = torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(123)) * 0.3
SEEDS = (0, 1, 2, 3)


def decode(latent: torch.Tensor) -> torch.Tensor:
    """A fixed random "VAE": 4x16x16 -> RGB 3x32x32 in (-1, 1)."""
    upsampled = F.interpolate(latent, scale_factor=2, mode="nearest")
    return torch.tanh(F.conv2d(upsampled, DECODER_WEIGHT.to(latent.dtype), padding=1))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add overhead (and the test machine is shared)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def kit(disco):
    samplers, _ = create_registries()
    return types.SimpleNamespace(
        settings=disco("settings"),
        guidance=disco("guidance"),
        prompts=disco("prompts"),
        losses=disco("losses"),
        clip=TinyClip(seed=0),
        samplers=samplers,
        discrete=DiscreteSchedule.sd_default(),
    )


def make_settings(kit, **changes):
    values = {
        "text_prompts": {0: [PROMPT]},
        "clip_models": ["tiny-clip"],
        "cut_overview": "[2]*1000",
        "cut_innercut": "[2]*1000",
        "cutn_batches": 1,
        "clip_guidance_scale": 200.0,
        "range_scale": 0.0,
        "guidance_end": 1.0,
    }
    values.update(changes)
    return kit.settings.DiscoSettings.defaults("latent").replace(**values)


def make_guide(kit, settings, prompts=(PROMPT,), clips=None, init=None):
    parsed = kit.prompts.parse_prompts(list(prompts))
    return kit.guidance.ClipGuide(clips or [kit.clip], parsed, None, settings, init)


def final_loss(kit, latent: torch.Tensor) -> torch.Tensor:
    """Per image: spherical distance of the whole decoded image's embedding to the prompt."""
    with torch.no_grad():
        embeds = kit.guidance.whole_image_embedding(kit.clip, (decode(latent) + 1) / 2)
        return kit.losses.spherical_dist_loss(embeds, kit.clip.encode_text([PROMPT]))


def run(kit, settings, sampler="Euler a", seed=0, steps=12, batch=1, model=DATA.denoiser):
    """Sample with the guided denoiser; the same seed gives the same noise with guidance on or off."""
    info = kit.samplers.get(sampler)
    sigmas = prepare_sigmas(info, kit.samplers.schedules.get(info.default_schedule), steps, kit.discrete)
    x = torch.randn(batch, 4, 16, 16, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    guide = make_guide(kit, settings)
    denoiser = kit.guidance.CLIPGuidedDenoiser(
        model, decode, guide, settings, sigmas, torch.Generator().manual_seed(seed)
    )
    options = info.options_with()
    if info.accepts("generator"):
        options["generator"] = torch.Generator().manual_seed(seed + 1000)
    return info.function(denoiser, x, sigmas, **options)


# --- the loss ---------------------------------------------------------------------------------------


def test_evaluate_and_image_gradient_agree(kit):
    guide = make_guide(kit, make_settings(kit, range_scale=10.0, tv_scale=3.0))
    images = (
        torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2
    ).requires_grad_()
    result = guide.evaluate(images, 3, 10, torch.Generator().manual_seed(5))
    result.total.backward()
    grad, lean = guide.image_gradient(images.detach(), 3, 10, torch.Generator().manual_seed(5))
    torch.testing.assert_close(grad, images.grad)
    assert float(lean.total) == pytest.approx(float(result.total.detach()), rel=1e-5)
    assert result.range > 0 and result.tv > 0
    expected = 200.0 * result.clip + 10.0 * result.range + 3.0 * result.tv
    assert float(result.total.detach()) == pytest.approx(expected, rel=1e-5)


def _whole_image_settings(kit, **changes):
    # One un-augmented overview cut: the loss is exactly the whole-image distance.
    return make_settings(kit, cut_overview="[1]*1000", cut_innercut="[0]*1000", skip_augs=True, **changes)


def test_prompt_weights_are_normalised_and_negative_weights_push_away(kit):
    settings = _whole_image_settings(kit)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    generator = torch.Generator()
    embeds = kit.guidance.whole_image_embedding(kit.clip, (images + 1) / 2)
    texts = kit.clip.encode_text(["castle", "fog"])
    d_castle, d_fog = kit.losses.spherical_dist_loss(embeds, texts).squeeze(0).tolist()

    def clip_term(*prompts):
        return make_guide(kit, settings, prompts).evaluate(images, 0, 10, generator).clip

    assert clip_term("castle:2") == pytest.approx(d_castle, rel=1e-5)
    assert clip_term("castle:1", "fog:3") == pytest.approx((d_castle + 3 * d_fog) / 4, rel=1e-5)
    assert clip_term("castle:1", "fog:-0.5") == pytest.approx((d_castle - 0.5 * d_fog) / 0.5, rel=1e-5)
    with pytest.raises(InvalidParameter, match="sum"):
        kit.guidance.ClipGuide(
            [kit.clip],
            [kit.prompts.WeightedPrompt("a", 1), kit.prompts.WeightedPrompt("b", -1)],
            None,
            settings,
        )


def test_losses_of_several_clip_models_add_up(kit):
    settings = _whole_image_settings(kit)
    other = TinyClip(seed=7, image_size=16, name="tiny-2")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    both = make_guide(kit, settings, clips=[kit.clip, other]).evaluate(images, 0, 10, torch.Generator())
    first = make_guide(kit, settings, clips=[kit.clip]).evaluate(images, 0, 10, torch.Generator())
    second = make_guide(kit, settings, clips=[other]).evaluate(images, 0, 10, torch.Generator())
    assert both.clip == pytest.approx(first.clip + second.clip, rel=1e-5)
    assert second.clip > 0.05


def test_image_prompts_pull_towards_their_image(kit):
    from PIL import Image

    settings = _whole_image_settings(kit)
    red = Image.new("RGB", (40, 30), (220, 20, 20))
    guide = kit.guidance.ClipGuide([kit.clip], [], [(red, 1.0)], settings)
    red_images = torch.tensor([220 / 255, 20 / 255, 20 / 255]).view(1, 3, 1, 1).expand(1, 3, 30, 40) * 2 - 1
    blue_images = red_images.flip(1)
    near = guide.evaluate(red_images, 0, 10, torch.Generator()).clip
    far = guide.evaluate(blue_images, 0, 10, torch.Generator()).clip
    assert near < 1e-3 < far


def test_init_term_is_a_clip_embedding_distance_to_the_init(kit):
    settings = _whole_image_settings(kit, init_scale=50.0)
    init = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    guide = make_guide(kit, settings, init=init)
    same = guide.evaluate(init, 0, 10, torch.Generator())
    other = guide.evaluate(-init, 0, 10, torch.Generator())
    assert same.init == pytest.approx(0.0, abs=1e-4)
    assert other.init > 0.01
    assert float(other.total) == pytest.approx(200.0 * other.clip + 50.0 * other.init, rel=1e-5)
    no_scale = make_guide(kit, _whole_image_settings(kit, init_scale=0.0), init=init)
    assert no_scale.evaluate(-init, 0, 10, torch.Generator()).init == 0.0


def test_cut_schedules_are_evaluated_at_the_step(kit):
    guide = make_guide(
        kit, make_settings(kit, cut_overview="[12]*400+[4]*600", cut_innercut="[4]*400+[12]*600")
    )
    early, late = guide.cutouts(24, 3, 10), guide.cutouts(24, 4, 10)
    assert (early.overview, early.inner_cut) == (12, 4)
    assert (late.overview, late.inner_cut) == (4, 12)


# --- the denoiser wrapper ---------------------------------------------------------------------------


def test_guidance_lowers_the_clip_loss_over_several_seeds(kit):
    on, off = make_settings(kit), make_settings(kit, clip_guidance_scale=0.0)
    for sampler in ("Euler a", "Euler"):
        guided = torch.cat([final_loss(kit, run(kit, on, sampler, seed)) for seed in SEEDS])
        plain = torch.cat([final_loss(kit, run(kit, off, sampler, seed)) for seed in SEEDS])
        assert (guided < plain).all(), (sampler, guided, plain)
        assert float((plain - guided).mean()) > 0.3, (sampler, guided, plain)


def test_approximate_gradient_also_lowers_the_loss(kit):
    on = make_settings(kit, approximate_gradient=True)
    off = make_settings(kit, clip_guidance_scale=0.0)
    guided = torch.cat([final_loss(kit, run(kit, on, "Euler a", seed)) for seed in SEEDS])
    plain = torch.cat([final_loss(kit, run(kit, off, "Euler a", seed)) for seed in SEEDS])
    assert (guided < plain).all() and float((plain - guided).mean()) > 0.3


def test_approximate_gradient_skips_the_model_backward_pass(kit):
    seen = []

    def model(x, sigma, **_):
        seen.append(torch.is_grad_enabled() and x.requires_grad)
        return DATA.denoiser(x, sigma)

    run(kit, make_settings(kit, approximate_gradient=True), "Euler", steps=4, model=model)
    assert seen == [False] * 4
    seen.clear()
    run(kit, make_settings(kit), "Euler", steps=4, model=model)
    assert seen == [True] * 4


def test_every_core_sampler_runs_with_guidance(kit):
    # Un-augmented overview cuts: a smooth guidance signal, as adaptive and multistep solvers expect.
    on = make_settings(kit, cut_innercut="[0]*1000", skip_augs=True)
    off = on.replace(clip_guidance_scale=0.0)
    labels = kit.samplers.labels()
    assert len(labels) >= 19
    for label in labels:
        guided = run(kit, on, label, seed=0, steps=16, batch=2)
        assert guided.shape == (2, 4, 16, 16) and torch.isfinite(guided).all(), label
        plain = run(kit, off, label, seed=0, steps=16, batch=2)
        assert (final_loss(kit, guided) < final_loss(kit, plain) - 0.1).all(), label


def test_same_settings_and_seed_give_identical_results(kit):
    settings = make_settings(kit)
    first = run(kit, settings, "Euler a", seed=5, batch=2)
    second = run(kit, settings, "Euler a", seed=5, batch=2)
    assert torch.equal(first, second)
    sigmas = torch.tensor([14.6, 5.0, 1.0, 0.0])
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 14.6
    outputs = []
    for cut_seed in (1, 2):
        denoiser = kit.guidance.CLIPGuidedDenoiser(
            DATA.denoiser,
            decode,
            make_guide(kit, settings),
            settings,
            sigmas,
            torch.Generator().manual_seed(cut_seed),
        )
        outputs.append(denoiser(x, torch.tensor([5.0])))
    assert not torch.equal(outputs[0], outputs[1])  # the cutouts follow the given generator


def _one_call(kit, settings, x, sigma, decode_fn=decode, sigmas=(14.6, 5.0, 1.0, 0.0)):
    denoiser = kit.guidance.CLIPGuidedDenoiser(
        DATA.denoiser, decode_fn, make_guide(kit, settings), settings, torch.tensor(sigmas), torch.Generator()
    )
    return denoiser(x, torch.full((x.shape[0],), sigma)), denoiser


@pytest.mark.parametrize("sigma", [5.0, 1.0])
def test_clamped_change_is_at_most_clamp_max_times_sigma_squared(kit, sigma):
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * sigma
    plain = DATA.denoiser(x, torch.full((3,), sigma))
    for clamp_max in (0.05, 0.002):
        settings = make_settings(kit, clip_guidance_scale=5000.0, clamp_max=clamp_max)
        guided, _ = _one_call(kit, settings, x, sigma)
        rms = (guided - plain).square().flatten(1).mean(1).sqrt()
        assert (rms <= clamp_max * sigma**2 * (1 + 1e-4)).all()
        assert (rms >= 0.99 * clamp_max * sigma**2).all()  # a huge scale hits the bound exactly
    unclamped, _ = _one_call(kit, make_settings(kit, clip_guidance_scale=5000.0, clamp_grad=False), x, sigma)
    rms = (unclamped - plain).square().flatten(1).mean(1).sqrt()
    assert (rms > 0.05 * sigma**2).all()


def test_non_finite_gradients_become_zero_with_one_warning(kit, caplog):
    def poisoned(latent):
        rgb = decode(latent)
        bad = torch.zeros_like(rgb)
        bad[1] = float("nan")  # only the second image is broken
        return rgb + bad * latent.flatten(1).sum(1).view(-1, 1, 1, 1)

    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 5
    plain = DATA.denoiser(x, torch.full((2,), 5.0))
    with caplog.at_level(logging.WARNING):
        guided, denoiser = _one_call(kit, make_settings(kit), x, 5.0, decode_fn=poisoned)
        again = denoiser(x, torch.full((2,), 1.0))
    assert torch.isfinite(guided).all() and torch.isfinite(again).all()
    torch.testing.assert_close(guided[1], plain[1], rtol=0, atol=0)
    assert float((guided[0] - plain[0]).abs().max()) > 1e-3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "NaN" in r.getMessage()]
    assert len(warnings) == 1


def test_step_index_follows_the_sampled_schedule(kit):
    settings = make_settings(kit)
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    denoiser = kit.guidance.CLIPGuidedDenoiser(
        DATA.denoiser, decode, make_guide(kit, settings), settings, sigmas, torch.Generator()
    )
    cases = {12.0: 0, 10.0: 0, 7.0: 0, 5.0: 1, 3.2: 1, 2.0: 2, 1.0: 3, 0.4: 3}
    assert {s: denoiser.step_index(torch.tensor([s, s])) for s in cases} == cases
    with pytest.raises(InvalidParameter):
        kit.guidance.CLIPGuidedDenoiser(
            DATA.denoiser, decode, make_guide(kit, settings), settings, sigmas.flip(0), torch.Generator()
        )


class _StepSpy:
    """A ClipGuide stand-in that records the steps it is asked to guide."""

    def __init__(self, guide):
        self.guide, self.steps = guide, []

    def image_gradient(self, images, step, steps, generator):
        self.steps.append(step)
        return self.guide.image_gradient(images, step, steps, generator)


def test_guidance_window_and_guide_every(kit):
    settings = make_settings(kit, guidance_start=0.2, guidance_end=0.6, guide_every=2)
    info = kit.samplers.get("Heun")  # second order: in-between evaluations belong to their step
    sigmas = prepare_sigmas(info, kit.samplers.schedules.get("karras"), 10, kit.discrete)
    spy = _StepSpy(make_guide(kit, settings))
    denoiser = kit.guidance.CLIPGuidedDenoiser(
        DATA.denoiser, decode, spy, settings, sigmas, torch.Generator()
    )
    assert [step for step in range(10) if denoiser.guides_at(step)] == [2, 4, 6]
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    info.function(denoiser, x, sigmas)
    assert spy.steps == [2, 2, 4, 4, 6, 6]


def test_apply_symmetry(kit):
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).view(1, 2, 5, 7)
    mirrored = kit.guidance.apply_symmetry(x, horizontal=True, vertical=False)
    assert torch.equal(mirrored, mirrored.flip(-1))
    assert torch.equal(mirrored[..., :4], x[..., :4])  # left half and the middle column kept
    both = kit.guidance.apply_symmetry(x, horizontal=True, vertical=True)
    assert torch.equal(both, both.flip(-1)) and torch.equal(both, both.flip(-2))
    assert torch.equal(both[..., :3, :4], x[..., :3, :4])
    assert torch.equal(kit.guidance.apply_symmetry(x, False, False), x)


def test_symmetry_is_applied_once_at_its_step(kit):
    settings = make_settings(kit, use_horizontal_symmetry=True, transformation_percent=[0.5])
    inputs = []

    def model(x, sigma, **_):
        inputs.append(x.detach().clone())
        return DATA.denoiser(x, sigma)

    info = kit.samplers.get("Euler")
    sigmas = prepare_sigmas(info, kit.samplers.schedules.get("karras"), 8, kit.discrete)
    denoiser = kit.guidance.CLIPGuidedDenoiser(
        model, decode, make_guide(kit, settings), settings, sigmas, torch.Generator()
    )
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    info.function(denoiser, x, sigmas)
    symmetric = [bool(torch.allclose(seen, seen.flip(-1))) for seen in inputs]
    assert symmetric[:4] == [False] * 4
    assert symmetric[4]  # mirrored at 50% of 8 steps


def test_works_around_a_cfg_denoiser(kit):
    def cfg_model(x, sigma, cond, uncond, cond_scale):
        both = DATA.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]))
        cond_x0, uncond_x0 = (both + torch.cat([cond, uncond])).chunk(2)
        return uncond_x0 + (cond_x0 - uncond_x0) * cond_scale

    settings = make_settings(kit)
    sigmas = torch.tensor([14.6, 5.0, 1.0, 0.0])
    denoiser = kit.guidance.CLIPGuidedDenoiser(
        cfg_model, decode, make_guide(kit, settings), settings, sigmas, torch.Generator()
    )
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 5
    cond = {"cond": torch.full_like(x, 0.1), "uncond": torch.zeros_like(x), "cond_scale": 7.0}
    sigma = torch.full((2,), 5.0)
    guided = denoiser(x, sigma, **cond)
    plain = cfg_model(x, sigma, **cond)
    assert guided.shape == x.shape and torch.isfinite(guided).all()
    assert float((guided - plain).abs().max()) > 1e-3
    assert float(final_loss(kit, guided).mean()) < float(final_loss(kit, plain).mean())
