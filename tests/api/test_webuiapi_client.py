"""The ``webuiapi`` PyPI client, unchanged, against a uvicorn server on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import webuiapi
from PIL import Image

from tests.api.conftest import ContextFactory, LiveServer, serve


@pytest.fixture
def server(make_context: ContextFactory) -> Iterator[LiveServer]:
    """A live API-only server with --api-auth."""
    ctx = make_context("--nowebui", "--api-auth", "user:pa55")
    with serve(ctx) as live:
        yield live


@pytest.fixture
def api(server: LiveServer) -> webuiapi.WebUIApi:
    """The client, logged in."""
    return webuiapi.WebUIApi(host=server.host, port=server.port, username="user", password="pa55", steps=2)


def test_catalogues_and_model_switch(api: webuiapi.WebUIApi, server: LiveServer) -> None:
    assert "DPM++ 2M" in api.util_get_sampler_names()
    assert "karras" in api.util_get_scheduler_names()
    titles = api.util_get_model_names()
    assert [t.split(" [")[0] for t in titles] == ["tiny_a.safetensors", "tiny_b.safetensors"]
    api.util_set_model("tiny_b")
    assert api.util_get_current_model().startswith("tiny_b.safetensors")
    assert server.ctx.models.current.checkpoint.name == "tiny_b.safetensors"
    result = api.txt2img(prompt="x", width=64, height=64, seed=3)
    assert result.info["sd_model_name"] == "tiny_b"
    api.util_set_model("tiny_a")
    assert api.txt2img(prompt="x", width=64, height=64, seed=3).info["sd_model_name"] == "tiny_a"


def test_txt2img_img2img_with_mask_and_png_info(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a house", negative_prompt="snow", width=64, height=64, seed=11, batch_size=2)
    assert len(result.images) == 2
    assert result.info["all_seeds"] == [11, 12]
    assert result.info["warnings"] == []
    assert result.parameters["prompt"] == "a house"
    assert result.image.size == (64, 64)

    init = Image.new("RGB", (64, 64), (20, 20, 220))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    edited = api.img2img(
        images=[init], mask_image=mask, prompt="a window", width=64, height=64, seed=5, denoising_strength=0.8,
        inpaint_full_res=False, mask_blur=1,
    )  # fmt: skip
    assert len(edited.images) == 1
    out = edited.image.convert("RGB")
    assert out.getpixel((2, 2)) == (20, 20, 220)  # outside the mask
    assert out.getpixel((32, 32)) != (20, 20, 220)
    assert edited.info["all_prompts"] == ["a window"]
    assert "image_cfg_scale" in "\n".join(edited.info["warnings"])  # webuiapi always sends it

    info = api.png_info(result.images[1])
    assert info.info == result.info["infotexts"][1]  # info text round trip through the PNG chunk
    assert info.parameters["Seed"] == "12"
    assert info.parameters["Prompt"] == "a house"


def test_interrupt_stops_a_running_job_and_progress_shows_a_preview(api: webuiapi.WebUIApi) -> None:
    api.set_options({"show_progress_every_n_steps": 1})
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        running = pool.submit(api.txt2img, prompt="long", width=64, height=64, steps=150, n_iter=3, seed=1)
        preview = None
        deadline = time.monotonic() + 30
        while preview is None and time.monotonic() < deadline:
            progress = api.get_progress()
            preview = progress["current_image"]
            time.sleep(0.05)
        assert preview is not None, "no live preview while the job ran"
        assert progress["state"]["job"] == "txt2img" and progress["state"]["sampling_step"] > 0
        assert 0 < progress["progress"] < 1
        assert api.interrupt() == {}
        result = running.result(60)
    assert time.monotonic() - started < 30
    assert len(result.images) < 3
    assert result.info["interrupted"] is True
    assert api.get_progress()["state"]["job_count"] == 0


def test_wrong_password_is_refused(server: LiveServer) -> None:
    bad = webuiapi.WebUIApi(host=server.host, port=server.port, username="user", password="nope")
    with pytest.raises(RuntimeError, match="401"):
        bad.txt2img(prompt="x", width=64, height=64, steps=1)
