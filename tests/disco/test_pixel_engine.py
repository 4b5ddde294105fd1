"""Disco mode's pixel engine: guided-diffusion UNet layout, checkpoint loading, respacing, DDIM / PLMS, guidance."""

from __future__ import annotations

import dataclasses
import math
import pickle

import pytest
import torch
from safetensors.torch import save_file

from webui.extensions.api import InvalidParameter, JobCancelled

from .tiny_clip import TinyClip

# (key, shape) pairs of the released checkpoints, worked out from guided-diffusion's layout.
KEYS_256 = {
    "time_embed.0.weight": (1024, 256),
    "time_embed.2.weight": (1024, 1024),
    "input_blocks.0.0.weight": (256, 3, 3, 3),
    "input_blocks.1.0.in_layers.0.weight": (256,),
    "input_blocks.1.0.in_layers.2.weight": (256, 256, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (512, 1024),  # scale-shift: 2 x channels
    "input_blocks.1.0.out_layers.3.weight": (256, 256, 3, 3),
    "input_blocks.3.0.in_layers.2.weight": (256, 256, 3, 3),  # resblock down
    "input_blocks.7.0.skip_connection.weight": (512, 256, 1, 1),
    "input_blocks.10.1.qkv.weight": (1536, 512, 1),  # attention at 32 px (ds 8)
    "input_blocks.10.1.proj_out.weight": (512, 512, 1),
    "input_blocks.13.0.skip_connection.weight": (1024, 512, 1, 1),
    "input_blocks.17.1.norm.weight": (1024,),
    "middle_block.0.emb_layers.1.weight": (2048, 1024),
    "middle_block.1.qkv.weight": (3072, 1024, 1),
    "middle_block.2.out_layers.3.weight": (1024, 1024, 3, 3),
    "output_blocks.0.0.in_layers.0.weight": (2048,),
    "output_blocks.0.0.skip_connection.weight": (1024, 2048, 1, 1),
    "output_blocks.2.2.in_layers.2.weight": (1024, 1024, 3, 3),  # resblock up after attention
    "output_blocks.5.0.in_layers.0.weight": (1536,),
    "output_blocks.8.1.qkv.weight": (1536, 512, 1),
    "output_blocks.11.1.in_layers.0.weight": (512,),  # resblock up without attention
    "output_blocks.11.0.skip_connection.weight": (512, 768, 1, 1),
    "output_blocks.17.0.skip_connection.weight": (256, 512, 1, 1),
    "out.0.weight": (256,),
    "out.2.weight": (6, 256, 3, 3),
}
KEYS_512 = {
    "time_embed.0.weight": (1024, 256),
    "input_blocks.0.0.weight": (128, 3, 3, 3),  # channel_mult starts at 0.5
    "input_blocks.1.0.in_layers.2.weight": (128, 128, 3, 3),
    "input_blocks.4.0.skip_connection.weight": (256, 128, 1, 1),
    "input_blocks.13.1.qkv.weight": (1536, 512, 1),  # attention at 32 px (ds 16)
    "input_blocks.16.0.skip_connection.weight": (1024, 512, 1, 1),
    "input_blocks.18.0.emb_layers.1.weight": (2048, 1024),
    "input_blocks.20.1.qkv.weight": (3072, 1024, 1),
    "middle_block.1.proj_out.weight": (1024, 1024, 1),
    "output_blocks.2.2.out_layers.3.weight": (1024, 1024, 3, 3),
    "output_blocks.20.0.in_layers.0.weight": (256,),
    "output_blocks.20.0.skip_connection.weight": (128, 256, 1, 1),
    "out.0.weight": (128,),
    "out.2.weight": (6, 128, 3, 3),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (and leave the other core to the rest of the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclasses.dataclass
class PixelSettings:
    """The DiscoSettings attributes run_pixel reads (pixel DiscoSettings need 64-pixel multiples)."""

    steps: int = 10
    width: int = 32
    height: int = 32
    clamp_grad: bool = True
    clamp_max: float = 0.05
    eta: float = 0.8
    skip_steps: int = 0


def tiny_config(unet_mod, **overrides):
    values = dict(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        channel_mult=(1, 2),
        attention_resolutions=(16,),
        num_head_channels=32,
    )
    values.update(overrides)
    return unet_mod.PixelModelConfig(**values)


def meta_state_dict(unet_mod, config):
    with torch.device("meta"):
        return unet_mod.UNetModel(config).state_dict()


def base_alpha_bar(num_steps: int) -> torch.Tensor:
    """The linear schedule's cumulative alphas, written independently of the module under test."""
    scale = 1000 / num_steps
    betas = torch.linspace(0.0001 * scale, 0.02 * scale, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class GaussianToy(torch.nn.Module):
    """A pixel "UNet" with a known answer: data ~ N(0, s^2), eps from the exact posterior, plus a small random
    guided-diffusion UNet term so gradients also flow through the real network."""

    def __init__(self, unet_mod, steps: int, s: float = 0.5, k: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = unet_mod.UNetModel(tiny_config(unet_mod)).requires_grad_(False).eval()
        self.config = self.net.config
        self.n = (1000 // steps) * steps
        self.abar = base_alpha_bar(self.n).float()
        self.s, self.k = s, k

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.abar[(t.float() * self.n / 1000).round().long()].view(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * x / (ab * self.s**2 + 1 - ab)
        out = self.net(x, t)
        return torch.cat([eps + self.k * out[:, :3], out[:, 3:]], 1)


# --- UNet layout ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "keys", "count"), [(256, KEYS_256, 566), (512, KEYS_512, 644)])
def test_unet_state_dict_matches_the_released_checkpoints(disco, size, keys, count):
    unet = disco("pixel.unet")
    sd = meta_state_dict(unet, unet.disco_config(size))
    assert len(sd) == count
    for key, shape in keys.items():
        assert tuple(sd[key].shape) == shape, key
    # Every key has guided-diffusion's naming scheme.
    prefixes = ("time_embed.", "input_blocks.", "middle_block.", "output_blocks.", "out.")
    assert all(k.startswith(prefixes) for k in sd)
    assert not any("h_upd" in k or "x_upd" in k or "attention." in k for k in sd)
    if size == 256:
        assert sum(v.numel() for v in sd.values()) == 552_814_086


def test_config_inference_from_keys_and_shapes(disco):
    unet = disco("pixel.unet")
    for size in (256, 512):
        config = unet.disco_config(size)
        assert unet.config_for_checkpoint(meta_state_dict(unet, config)) == config
    tiny = tiny_config(unet)
    inferred = unet.config_for_checkpoint(meta_state_dict(unet, tiny), image_size=32, num_head_channels=32)
    assert inferred == tiny
    with pytest.raises(InvalidParameter, match="pass image_size"):
        unet.config_for_checkpoint(meta_state_dict(unet, tiny))
    with pytest.raises(InvalidParameter, match="not a guided-diffusion UNet"):
        unet.config_for_checkpoint({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)})
    no_sigma = unet.config_for_checkpoint(
        meta_state_dict(unet, tiny_config(unet, learn_sigma=False, use_scale_shift_norm=False)),
        image_size=32,
        num_head_channels=32,
    )
    assert (no_sigma.learn_sigma, no_sigma.use_scale_shift_norm, no_sigma.out_channels) == (False, False, 3)


def test_tiny_unet_forward_and_timestep_embedding(disco):
    unet = disco("pixel.unet")
    emb = unet.timestep_embedding(torch.tensor([0.0, 500.0]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    assert emb[1, 0].item() == pytest.approx(math.cos(500.0))
    torch.manual_seed(0)
    model = unet.UNetModel(tiny_config(unet)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([1.0, 900.0]))
        single = model(x[1:], torch.tensor([900.0]))
    assert out.shape == (2, 6, 32, 32)
    assert torch.allclose(out[1:], single, atol=1e-5)  # images in a batch do not interact
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(InvalidParameter, match="num_head_channels"):
        unet.UNetModel(tiny_config(unet, num_head_channels=48))


# --- loading -------------------------------------------------------------------------------------------------


class NotATensor:
    """A pickled object of an arbitrary class: restricted unpickling must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pt_with_pickled_objects_is_refused(disco, tmp_path, capsys):
    models = disco("pixel.models")
    evil = tmp_path / "evil.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(1), "x": NotATensor()}, evil)
    with pytest.raises(InvalidParameter, match="refused to load"):
        models.load_state_dict(evil)
    assert "must never run" not in capsys.readouterr().out
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}}, nested)
    with pytest.raises(InvalidParameter, match="flat dict of tensors"):
        models.load_state_dict(nested)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(InvalidParameter, match="expected a dict of tensors"):
        models.load_state_dict(listed)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InvalidParameter):
        models.load_state_dict(raw)


def test_load_tiny_unet_from_pt_and_safetensors(disco, tmp_path):
    unet, models = disco("pixel.unet"), disco("pixel.models")
    torch.manual_seed(1)
    original = unet.UNetModel(tiny_config(unet)).eval()
    sd = original.state_dict()
    torch.save(sd, tmp_path / "tiny.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "tiny.safetensors"))
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([400.0])
    with torch.no_grad():
        expected = original(x, t)
        for name in ("tiny.pt", "tiny.safetensors"):
            loaded = models.load_pixel_unet(tmp_path / name, image_size=32, num_head_channels=32)
            assert not any(p.requires_grad for p in loaded.parameters())
            assert torch.allclose(loaded(x, t), expected, rtol=0, atol=1e-5), name
    broken = dict(sd)
    del broken["middle_block.1.proj_out.bias"]
    with pytest.raises(InvalidParameter, match=r"missing keys: middle_block\.1\.proj_out\.bias"):
        models.build_unet(broken, image_size=32, num_head_channels=32)


def test_find_pixel_models_scans_only_models_disco(disco, tmp_path):
    models = disco("pixel.models")
    assert models.find_pixel_models(tmp_path) == []
    (tmp_path / "disco" / "sub").mkdir(parents=True)
    (tmp_path / "Stable-diffusion").mkdir()
    for name in (
        "disco/512x512_diffusion_uncond_finetune_008100.pt",
        "disco/secondary_model_imagenet_2.pth",
        "disco/sub/256x256_diffusion_uncond.safetensors",
        "disco/notes.txt",
        "Stable-diffusion/sd15.safetensors",
    ):
        (tmp_path / name).write_bytes(b"x")
    found = [(f.name, f.kind) for f in models.find_pixel_models(tmp_path)]
    assert found == [
        ("512x512_diffusion_uncond_finetune_008100.pt", "unet"),
        ("secondary_model_imagenet_2.pth", "secondary"),
        ("256x256_diffusion_uncond.safetensors", "unet"),
    ]


# --- secondary model -----------------------------------------------------------------------------------------


def test_secondary_model_keys_and_outputs(disco):
    secondary = disco("pixel.secondary")
    torch.manual_seed(0)
    model = secondary.SecondaryDiffusionImageNet2().eval()
    sd = model.state_dict()
    assert len(sd) == 49
    assert tuple(sd["timestep_embed.weight"].shape) == (8, 1)
    assert tuple(sd["net.0.0.weight"].shape) == (64, 19, 3, 3)
    assert tuple(sd["net.2.main.1.0.weight"].shape) == (128, 64, 3, 3)
    assert tuple(sd["net.2.main.3.main.3.main.3.main.3.main.1.0.weight"].shape) == (512, 256, 3, 3)
    assert tuple(sd["net.2.main.3.main.3.main.3.main.4.0.weight"].shape) == (256, 512, 3, 3)
    assert tuple(sd["net.3.0.weight"].shape) == (64, 128, 3, 3)
    assert tuple(sd["net.4.weight"].shape) == (3, 64, 3, 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x, torch.tensor([0.0, 0.5]))
    a = s = math.sqrt(0.5)
    assert torch.allclose(out.pred[0], x[0], atol=1e-6)  # t = 0: no noise, pred is the input
    assert torch.allclose(out.pred[1], x[1] * a - out.v[1] * s, atol=1e-6)
    assert torch.allclose(out.eps[1], x[1] * s + out.v[1] * a, atol=1e-6)
    t = secondary.alpha_sigma_to_t(torch.tensor(0.6), torch.tensor(0.8))
    assert torch.allclose(torch.stack(secondary.t_to_alpha_sigma(t)), torch.tensor([0.6, 0.8]), atol=1e-6)


# --- diffusion -----------------------------------------------------------------------------------------------


def test_timestep_respacing(disco):
    diffusion = disco("pixel.diffusion")
    assert diffusion.space_timesteps(1000, "ddim250") == list(range(0, 1000, 4))
    assert diffusion.space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert diffusion.space_timesteps(1000, "10") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert diffusion.space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]
    with pytest.raises(InvalidParameter, match="integer stride"):
        diffusion.space_timesteps(10, "ddim7")
    with pytest.raises(InvalidParameter, match="cannot take"):
        diffusion.space_timesteps(10, "6,1")
    assert diffusion.disco_diffusion_steps(300) == 900
    assert diffusion.disco_diffusion_steps(250) == 1000
    d = diffusion.Diffusion.for_disco(300)
    assert d.num_timesteps == 300 and d.original_num_steps == 900
    assert d.timestep_map[:3] == (0, 3, 6)
    assert d.model_timesteps(1, 2, "cpu").tolist() == pytest.approx([3 * 1000 / 900] * 2)
    base = base_alpha_bar(900)
    assert d.alpha_bar(299) == pytest.approx(float(base[897]), rel=1e-12)
    assert d.alpha_bar_prev(0) == 1.0 and d.alpha_bar_prev(5) == d.alpha_bar(4)


def exact_model(diffusion_mod, target: torch.Tensor, num_steps: int):
    """eps of a point mass at ``target``: the ideal denoiser, from the timesteps the network receives."""
    abar = base_alpha_bar(num_steps)

    def model_fn(x, timesteps):
        base = (timesteps.double() * num_steps / 1000).round().long()
        ab = abar[base].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    return model_fn


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 0.0), ("ddim", 0.7), ("plms", 0.0)])
def test_samplers_recover_the_data_point_with_the_exact_model(disco, sampler, eta):
    diffusion = disco("pixel.diffusion")
    target = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    d = diffusion.Diffusion.for_disco(20)
    kwargs = {"diffusion": d, "generator": torch.Generator().manual_seed(0)}
    if sampler == "ddim":
        steps = list(
            diffusion.ddim_sample(exact_model(diffusion, target, 1000), (1, 3, 8, 8), eta=eta, **kwargs)
        )
    else:
        steps = list(diffusion.plms_sample(exact_model(diffusion, target, 1000), (1, 3, 8, 8), **kwargs))
    assert len(steps) == 20 and [s.t for s in steps[:2]] == [19, 18]
    assert torch.allclose(steps[-1].sample, target, atol=1e-4)
    assert torch.allclose(steps[0].pred_xstart, target, atol=1e-4)
    # The first sample is still noisy: the result is not just copied.
    assert (steps[0].sample - target).abs().mean() > 0.1


def test_init_image_and_skip_steps(disco):
    diffusion = disco("pixel.diffusion")
    target = torch.zeros(1, 3, 8, 8)
    init = torch.full((1, 3, 8, 8), 0.5)
    d = diffusion.Diffusion.for_disco(10)
    model = exact_model(diffusion, target, 1000)
    steps = list(
        diffusion.ddim_sample(
            model,
            (1, 3, 8, 8),
            diffusion=d,
            generator=torch.Generator().manual_seed(0),
            skip_timesteps=4,
            init_image=init,
        )
    )
    assert len(steps) == 6 and steps[0].t == 5
    with pytest.raises(InvalidParameter, match="skip_steps"):
        next(
            diffusion.ddim_sample(
                model, (1, 3, 8, 8), diffusion=d, generator=torch.Generator(), skip_timesteps=10
            )
        )
    # The start is the init image noised to step 5: its mean keeps sqrt(abar_5) of the init.
    start = []
    list(
        diffusion.ddim_sample(
            lambda x, t: (start.append(x.clone()), torch.zeros_like(x))[1],
            (1, 3, 64, 64),
            diffusion=d,
            generator=torch.Generator().manual_seed(0),
            skip_timesteps=4,
            init_image=torch.full((1, 3, 64, 64), 0.5),
        )
    )
    assert start[0].mean().item() == pytest.approx(0.5 * math.sqrt(d.alpha_bar(5)), abs=0.02)


def test_callback_can_interrupt(disco):
    diffusion = disco("pixel.diffusion")
    d = diffusion.Diffusion.for_disco(10)
    seen = []

    def callback(step, total, pred):
        seen.append((step, total, tuple(pred.shape)))
        if step == 2:
            raise JobCancelled("interrupted")

    model = exact_model(diffusion, torch.zeros(1, 3, 8, 8), 1000)
    for loop in (diffusion.ddim_sample, diffusion.plms_sample):
        seen.clear()
        with pytest.raises(JobCancelled):
            list(loop(model, (1, 3, 8, 8), diffusion=d, generator=torch.Generator(), callback=callback))
        assert seen == [(0, 10, (1, 3, 8, 8)), (1, 10, (1, 3, 8, 8)), (2, 10, (1, 3, 8, 8))]


def test_gradient_clamp_and_nan(disco):
    sampling = disco("pixel.sampling")
    grad = torch.stack([torch.full((3, 4, 4), 2.0), torch.full((3, 4, 4), 0.01), torch.zeros(3, 4, 4)])
    clamped = sampling.clamp_gradient(grad, 0.05)
    rms = clamped.square().flatten(1).mean(1).sqrt()
    assert rms.tolist() == pytest.approx([0.05, 0.01, 0.0])
    bad = grad.clone()
    bad[1, 0, 0, 0] = float("nan")
    fixed = sampling.finite_or_zero(bad)
    assert torch.equal(fixed[0], grad[0]) and torch.equal(fixed[1], torch.zeros(3, 4, 4))


# --- run_pixel -----------------------------------------------------------------------------------------------


def test_run_pixel_is_deterministic_under_a_seed(disco):
    unet, sampling = disco("pixel.unet"), disco("pixel.sampling")
    torch.manual_seed(0)
    model = unet.UNetModel(tiny_config(unet)).requires_grad_(False).eval()
    settings = PixelSettings(steps=5)

    def run(seed, mode="ddim"):
        return sampling.run_pixel(
            model, settings, None, torch.Generator().manual_seed(seed), None, sampling_mode=mode
        )

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (1, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(run(1, "plms"), run(1, "plms"))
    with pytest.raises(InvalidParameter, match="sampling_mode"):
        run(1, "euler")
    with pytest.raises(InvalidParameter, match="multiples of 2"):
        sampling.run_pixel(model, PixelSettings(width=33), None, torch.Generator(), None)


def brightness_loss(images, step, steps):
    # Large enough that the clamp (RMS <= clamp_max) always binds.
    return 1e4 * ((images.mean(dim=(1, 2, 3)) - 0.5) ** 2).sum()


@pytest.mark.parametrize("mode", ["ddim", "plms"])
def test_guidance_lowers_the_loss(disco, mode):
    sampling = disco("pixel.sampling")
    model = GaussianToy(disco("pixel.unet"), steps=10)
    settings = PixelSettings(steps=10, clamp_max=0.2)
    for seed in range(3):
        off = sampling.run_pixel(
            model, settings, None, torch.Generator().manual_seed(seed), None, sampling_mode=mode
        )
        on = sampling.run_pixel(
            model, settings, brightness_loss, torch.Generator().manual_seed(seed), None, sampling_mode=mode
        )
        assert float(brightness_loss(on, 0, 1)) < 0.7 * float(brightness_loss(off, 0, 1)), seed


def test_clip_guidance_lowers_the_clip_loss(disco):
    sampling, guidance, settings_mod = disco("pixel.sampling"), disco("guidance"), disco("settings")
    prompts = disco("prompts")
    model = GaussianToy(disco("pixel.unet"), steps=8)
    disco_settings = settings_mod.DiscoSettings.defaults("pixel").replace(
        cutn_batches=1,
        cut_overview="[2]*1000",
        cut_innercut="[2]*1000",
        skip_augs=True,
        clip_guidance_scale=2000.0,
        range_scale=0.0,
    )
    guide = guidance.ClipGuide(
        [TinyClip()], [prompts.WeightedPrompt("a red lighthouse", 1.0)], None, disco_settings
    )

    def clip_distance(images):
        return guide.evaluate(images, 0, 8, torch.Generator().manual_seed(0)).clip

    run_settings = PixelSettings(steps=8, clamp_max=0.2)
    for mode in ("ddim", "plms"):
        for seed in range(3):
            cut_gen = torch.Generator().manual_seed(100 + seed)

            def loss(images, step, steps, cut_gen=cut_gen):
                return guide.loss(images, step, steps, cut_gen)

            off = sampling.run_pixel(
                model, run_settings, None, torch.Generator().manual_seed(seed), None, sampling_mode=mode
            )
            on = sampling.run_pixel(
                model, run_settings, loss, torch.Generator().manual_seed(seed), None, sampling_mode=mode
            )
            assert clip_distance(on) < clip_distance(off), (mode, seed)


def test_secondary_model_guidance_lowers_the_loss(disco):
    sampling, secondary = disco("pixel.sampling"), disco("pixel.secondary")
    model = GaussianToy(disco("pixel.unet"), steps=6)
    torch.manual_seed(0)
    small = secondary.SecondaryDiffusionImageNet2().requires_grad_(False).eval()
    settings = PixelSettings(steps=6, clamp_max=0.2)
    off = sampling.run_pixel(model, settings, None, torch.Generator().manual_seed(0), None)
    on = sampling.run_pixel(model, settings, brightness_loss, torch.Generator().manual_seed(0), None, small)
    assert float(brightness_loss(on, 0, 1)) < 0.7 * float(brightness_loss(off, 0, 1))


def test_disco_settings_provide_the_fields_run_pixel_reads(disco):
    settings = disco("settings").DiscoSettings.defaults("pixel")
    for field in dataclasses.fields(PixelSettings):
        assert hasattr(settings, field.name), field.name
    assert (settings.steps, settings.eta, settings.clamp_max) == (250, 0.8, 0.05)
