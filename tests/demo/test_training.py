"""The training scripts on tiny budgets: determinism, resuming, VAE crops, CLIP padding trim, and that
the exported single file loads through the model manager like a user's checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tools.demo_model.architecture import EOS_ID, DemoArchitecture, frame_token_ids, load_tokenizer
from tools.demo_model.clip_model import build_clip
from tools.demo_model.train import Trainer, TrainSettings, learning_rate, run
from tools.demo_model.train_clip import train_clip, trim_padding
from webui.config.flags import parse_flags
from webui.config.options import Options
from webui.context import build_context
from webui.engine.params import GenerationParams
from webui.engine.processing import EngineServices, generate

# the real architecture (the model manager must recognise it) and a smaller one for speed
TINY = TrainSettings(steps=3, vae_steps=2, batch=2, vae_batch=2, warmup=1, pool=8)
SMALL_ARCH = DemoArchitecture(
    vae_widths=(32, 32), unet_widths=(32, 32), unet_attention=(False, True), text_layers=1
)
SMALL = dataclasses.replace(TINY, arch=SMALL_ARCH)


class _Interrupt(Exception):
    pass


def _train(tmp: Path, name: str, settings: TrainSettings = TINY, **kwargs: object) -> Path:
    output = tmp / f"{name}.safetensors"
    run(settings, output, torch.device("cpu"), tmp / f"work-{name}", save_every=1, log_every=1, **kwargs)
    return output


def test_training_is_deterministic_and_resumes_exactly(tmp_path: Path) -> None:
    straight = load_file(_train(tmp_path, "straight", SMALL, report=lambda _: None))

    def stop_mid_diffusion(line: str) -> None:
        if line.startswith("diffusion step 2"):
            raise _Interrupt(line)

    with pytest.raises(_Interrupt):
        _train(tmp_path, "resumed", SMALL, report=stop_mid_diffusion)
    lines: list[str] = []
    resumed = load_file(_train(tmp_path, "resumed", SMALL, report=lines.append))
    assert "resumed diffusion at step 1" in lines
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert straight["model.diffusion_model.out.2.weight"].dtype == torch.float16


def test_export_loads_through_the_model_manager(tmp_path: Path) -> None:
    weights = _train(tmp_path, "model", report=lambda _: None)
    assert weights.stat().st_size < 20e6
    root = tmp_path / "data"
    ctx = build_context(parse_flags(["--data-dir", str(root), "--ckpt", str(weights)]), root)
    try:
        ctx.models.load(str(weights))
        services = EngineServices(
            ctx.models, ctx.samplers, Options(None, {}), None, ctx.upscalers, ctx.version
        )
        params = GenerationParams(
            prompt="a red circle",
            seed=1,
            width=64,
            height=64,
            steps=2,
            do_not_save_samples=True,
            do_not_save_grid=True,
        )
        images = generate(services, params).images
    finally:
        ctx.close()
    assert [image.size for image in images] == [(64, 64)]


def test_vae_batches_are_crops_then_whole_pictures(tmp_path: Path) -> None:
    settings = TrainSettings(vae_steps=10, vae_batch=4, vae_crop=32, vae_full_share=0.2)
    trainer = Trainer(settings, torch.device("cpu"), tmp_path)
    images = torch.rand(6, 3, 64, 64)
    generator = torch.Generator().manual_seed(0)
    trainer.step = 7
    crops = trainer._vae_batch(images, generator)
    trainer.step = 8
    whole = trainer._vae_batch(images, generator)
    assert crops.shape == (4, 3, 32, 32)
    assert whole.shape == (2, 3, 64, 64)
    # every crop is a (possibly mirrored) window of one of the pictures
    for crop in crops:
        windows = images.unfold(2, 32, 1).unfold(3, 32, 1)  # [N, 3, 33, 33, 32, 32]
        found = any(
            torch.equal(windows[n, :, y, x], c)
            for c in (crop, crop.flip(-1))
            for n in range(6)
            for y in range(33)
            for x in range(33)
        )
        assert found


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    assert learning_rate(1.0, 0, 100, 10) == pytest.approx(0.1)
    assert learning_rate(1.0, 10, 100, 10) == pytest.approx(1.0)
    assert learning_rate(1.0, 100, 100, 10) == pytest.approx(0.1)


def test_trimmed_padding_leaves_the_clip_text_features_unchanged(tmp_path: Path) -> None:
    model = build_clip(torch.Generator().manual_seed(0)).eval()
    tokenizer = load_tokenizer(tmp_path / "tokenizer")
    ids = frame_token_ids(
        tokenizer, ["a red circle", "a small blue star at the top left on a white background"]
    )
    trimmed = trim_padding(ids)
    assert trimmed.shape[1] < 25 and (trimmed[:, -1] == EOS_ID).all()
    with torch.no_grad():
        full_features = model.get_text_features(input_ids=ids)
        trimmed_features = model.get_text_features(input_ids=trimmed)
    full_features = getattr(full_features, "pooler_output", full_features)
    trimmed_features = getattr(trimmed_features, "pooler_output", trimmed_features)
    assert torch.allclose(full_features, trimmed_features, atol=1e-5)


def test_clip_training_resumes_exactly(tmp_path: Path) -> None:
    tokenizer_dir = tmp_path / "tokenizer"
    straight, straight_losses = train_clip(4, 8, 0, torch.device("cpu"), tokenizer_dir, log_every=1)

    def stop(line: str) -> None:
        if line.startswith("clip step 2:"):
            raise _Interrupt(line)

    work = tmp_path / "clip-work"
    with pytest.raises(_Interrupt):
        train_clip(
            4, 8, 0, torch.device("cpu"), tokenizer_dir, log_every=1, work_dir=work, save_every=1, report=stop
        )
    lines: list[str] = []
    resumed, resumed_losses = train_clip(
        4,
        8,
        0,
        torch.device("cpu"),
        tokenizer_dir,
        log_every=1,
        work_dir=work,
        save_every=1,
        report=lines.append,
    )
    assert "resumed clip at step 1" in lines
    assert [s for s, _ in resumed_losses] == [1, 2, 3, 4]
    assert resumed_losses == straight_losses
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
