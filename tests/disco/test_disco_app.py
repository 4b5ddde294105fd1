"""Disco mode inside the whole app: the shipped extension loads through the facade, its route runs CLIP-guided
jobs on a tiny SD1 checkpoint with a tiny CLIP from models/clip/, files land in outputs/disco-images/<batch>/
with the settings JSON and infotext, runs reload and reproduce, guidance lowers the CLIP loss, and a 2D
animation writes frames, an mp4 and a GIF."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.factories import write_tiny_checkpoint
from webui.config.flags import parse_flags
from webui.context import AppContext, build_context
from webui.engine.outputs import read_infotext
from webui.server import create_app

REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "width": 64, "height": 64, "steps": 4, "cutn_batches": 1, "cut_preset": "fast", "clip_models_text": "tiny-clip",
    "sampler": "Euler", "schedule": "karras", "text_prompts_text": "a red circle:1\nblue:-0.5", "cfg_scale": 3,
    "range_scale": 0, "guidance_end": 1.0,
}  # fmt: skip


def write_tiny_clip(folder: Path) -> None:
    """A tiny transformers CLIP folder (random weights, the real tokenizer)."""
    from transformers import CLIPConfig, CLIPModel

    from webui.models.tokenizer_files import write_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "pad_token_id": 49407,
                     "bos_token_id": 49406, "eos_token_id": 49407},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=32,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    write_clip_tokenizer(folder)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppContext]:
    root = tmp_path_factory.mktemp("disco-app")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1")
    write_tiny_clip(root / "models" / "clip" / "tiny-clip")
    context = build_context(parse_flags(["--data-dir", str(root), "--api", "--use-cpu", "all"]), REPO)
    context.start()
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def client(ctx: AppContext) -> TestClient:
    return TestClient(create_app(ctx))


def run_disco(client: TestClient, ctx: AppContext, **settings: Any) -> dict[str, Any]:
    response = client.post("/ext/disco-mode/run", json={**SMALL, **settings})
    assert response.status_code == 200, response.text
    job_id = response.json()["job"]
    job = ctx.queue.get(job_id)
    with contextlib.suppress(Exception):  # a failed job's summary carries the error text
        job.wait(300)
    return client.get("/ext/disco-mode/job", params={"id": job_id}).json()


def test_extension_loads_and_lists_the_clip_models(ctx: AppContext, client: TestClient) -> None:
    status = {e.id: e for e in ctx.extensions.list()}["disco-mode"]
    assert status.status == "loaded", status.error
    assert client.get("/ext/disco-mode/clip-models").json() == {"models": ["tiny-clip"]}
    assert client.get("/ext/disco-mode/defaults").json()["engine"] == "latent"
    assert [t.title for t in ctx.extensions.form_tabs()] == ["Disco"]


def test_run_saves_images_settings_and_infotext_and_reloads(ctx: AppContext, client: TestClient) -> None:
    done = run_disco(client, ctx, batch_name="run1", seed=11, n_batches=2, clip_guidance_scale=500,
                     intermediate_saves=2)  # fmt: skip
    assert done["status"] == "done", done
    paths = [Path(p) for p in done["images"]]
    folder = ctx.paths.outputs_dir / "disco-images" / "run1"
    assert len(paths) == 2 and all(p.parent == folder and p.is_file() for p in paths)
    assert Image.open(paths[0]).size == (64, 64)
    partials = sorted(p.name for p in (folder / "partials").glob("*.png"))
    assert partials == [
        "run1_11_0001.png",
        "run1_11_0003.png",
        "run1_12_0001.png",
        "run1_12_0003.png",
    ]  # of 4 steps
    saved = json.loads((folder / "run1(0)_settings.json").read_text(encoding="utf-8"))
    assert (
        saved["seed"] == 11
        and saved["clip_guidance_scale"] == 500
        and saved["text_prompts"] == {"0": ["a red circle:1", "blue:-0.5"]}
    )
    infotext = read_infotext(paths[1]) or ""
    assert infotext.startswith("a red circle\nNegative prompt: blue")
    assert "Seed: 12" in infotext and "Disco: " in infotext
    # a run reloads from its PNG and from its JSON: same settings, same picture
    again = run_disco(client, ctx, reload_from=str(paths[0]))
    assert again["status"] == "done", again
    first = np.asarray(Image.open(paths[0]))
    assert np.array_equal(np.asarray(Image.open(again["images"][0])), first)
    from_json = run_disco(client, ctx, reload_from=str(folder / "run1(0)_settings.json"))
    assert np.array_equal(np.asarray(Image.open(from_json["images"][0])), first)
    # an image prompt (path:weight) steers the run too and is recorded
    pictured = run_disco(client, ctx, batch_name="pic", seed=11, clip_guidance_scale=500,
                         image_prompts_text=f"{paths[1]}:2")  # fmt: skip
    assert pictured["status"] == "done", pictured
    assert not np.array_equal(np.asarray(Image.open(pictured["images"][0])), first)
    recorded = json.loads(
        (ctx.paths.outputs_dir / "disco-images" / "pic" / "pic(0)_settings.json").read_text()
    )
    assert recorded["image_prompts"] == {"0": [f"{paths[1]}:2"]}
    gone = run_disco(client, ctx, batch_name="gone", image_prompts_text="/nowhere/x.png:1")
    assert gone["status"] == "failed" and "/nowhere/x.png" in gone["error"]


def test_guidance_changes_the_picture_and_lowers_the_clip_loss(
    ctx: AppContext, client: TestClient, disco
) -> None:
    guidance, settings_mod = disco("guidance"), disco("settings")
    clip = None
    lower = 0
    for seed in (1, 2, 3):
        plain = run_disco(client, ctx, batch_name=f"plain{seed}", seed=seed, clip_guidance_scale=0)
        guided = run_disco(client, ctx, batch_name=f"guided{seed}", seed=seed, clip_guidance_scale=3000, cutn_batches=2,
                           clamp_grad=False)  # fmt: skip
        assert plain["status"] == guided["status"] == "done", (plain, guided)
        a, b = (np.asarray(Image.open(r["images"][0]), dtype=np.float32) for r in (plain, guided))
        assert np.abs(a - b).mean() > 0.5
        if clip is None:  # the same model the extension guided with, loaded the same way
            from webui.models.clip_models import discover_clip_models, load_clip_model

            clip = load_clip_model(discover_clip_models(ctx.paths.models_dir)[0])
        settings = settings_mod.DiscoSettings.defaults("latent").replace(
            cutn_batches=1, clip_guidance_scale=1.0, range_scale=0.0, skip_augs=True
        )
        prompts = [disco("prompts").parse_prompt(line) for line in ("a red circle:1", "blue:-0.5")]
        guide = guidance.ClipGuide([clip], prompts, None, settings)
        losses = []
        for image in (a, b):
            x = torch.from_numpy(image).permute(2, 0, 1)[None] / 127.5 - 1
            losses.append(guide.evaluate(x, 999, 1000, torch.Generator().manual_seed(0)).clip)
        lower += losses[1] < losses[0]
    assert lower == 3


def test_animation_writes_frames_mp4_and_gif(ctx: AppContext, client: TestClient, disco) -> None:
    done = run_disco(client, ctx, batch_name="anim", seed=3, animation_mode="2D", max_frames=3,
                     translation_x="0: (4)", zoom="0: (1.0)", frames_skip_steps="50%", clip_guidance_scale=100)  # fmt: skip
    assert done["status"] == "done", done
    folder = ctx.paths.outputs_dir / "disco-images" / "anim"
    frames = sorted(folder.glob("anim_*.png"))
    assert [f.name for f in frames] == ["anim_0000.png", "anim_0001.png", "anim_0002.png"]
    video = disco("video")
    mp4, gif = (Path(p) for p in done["videos"])
    assert video.count_video_frames(mp4) == 3 and video.count_video_frames(gif) == 3
    assert "Disco: " in (read_infotext(frames[2]) or "")


def test_bad_settings_are_refused_with_the_field_named(ctx: AppContext, client: TestClient) -> None:
    bad = client.post(
        "/ext/disco-mode/run", json={**SMALL, "cut_preset": "custom", "cut_overview": "__import__('os')"}
    )
    assert bad.status_code == 422 and "cut_overview" in bad.text
    unknown = client.post("/ext/disco-mode/run", json={**SMALL, "clip_guidance": 3})
    assert unknown.status_code == 422 and "clip_guidance" in unknown.text
    missing = run_disco(client, ctx, clip_models_text="ViT-B/32", batch_name="nope")
    assert (
        missing["status"] == "failed" and "ViT-B/32" in missing["error"] and "tiny-clip" in missing["error"]
    )
    pixel = run_disco(client, ctx, engine="pixel", width=64, height=64, skip_steps=0, batch_name="px")
    assert pixel["status"] == "failed" and "models/disco" in pixel["error"].replace("\\", "/")
    # the app keeps working after the failures
    assert run_disco(client, ctx, batch_name="after", seed=1)["status"] == "done"


def test_sdapi_txt2img_takes_disco_settings_through_alwayson_scripts(
    ctx: AppContext, client: TestClient
) -> None:
    body = {
        "prompt": "a red circle",
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 8,
        "sampler_name": "Euler",
    }
    settings = {"clip_models": ["tiny-clip"], "clip_guidance_scale": 3000, "cutn_batches": 1, "steps": 3,
                "width": 64, "height": 64, "text_prompts": {"0": ["a red circle"]}, "guidance_end": 1.0}  # fmt: skip
    plain = client.post("/sdapi/v1/txt2img", json=body)
    guided = client.post(
        "/sdapi/v1/txt2img",
        json={**body, "alwayson_scripts": {"disco-mode": {"args": {"settings": settings}}}},
    )
    assert plain.status_code == guided.status_code == 200, guided.text
    assert "Disco: " in json.loads(guided.json()["info"])["infotexts"][0]
    assert "Disco: " not in json.loads(plain.json()["info"])["infotexts"][0]
    assert guided.json()["images"][0] != plain.json()["images"][0]
    bad = client.post(
        "/sdapi/v1/txt2img",
        json={**body, "alwayson_scripts": {"disco-mode": {"args": {"settings": {"steps": -1}}}}},
    )
    assert bad.status_code == 422 and "steps" in bad.text
