"""End-to-end loading of tiny real checkpoints through ``ModelManager.load``: the loaded components must
hold exactly the factory's weights and compute exactly what the factory's components compute."""

from __future__ import annotations

import re
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file

from tests.factories import write_tiny_checkpoint, write_tiny_diffusers_folder
from tests.models.conftest import ManagerFactory, TinyCheckpoint, build_manager
from webui.models.checkpoint_files import load_state_dict
from webui.models.loader import LoadedModel, alphas_cumprod_for
from webui.models.manager import CacheLimits

PROMPT = "a photo of a cat"
PROMPT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
CHECKPOINTS = {
    # file -> (label, prediction source, factory names of the loaded text encoders, padding ids)
    "sd1.safetensors": ("SD1.x", "default", ("text_encoder",), (49407,)),
    "sd2_v.safetensors": ("SD2.x v-prediction", "header", ("text_encoder",), (0,)),
    "sdxl.safetensors": ("SDXL", "default", ("text_encoder", "text_encoder_2"), (49407, 0)),
    "sdxl_refiner.safetensors": ("SDXL refiner", "default", ("text_encoder_2",), (0,)),
    "sd1_inpaint.safetensors": ("SD1.x inpainting", "default", ("text_encoder",), (49407,)),
}


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory,
    tokenizer_cache: Path,
    tiny_checkpoints: dict[str, TinyCheckpoint],
) -> dict[str, LoadedModel]:
    """Each tiny checkpoint loaded once by the user's path (files in models/Stable-diffusion)."""
    root = tmp_path_factory.mktemp("loading")
    manager = build_manager(root, tokenizer_cache, tiny_checkpoints, *CHECKPOINTS, limits=CacheLimits())
    models = {name: manager.load(name) for name in CHECKPOINTS}
    manager.close()
    return models


def _assert_same_parameters(loaded: torch.nn.Module, reference: torch.nn.Module) -> None:
    got = dict(loaded.named_parameters())
    want = dict(reference.named_parameters())
    assert set(got) == set(want)
    for name, value in want.items():
        assert torch.equal(got[name].to(value.dtype), value), name


def _token_ids(tokenizer, prompt: str = PROMPT) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_loaded_model_identity_and_spec(loaded: dict[str, LoadedModel], name: str) -> None:
    label, source, encoders, pads = CHECKPOINTS[name]
    model = loaded[name]
    assert re.fullmatch(re.escape(name) + r" \[[0-9a-f]{10}\]", model.checkpoint.title)
    assert (model.spec.label, model.spec.prediction_source) == (label, source)
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert len(model.text_encoders) == len(model.tokenizers) == len(encoders)
    assert model.unet.config.in_channels == (9 if "inpaint" in name else 4)
    for tokenizer, pad in zip(model.tokenizers, pads, strict=True):
        ids = _token_ids(tokenizer)[0].tolist()
        assert ids[:7] == PROMPT_IDS
        assert ids[7:] == [pad] * 70


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_loaded_weights_equal_factory_components(
    loaded: dict[str, LoadedModel], tiny_checkpoints: dict[str, TinyCheckpoint], name: str
) -> None:
    model, components = loaded[name], tiny_checkpoints[name].components
    _assert_same_parameters(model.unet, components["unet"])
    _assert_same_parameters(model.vae, components["vae"])
    for encoder, key in zip(model.text_encoders, CHECKPOINTS[name][2], strict=True):
        _assert_same_parameters(encoder, components[key])
    assert all(not p.requires_grad for m in model.modules() for p in m.parameters())


def _encode(
    encoders: tuple[torch.nn.Module, ...], ids: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Context (hidden states of all encoders side by side) and the pooled projection of the last one."""
    outputs = [encoder(i) for encoder, i in zip(encoders, ids, strict=True)]
    context = torch.cat([o.last_hidden_state for o in outputs], dim=-1)
    pooled = getattr(outputs[-1], "text_embeds", None)
    return context, pooled


@torch.no_grad()
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_forward_passes_match_factory_components(
    loaded: dict[str, LoadedModel], tiny_checkpoints: dict[str, TinyCheckpoint], name: str
) -> None:
    model, components = loaded[name], tiny_checkpoints[name].components
    ids = [_token_ids(t) for t in model.tokenizers]
    reference_encoders = tuple(components[k] for k in CHECKPOINTS[name][2])
    context, pooled = _encode(model.text_encoders, ids)
    ref_context, ref_pooled = _encode(reference_encoders, ids)
    assert torch.isfinite(context).all()
    torch.testing.assert_close(context, ref_context, atol=1e-5, rtol=1e-4)
    assert context.shape[-1] == model.unet.config.cross_attention_dim

    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, model.unet.config.in_channels, 8, 8, generator=g)
    t = torch.tensor([500])
    added = None
    if model.spec.is_sdxl:
        assert pooled is not None
        torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=1e-4)
        size = [64.0, 64.0, 0.0, 0.0] + ([64.0, 64.0] if model.spec.family == "sdxl" else [6.0])
        added = {"text_embeds": pooled, "time_ids": torch.tensor([size])}
    out = model.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    ref = components["unet"](x, t, encoder_hidden_states=ref_context, added_cond_kwargs=added).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)

    z = torch.randn(1, 4, 8, 8, generator=g)
    image = model.vae.decode(z).sample
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()
    torch.testing.assert_close(image, components["vae"].decode(z).sample, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ztsnr", [False, True])
def test_alphas_cumprod_match_diffusers_schedule(loaded: dict[str, LoadedModel], ztsnr: bool) -> None:
    spec = replace(loaded["sd1.safetensors"].spec, zero_terminal_snr=ztsnr)
    ours = alphas_cumprod_for(spec)
    reference = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", rescale_betas_zero_snr=ztsnr
    ).alphas_cumprod.double()
    assert ours.shape == (1000,) and ours.dtype == torch.float64
    # diffusers puts the last value at exactly 0 (infinite sigma); A1111 keeps a tiny positive value
    torch.testing.assert_close(ours[:-1], reference[:-1], atol=1e-6, rtol=1e-5)
    assert 0 < ours[-1] < (1e-7 if ztsnr else 0.01)


@torch.no_grad()
@pytest.mark.parametrize(
    ("family", "prediction", "label"), [("sd1", "epsilon", "SD1.x"), ("sd2", "v", "SD2.x v-prediction")]
)
def test_diffusers_folder_loads(
    make_manager: ManagerFactory, family: str, prediction: str, label: str
) -> None:
    manager = make_manager()
    folder = manager.paths.ckpt_dirs[0] / "tiny-diffusers"
    components = write_tiny_diffusers_folder(folder, family, seed=3, prediction_type=prediction)
    assert [c.name for c in manager.refresh()] == ["tiny-diffusers"]  # weight files inside are not listed
    model = manager.load("tiny-diffusers")
    assert model.spec.label == label
    assert re.fullmatch(r"tiny-diffusers \[[0-9a-f]{10}\]", model.checkpoint.title)
    _assert_same_parameters(model.unet, components["unet"])
    _assert_same_parameters(model.vae, components["vae"])
    _assert_same_parameters(model.text_encoders[0], components["text_encoder"])
    ids = _token_ids(model.tokenizers[0])
    torch.testing.assert_close(
        model.text_encoders[0](ids).last_hidden_state, components["text_encoder"](ids).last_hidden_state
    )


def test_ckpt_checkpoint_loads(make_manager: ManagerFactory) -> None:
    manager = make_manager()
    components = write_tiny_checkpoint(manager.paths.ckpt_dirs[0] / "old.ckpt", "sd1", seed=4, fmt="ckpt")
    model = manager.load("old")
    assert (model.checkpoint.name, model.spec.label) == ("old.ckpt", "SD1.x")
    _assert_same_parameters(model.unet, components["unet"])
    _assert_same_parameters(model.text_encoders[0], components["text_encoder"])


def test_lightning_ckpt_loads_with_stub(
    make_manager: ManagerFactory, tiny_checkpoints: dict[str, TinyCheckpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager()
    state = load_state_dict(tiny_checkpoints["sd1.safetensors"].path)
    name = "pytorch_lightning.callbacks.model_checkpoint"
    with monkeypatch.context() as m:
        module = types.ModuleType(name)
        callback = type("ModelCheckpoint", (), {"__module__": name, "monitor": "val/loss"})
        module.ModelCheckpoint = callback  # type: ignore[attr-defined]
        for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
            m.setitem(sys.modules, parent, types.ModuleType(parent))
        m.setitem(sys.modules, name, module)
        torch.save(
            {"state_dict": state, "callbacks": {"ModelCheckpoint": callback()}, "global_step": 1},
            manager.paths.ckpt_dirs[0] / "sd-v1-4.ckpt",
        )
    model = manager.load("sd-v1-4.ckpt")
    assert model.spec.label == "SD1.x"
    _assert_same_parameters(model.unet, tiny_checkpoints["sd1.safetensors"].components["unet"])


def test_vae_file_replaces_baked_vae(
    make_manager: ManagerFactory, tiny_checkpoints: dict[str, TinyCheckpoint]
) -> None:
    manager = make_manager("sd1.safetensors")
    # an SD VAE file holds encoder.* / decoder.* keys: take them from another tiny sd1 checkpoint
    other = tiny_checkpoints["sd1_other.safetensors"]
    vae_state = {
        k.removeprefix("first_stage_model."): v
        for k, v in load_state_dict(other.path).items()
        if k.startswith("first_stage_model.")
    }
    save_file(vae_state, str(manager.paths.vae_dirs[0] / "better-vae.safetensors"))
    manager.refresh()
    assert [v.name for v in manager.vaes()] == ["better-vae.safetensors"]

    baked = manager.load("sd1", vae="None")
    assert baked.vae_info is None
    _assert_same_parameters(baked.vae, tiny_checkpoints["sd1.safetensors"].components["vae"])
    replaced = manager.load("sd1", vae="better-vae.safetensors")
    assert replaced.vae_info is not None and replaced.vae_info.name == "better-vae.safetensors"
    _assert_same_parameters(replaced.vae.decoder, other.components["vae"].decoder)
    _assert_same_parameters(replaced.vae, other.components["vae"])
    _assert_same_parameters(replaced.unet, tiny_checkpoints["sd1.safetensors"].components["unet"])
    assert replaced.vae.config.scaling_factor == pytest.approx(0.18215)
