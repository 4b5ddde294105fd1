"""The UNet replayed as CUDA graphs: same numbers as the eager call, used only where exactly equivalent.

The CPU tests check the dispatch rules (never a graph off CUDA, under autograd or with inputs that need
gradients) and that the denoiser's timestep mapping no longer round-trips through the host. The tests
marked ``gpu`` run on a CUDA machine: graph output equals the eager output, one capture per input
shape with least-recently-used eviction, graphs dropped when the weights move, and a whole txt2img job
gives the same pixels with graphs on and off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.engine.conftest import engine_services
from tests.factories import make_tiny_components
from webui.context import AppContext
from webui.engine.discrete import DiscreteSchedule
from webui.engine.params import GenerationParams
from webui.engine.processing import generate
from webui.models.unet_graphs import GraphedUNet


def _inputs(device: str, batch: int = 2, side: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, side, side, generator=g)
    timestep = torch.rand(batch, generator=g) * 999
    context = torch.randn(batch, 77, 64, generator=g)
    return tuple(t.to(device) for t in (sample, timestep, context))


@pytest.fixture(scope="module")
def tiny_unet() -> torch.nn.Module:
    return make_tiny_components("sd1")["unet"].eval()


def test_off_cuda_every_call_is_eager_and_exact(tiny_unet: torch.nn.Module) -> None:
    graphed = GraphedUNet(tiny_unet)
    sample, timestep, context = _inputs("cpu")
    context = context[..., : tiny_unet.config.cross_attention_dim]
    with torch.no_grad():
        expected = tiny_unet(sample, timestep, encoder_hidden_states=context).sample
        got = graphed(sample, timestep, context)
    assert torch.equal(got, expected)
    assert graphed.captures == 0 and graphed.replays == 0 and graphed.graph_count == 0


def test_sigma_to_t_keeps_the_device_and_the_values() -> None:
    schedule = DiscreteSchedule.sd_default()
    sigmas = torch.tensor([14.6146, 7.0, 1.0, 0.1, 0.0292])
    t = schedule.sigma_to_t(sigmas)
    assert t.device == sigmas.device and t.shape == sigmas.shape
    # sigma_to_t inverts t_to_sigma on the trained range, and maps the ends to 0 and 999
    torch.testing.assert_close(schedule.t_to_sigma(t), sigmas, rtol=1e-4, atol=1e-6)
    assert schedule.sigma_to_t(torch.tensor(schedule.sigma_max)).item() == pytest.approx(999.0)
    assert schedule.sigma_to_t(torch.tensor(schedule.sigma_min)).item() == pytest.approx(0.0, abs=1e-4)


def _txt2img(ctx: AppContext, **options: object) -> list[np.ndarray]:
    services = engine_services(ctx, **options)
    params = GenerationParams(
        prompt="a red circle", negative_prompt="blurry", sampler_name="DPM++ 2M", steps=6, width=64,
        height=64, batch_size=2, seed=5, cfg_scale=6.0,
    )  # fmt: skip
    return [np.asarray(im) for im in generate(services, params).images]


def test_cuda_graphs_setting_off_cpu_changes_nothing(sd1_context: AppContext) -> None:
    if sd1_context.models.current.device.type != "cpu":
        pytest.skip("on CUDA the graphs are used: see test_txt2img_with_graphs_matches_eager_on_cuda")
    on, off = _txt2img(sd1_context, cuda_graphs=True), _txt2img(sd1_context, cuda_graphs=False)
    assert all(np.array_equal(a, b) for a, b in zip(on, off, strict=True))
    assert sd1_context.models.current.unet_graphs.captures == 0  # the tiny CPU model never captures


# ---- CUDA ------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_graph_replay_equals_eager_and_captures_once_per_shape(tiny_unet: torch.nn.Module) -> None:
    unet = make_tiny_components("sd1")["unet"].eval().cuda()
    dim = unet.config.cross_attention_dim
    graphed = GraphedUNet(unet, max_graphs=2)
    with torch.no_grad():
        for seed in range(3):  # fresh inputs each call: the graph reads its buffers, not captured values
            sample, timestep, context = _inputs("cuda", seed=seed)
            context = context[..., :dim]
            expected = unet(sample, timestep, encoder_hidden_states=context).sample
            got = graphed(sample, timestep, context).clone()
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert graphed.captures == 1 and graphed.replays == 3
        for side in (16, 24):  # two more shapes: max_graphs=2 evicts the oldest
            sample, timestep, context = _inputs("cuda", side=side)
            graphed(sample, timestep, context[..., :dim])
        assert graphed.captures == 3 and graphed.graph_count == 2
        sample, timestep, context = _inputs("cuda")
        graphed(sample, timestep, context[..., :dim])  # evicted earlier: captured again
        assert graphed.captures == 4


@pytest.mark.gpu
def test_autograd_and_moved_weights_run_eagerly() -> None:
    unet = make_tiny_components("sd1")["unet"].eval().cuda()
    dim = unet.config.cross_attention_dim
    graphed = GraphedUNet(unet)
    sample, timestep, context = _inputs("cuda")
    context = context[..., :dim]
    with torch.enable_grad():
        x = sample.clone().requires_grad_(True)
        out = graphed(x, timestep, context)
        out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and graphed.captures == 0
    with torch.no_grad():
        graphed(sample, timestep, context)
        assert graphed.captures == 1
        unet.to("cpu").to("cuda")  # new weight addresses: the old graph would read freed memory
        expected = unet(sample, timestep, encoder_hidden_states=context).sample
        got = graphed(sample, timestep, context)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert graphed.captures == 2


@pytest.mark.gpu
def test_txt2img_with_graphs_matches_eager_on_cuda(sd1_context: AppContext) -> None:
    model = sd1_context.models.current
    if model.device.type != "cuda":
        pytest.skip("the shared engine context is not on CUDA")
    before = model.unet_graphs.replays
    on = _txt2img(sd1_context, cuda_graphs=True)
    assert model.unet_graphs.replays - before == 6  # one batched cond+uncond call per step
    off = _txt2img(sd1_context, cuda_graphs=False)
    for a, b in zip(on, off, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
