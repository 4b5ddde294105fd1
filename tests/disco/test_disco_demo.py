"""Disco mode on the shipped demo models (checkpoint + CLIP trained on the demo scenes): CLIP guidance lowers
the demo CLIP's loss for the prompt on every seed, and the picture still shows what the prompt names."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tools.demo_model.checker import judge
from webui.config.flags import parse_flags
from webui.context import AppContext, build_context
from webui.engine.params import GenerationParams

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "demo"
PROMPT = "a large red circle on a blue background"

pytestmark = pytest.mark.skipif(
    not (DEMO / "demo-shapes-v1.safetensors").is_file()
    or not (DEMO / "demo-clip-v1" / "model.safetensors").is_file(),
    reason="the demo model or the demo CLIP is not there (python -m tools.demo_model.train)",
)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppContext]:
    root = tmp_path_factory.mktemp("disco-demo")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(DEMO / "demo-shapes-v1.safetensors", root / "models" / "Stable-diffusion")
    shutil.copytree(DEMO / "demo-clip-v1", root / "models" / "demo" / "demo-clip-v1")
    context = build_context(parse_flags(["--data-dir", str(root), "--use-cpu", "all"]), REPO)
    context.start()
    try:
        yield context
    finally:
        context.close()


def test_guidance_lowers_the_demo_clip_loss_on_every_seed(ctx: AppContext, disco) -> None:
    settings_mod, guidance, prompts = disco("settings"), disco("guidance"), disco("prompts")
    from webui.models.clip_models import discover_clip_models, load_clip_model

    clip = load_clip_model(
        next(e for e in discover_clip_models(ctx.paths.models_dir) if e.name == "demo-clip-v1")
    )
    settings = settings_mod.DiscoSettings.defaults("latent").replace(
        steps=20, width=64, height=64, clip_models=("demo-clip-v1",), clip_guidance_scale=200,
        cutn_batches=1, cut_overview="[4]*1000", cut_innercut="[2]*1000", range_scale=0, guidance_end=1.0,
        clamp_max=0.2, text_prompts={0: (PROMPT,)}, sampler="Euler a",
    )  # fmt: skip
    scorer = guidance.ClipGuide(
        [clip], [prompts.parse_prompt(PROMPT)], None, settings.replace(skip_augs=True)
    )

    def score(image: Image.Image) -> float:
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        return scorer.evaluate(x, 999, 1000, torch.Generator().manual_seed(0)).clip

    plain_scores, guided_scores = [], []
    for seed in (1, 2, 3):
        base = {"prompt": PROMPT, "steps": 20, "width": 64, "height": 64, "seed": seed, "sampler_name": "Euler a",
                "scheduler": "Karras", "do_not_save_samples": True}  # fmt: skip
        plain = ctx.submit_generation(GenerationParams(**base)).wait(300)
        one = settings.replace(seed=seed)
        guided = ctx.submit_generation(
            GenerationParams(**base, extension_args={"disco-mode": {"settings": one.to_dict()}})
        ).wait(300)
        plain_scores.append(score(plain.images[0]))
        guided_scores.append(score(guided.images[0]))
        # still the named picture (the demo model's own pixel checker): a red object on blue
        seen = judge(guided.images[0])
        assert (seen.colour, seen.background) == ("red", "blue"), (seed, seen)
    assert all(g < p for g, p in zip(guided_scores, plain_scores, strict=True)), (plain_scores, guided_scores)
