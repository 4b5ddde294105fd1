"""Quality bar of the trained demo model (issue 7), judged by the pixel-level checker.

Everything goes through the real path: the shipped single file is loaded by the model manager and
pictures come from ``generate``. The tests skip when the weights have not been trained yet
(``python -m tools.demo_model.train``; see tools/demo_model/README.md). ``DEMO_MODEL_PATH`` /
``DEMO_CLIP_PATH`` point the tests at other weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.demo_model.checker import Verdict, check, colour_share, judge
from tools.demo_model.dataset import Scene, caption, held_out_scenes, render
from webui.config.flags import parse_flags
from webui.config.options import Options
from webui.context import AppContext, build_context
from webui.engine.params import GenerationParams
from webui.engine.processing import EngineServices, generate

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = Path(os.environ.get("DEMO_MODEL_PATH", REPO / "models" / "demo" / "demo-shapes-v1.safetensors"))
CLIP_DIR = Path(os.environ.get("DEMO_CLIP_PATH", REPO / "models" / "demo" / "demo-clip-v1"))
SIZE = 64
PROMPTS, SEEDS = 50, 3
CFG_PROMPTS = 20
ASPECTS = ("colour", "shape", "background", "position")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppContext]:
    """An application context with the demo checkpoint loaded."""
    if not WEIGHTS.is_file():
        pytest.skip(f"demo weights {WEIGHTS} are absent: train them with `python -m tools.demo_model.train`")
    root = tmp_path_factory.mktemp("demo-data")
    ctx = build_context(parse_flags(["--data-dir", str(root), "--ckpt", str(WEIGHTS)]), root)
    ctx.models.load(str(WEIGHTS))
    try:
        yield ctx
    finally:
        ctx.close()


def _services(ctx: AppContext) -> EngineServices:
    return EngineServices(ctx.models, ctx.samplers, Options(None, {}), None, ctx.upscalers, ctx.version)


def _generate(ctx: AppContext, prompt: str, seed: int, count: int = 1, **kwargs: object) -> list:
    params = GenerationParams(
        prompt=prompt,
        seed=seed,
        width=SIZE,
        height=SIZE,
        batch_size=count,
        do_not_save_samples=True,
        do_not_save_grid=True,
        **kwargs,  # type: ignore[arg-type]
    )
    return generate(_services(ctx), params).images


def _verdicts(ctx: AppContext, scenes: list[Scene], seeds: int, **kwargs: object) -> list[list[Verdict]]:
    """Per scene, the verdicts of its pictures for seeds ``1000 + 10 * index`` and on (one batch)."""
    return [
        [check(image, scene) for image in _generate(ctx, caption(scene), 1000 + 10 * index, seeds, **kwargs)]
        for index, scene in enumerate(scenes)
    ]


def _rates(verdicts: list[list[Verdict]]) -> dict[str, float]:
    flat = [v for per_scene in verdicts for v in per_scene]
    return {name: float(np.mean([getattr(v, name) for v in flat])) for name in ASPECTS}


def _joint_rate(verdicts: list[list[Verdict]]) -> float:
    """Share of pictures whose colour, shape and background are all right."""
    return float(
        np.mean([v.colour and v.shape and v.background for per_scene in verdicts for v in per_scene])
    )


def _note(name: str, value: object) -> None:
    """Print a measured number (shown with ``pytest -s``) so the quality can be quoted."""
    print(f"\ndemo-quality {name}: {value}")


@pytest.fixture(scope="module")
def cfg7_verdicts(demo: AppContext) -> list[list[Verdict]]:
    """Verdicts over 50 held-out prompts x 3 seeds, default sampler, 20 steps, CFG 7."""
    return _verdicts(demo, held_out_scenes(PROMPTS), SEEDS, steps=20, cfg_scale=7.0)


def test_held_out_prompts_meet_the_bar(cfg7_verdicts: list[list[Verdict]]) -> None:
    rates = _rates(cfg7_verdicts)
    _note("cfg7 rates (50 prompts x 3 seeds)", rates)
    assert sum(len(v) for v in cfg7_verdicts) == PROMPTS * SEEDS
    assert rates["colour"] >= 0.90, rates
    assert rates["shape"] >= 0.70, rates
    assert rates["background"] >= 0.80, rates


def test_cfg_1_scores_lower(demo: AppContext, cfg7_verdicts: list[list[Verdict]]) -> None:
    # the first CFG_PROMPTS held-out prompts with the same seeds as at CFG 7, only the scale differs
    scenes = held_out_scenes(PROMPTS)[:CFG_PROMPTS]
    low_verdicts = _verdicts(demo, scenes, SEEDS, steps=20, cfg_scale=1.0)
    high_verdicts = cfg7_verdicts[:CFG_PROMPTS]
    low, high = _rates(low_verdicts), _rates(high_verdicts)
    joint_low, joint_high = (_joint_rate(v) for v in (low_verdicts, high_verdicts))
    _note("cfg1 vs cfg7 rates", {"cfg1": low, "cfg7": high, "joint": (joint_low, joint_high)})
    # The model follows prompts fairly well even unguided (measured: joint 0.85 vs 0.92), so the
    # margin asked for is a modest one; no aspect may be better without guidance.
    assert joint_high >= joint_low + 0.05, (joint_low, joint_high)
    assert all(high[k] >= low[k] for k in ("colour", "shape", "background")), (low, high)


def test_negative_colour_lowers_its_share(demo: AppContext) -> None:
    prompt = "a large red circle on a white background"
    plain = [colour_share(im, "red") for im in _generate(demo, prompt, 50, 4)]
    negative = [colour_share(im, "red") for im in _generate(demo, prompt, 50, 4, negative_prompt="red")]
    _note("red share plain / with negative 'red'", (float(np.mean(plain)), float(np.mean(negative))))
    assert np.mean(plain) > 0.05, plain  # the prompt's colour is there to begin with
    assert np.mean(negative) < 0.8 * np.mean(plain), (plain, negative)


def test_img2img_at_low_strength_keeps_the_layout(demo: AppContext) -> None:
    kept, diffs = [], []
    for index, scene in enumerate(held_out_scenes(10, seed=2)):
        init = render(scene)
        out = _generate(
            demo, caption(scene), 7 + index, mode="img2img", init_images=[init], denoising_strength=0.3
        )[0]
        seen, truth = judge(out), judge(init)
        kept.append(
            (seen.colour, seen.position, seen.background) == (truth.colour, truth.position, truth.background)
        )
        diffs.append(float(np.abs(np.asarray(out, np.float32) - np.asarray(init, np.float32)).mean()))
    _note("img2img 0.3 layout kept / mean abs pixel change", (float(np.mean(kept)), diffs))
    assert max(diffs) < 25.0, diffs
    assert np.mean(kept) >= 0.9, kept


def test_every_sampler_matches_the_prompt(demo: AppContext) -> None:
    scene = held_out_scenes(1, seed=3)[0]
    verdicts = {}
    for label in demo.samplers.labels():
        image = _generate(demo, caption(scene), 4, steps=20, cfg_scale=7.0, sampler_name=label)[0]
        verdicts[label] = check(image, scene)
    _note("samplers", {label: (v.colour, v.shape, v.background) for label, v in verdicts.items()})
    # at 20 steps the linear multistep samplers (LMS, PLMS) are the weak ones on this tiny model
    wrong = [label for label, v in verdicts.items() if not (v.colour and v.background)]
    assert len(wrong) <= 0.15 * len(verdicts), wrong
    assert np.mean([v.shape for v in verdicts.values()]) >= 0.7


TIMING_SCRIPT = """
import json, sys, tempfile, time
from pathlib import Path
from webui.config.flags import parse_flags
from webui.context import build_context
from webui.engine.params import GenerationParams
from webui.engine.processing import generate

weights = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as root:
    ctx = build_context(parse_flags(["--data-dir", root, "--ckpt", str(weights)]), Path(root))
    ctx.models.load(str(weights))
    services = ctx.engine_services()
    timings = []
    for seed in (1, 0, 1, 2):  # the first is a warm-up
        params = GenerationParams(prompt="a small blue ring on a yellow background", seed=seed, width=64,
                                  height=64, steps=20, do_not_save_samples=True, do_not_save_grid=True)
        started = time.perf_counter()
        generate(services, params)
        timings.append(time.perf_counter() - started)
    ctx.close()
print(json.dumps(timings[1:]))
"""


def test_one_native_image_under_a_second(demo: AppContext) -> None:
    # Timed in a fresh process: threads and allocations that earlier tests of the suite leave behind in this
    # one have been seen to double the time; the bar is about the app, not about the test session.
    done = subprocess.run(
        [sys.executable, "-c", TIMING_SCRIPT, str(WEIGHTS)], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2], env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    timings = json.loads(done.stdout.strip().splitlines()[-1])
    _note("seconds per 20-step 64x64 image", timings)
    assert min(timings) < 1.0, timings


@pytest.mark.skipif(not CLIP_DIR.is_dir(), reason=f"demo CLIP {CLIP_DIR} is absent: train it with train_clip")
def test_small_clip_ranks_the_right_caption_first() -> None:
    from tools.demo_model.clip_model import load_clip, similarity

    model, tokenizer = load_clip(CLIP_DIR)
    scenes = held_out_scenes(PROMPTS)
    with torch.no_grad():
        scores = similarity(model, tokenizer, [render(s) for s in scenes], [caption(s) for s in scenes])
    accuracy = float((scores.argmax(dim=1) == torch.arange(len(scenes))).float().mean())
    _note("small CLIP top-1 caption accuracy (50 held-out)", accuracy)
    assert accuracy >= 0.9
