"""End-to-end generation on tiny models: txt2img, samplers, CFG, img2img, inpainting, hires. fix,
other model families, validation errors, the job queue, interrupt / skip and progress.

Images are 64x64 and runs take two to four steps, so the whole file runs in well under a minute on CPU.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine.conftest import SD1, engine_services
from webui.context import AppContext
from webui.engine.errors import InvalidParameter
from webui.engine.jobs import Job, JobContext, JobStatus
from webui.engine.params import GenerationParams
from webui.engine.processing import EngineServices, Processed, generate
from webui.engine.samplers.registry import create_registries
from webui.infotext.parse import parse_generation_parameters

SAMPLER_LABELS = create_registries()[0].labels()


def params(**changes: Any) -> GenerationParams:
    """A small, fast request: 64x64, 3 Euler steps, nothing saved."""
    values: dict[str, Any] = {
        "prompt": "a red circle",
        "negative_prompt": "blurry",
        "width": 64,
        "height": 64,
        "steps": 3,
        "sampler_name": "Euler",
        "seed": 1,
        "cfg_scale": 5.0,
        "do_not_save_samples": True,
        "do_not_save_grid": True,
    }
    values.update(changes)
    return GenerationParams(**values)


def pixels(image: Image.Image) -> np.ndarray:
    """An image as an int array (so differences do not wrap around)."""
    return np.asarray(image.convert("RGB"), dtype=np.int32)


@pytest.fixture()
def services(sd1_context: AppContext) -> EngineServices:
    """Engine services on tiny SD1 that save nothing (and, on CUDA, call the UNet eagerly: a CUDA graph
    replay does not run the module hooks that :func:`unet_calls` counts with)."""
    return engine_services(sd1_context, cuda_graphs=False)


@contextmanager
def unet_calls(ctx: AppContext) -> Iterator[list[tuple[int, int]]]:
    """Record ``(batch rows, context tokens)`` of every UNet call of the active model."""
    calls: list[tuple[int, int]] = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((int(args[0].shape[0]), int(kwargs["encoder_hidden_states"].shape[1])))

    handle = ctx.models.load().unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def init_image() -> Image.Image:
    """A 64x64 picture with structure in every channel."""
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def square_mask(box: tuple[int, int, int, int] = (16, 16, 48, 48), size: int = 64) -> Image.Image:
    """A black mask with a white (repainted) rectangle."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


# --- txt2img ---------------------------------------------------------------------------------------


def test_same_seed_same_pixels_and_other_seed_differs(services: EngineServices):
    first = generate(services, params(seed=11))
    again = generate(services, params(seed=11))
    other = generate(services, params(seed=12))

    assert first.images[0].size == (64, 64)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert np.abs(pixels(first.images[0]) - pixels(other.images[0])).mean() > 1.0
    assert first.seeds == [11] and other.seeds == [12]


@pytest.fixture(scope="module")
def batch_run(app_context: AppContext, tmp_path_factory: pytest.TempPathFactory) -> tuple[Processed, Path]:
    """batch_size 2 x n_iter 2 from seed 100, saved into a fresh outputs folder."""
    app_context.models.load(SD1)
    outputs = tmp_path_factory.mktemp("batch-outputs")
    services = engine_services(app_context, outputs)
    result = generate(
        services, params(seed=100, batch_size=2, n_iter=2, do_not_save_samples=False, do_not_save_grid=False)
    )
    return result, outputs


def test_batch_and_count_give_consecutive_seeds(batch_run):
    result, _ = batch_run

    assert len(result.images) == 4
    assert result.seeds == [100, 101, 102, 103]
    assert result.info["all_seeds"] == [100, 101, 102, 103]
    assert result.grid is not None and result.grid.size == (128, 128)
    assert not result.interrupted


def test_files_grid_and_counter(batch_run, sd1_context: AppContext):
    result, outputs = batch_run
    today = datetime.date.today().isoformat()
    folder = outputs / "txt2img-images" / today

    expected = [folder / f"{n:05}-{100 + n}.png" for n in range(4)]
    assert result.paths == expected
    assert all(path.is_file() for path in expected)
    assert result.grid_path == outputs / "txt2img-grids" / today / "grid-0000.png"
    assert result.grid_path.is_file()

    more = generate(engine_services(sd1_context, outputs), params(seed=7, steps=1, do_not_save_samples=False))
    assert more.paths == [folder / "00004-7.png"]


def test_png_parameters_chunk_is_the_infotext(batch_run):
    result, _ = batch_run

    for path, infotext in zip(result.paths, result.infotexts, strict=True):
        with Image.open(path) as image:
            assert image.info["parameters"] == infotext
            assert image.size == (64, 64)
            assert np.array_equal(pixels(image), pixels(result.images[result.paths.index(path)]))


def test_infotext_parses_back_to_the_request(batch_run, sd1_context: AppContext):
    result, _ = batch_run
    checkpoint = sd1_context.paths.ckpt_dirs[0] / f"{SD1}.safetensors"
    short_hash = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]

    parsed = parse_generation_parameters(result.infotexts[1])

    assert parsed["Prompt"] == "a red circle"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Steps"] == "3"
    assert parsed["Sampler"] == "Euler"
    assert parsed["Schedule type"] == create_registries()[0].resolve("Euler", "Automatic")[1].label
    assert float(parsed["CFG scale"]) == 5.0
    assert parsed["Seed"] == "101"
    assert (parsed["Size-1"], parsed["Size-2"]) == (64, 64)
    assert parsed["Model hash"] == short_hash
    assert parsed["Model"] == SD1


def test_schedule_type_in_infotext_is_the_resolved_label(services: EngineServices):
    result = generate(services, params(steps=1, scheduler="Karras"))
    assert parse_generation_parameters(result.infotexts[0])["Schedule type"] == "Karras"

    result = generate(services, params(steps=1, sampler_name="DPM++ 2M", scheduler="Automatic"))
    assert parse_generation_parameters(result.infotexts[0])["Schedule type"] == "Karras"


def test_image_of_a_batch_equals_the_single_run_of_its_seed(batch_run, services: EngineServices):
    result, _ = batch_run

    for index in (1, 3):
        single = generate(services, params(seed=100 + index))
        difference = np.abs(pixels(single.images[0]) - pixels(result.images[index]))
        assert difference.max() <= 1, index


@pytest.mark.parametrize("label", SAMPLER_LABELS)
def test_every_sampler_makes_an_image(services: EngineServices, label: str):
    result = generate(services, params(sampler_name=label, steps=4, cfg_scale=1.0, seed=3))

    [image] = result.images
    assert image.size == (64, 64)
    # NaN latents decode to a constant (black) picture
    assert pixels(image).std() > 1.0
    assert parse_generation_parameters(result.infotexts[0])["Sampler"] == label


# --- CFG -------------------------------------------------------------------------------------------


def test_cfg_one_skips_the_uncond_pass(services: EngineServices, sd1_context: AppContext):
    with unet_calls(sd1_context) as calls:
        plain = generate(services, params(cfg_scale=1.0, negative_prompt=""))
    with unet_calls(sd1_context) as guided_calls:
        generate(services, params(cfg_scale=7.0))
    negative = generate(services, params(cfg_scale=1.0, negative_prompt="ugly, green"))

    assert calls == [(1, 77)] * 3  # Euler: one cond-only row per step
    assert guided_calls == [(2, 77)] * 3  # cond and uncond batched together
    # the negative prompt cannot matter when the uncond pass is skipped
    assert np.array_equal(pixels(plain.images[0]), pixels(negative.images[0]))


def test_and_prompt_rows_are_batched(services: EngineServices, sd1_context: AppContext):
    with unet_calls(sd1_context) as calls:
        result = generate(services, params(prompt="a cat :1.2 AND a dog :0.8", batch_size=2, steps=2))

    assert calls == [(6, 77)] * 2  # per image: two AND parts and the uncond
    assert len(result.images) == 2


def test_long_prompt_and_short_negative_run_separately(services: EngineServices, sd1_context: AppContext):
    prompt = ", ".join(["a red circle on a blue square"] * 12)
    with unet_calls(sd1_context) as calls:
        result = generate(services, params(prompt=prompt, steps=2))

    assert sorted(calls) == [(1, 77), (1, 77), (1, 154), (1, 154)]
    assert pixels(result.images[0]).std() > 1.0


# --- img2img and inpainting ------------------------------------------------------------------------


def _steps_seen(
    services: EngineServices, request: GenerationParams
) -> tuple[Processed, list[tuple[int, int]]]:
    """Run through a JobContext and collect every reported ``(step, total)``."""
    job: Job[Any] = Job("img2img", lambda _ctx: None)
    seen: list[tuple[int, int]] = []

    def changed() -> None:
        state = job.progress
        if state.sampling_steps:
            seen.append((state.sampling_step, state.sampling_steps))

    result = generate(services, request, JobContext(job, on_change=changed))
    return result, seen


def test_img2img_strength_half_runs_half_the_steps(services: EngineServices, sd1_context: AppContext):
    request = params(mode="img2img", init_images=[init_image()], steps=10, denoising_strength=0.5)
    with unet_calls(sd1_context) as calls:
        result, seen = _steps_seen(services, request)

    # A1111 runs the last int(0.5 * 10) + 1 = 6 sigmas-steps of a 10-step schedule (t_enc + 1)
    assert len(calls) == 6
    assert seen == [(step, 6) for step in range(1, 7)]
    assert parse_generation_parameters(result.infotexts[0])["Denoising strength"] == "0.5"


def test_img2img_fix_steps_runs_all_steps(sd1_context: AppContext):
    services = engine_services(sd1_context, img2img_fix_steps=True, cuda_graphs=False)
    request = params(mode="img2img", init_images=[init_image()], steps=4, denoising_strength=0.5)
    with unet_calls(sd1_context) as calls:
        _, seen = _steps_seen(services, request)

    assert len(calls) == 4
    assert seen[-1] == (4, 4)


def test_img2img_strength_zero_is_the_vae_round_trip(services: EngineServices, sd1_context: AppContext):
    model = sd1_context.models.load()
    image = init_image()
    with unet_calls(sd1_context) as calls:
        result = generate(services, params(mode="img2img", init_images=[image], denoising_strength=0.0))

    with torch.no_grad():
        x = torch.from_numpy(pixels(image).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        x = x.to(model.device, model.vae_dtype)
        decoded = model.vae.decode(model.vae.encode(x).latent_dist.mode()).sample.float().cpu()
    expected = ((decoded[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()

    assert calls == []
    assert np.abs(pixels(result.images[0]) - expected).max() <= 1


@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_keeps_pixels_outside_the_mask(services: EngineServices, only_masked: bool):
    image, mask = init_image(), square_mask()
    result = generate(
        services,
        params(
            mode="img2img", init_images=[image], mask=mask, mask_blur=0, denoising_strength=0.9,
            inpaint_full_res=only_masked, inpaint_full_res_padding=4,
        ),
    )  # fmt: skip

    out, original, inside = pixels(result.images[0]), pixels(image), np.asarray(mask) == 255
    assert out.shape == original.shape
    assert np.array_equal(out[~inside], original[~inside])
    assert np.abs(out[inside] - original[inside]).mean() > 5
    info = parse_generation_parameters(result.infotexts[0])
    assert info["Inpaint area"] == ("Only masked" if only_masked else "Whole picture")
    assert "Mask blur" not in info  # A1111 writes the blur only when there is one


def test_inverted_mask_repaints_the_outside(services: EngineServices):
    image, mask = init_image(), square_mask()
    result = generate(
        services,
        params(
            mode="img2img",
            init_images=[image],
            mask=mask,
            mask_blur=0,
            inpainting_mask_invert=1,
            denoising_strength=0.9,
        ),
    )

    out, original, white = pixels(result.images[0]), pixels(image), np.asarray(mask) == 255
    assert np.array_equal(out[white], original[white])
    assert np.abs(out[~white] - original[~white]).mean() > 5
    assert parse_generation_parameters(result.infotexts[0])["Mask mode"] == "Inpaint not masked"


@pytest.mark.parametrize(
    ("fill", "label"), [(0, "fill"), (1, "original"), (2, "latent noise"), (3, "latent nothing")]
)
def test_masked_content_modes(services: EngineServices, fill: int, label: str):
    image, mask = init_image(), square_mask()
    result = generate(
        services,
        params(
            mode="img2img",
            init_images=[image],
            mask=mask,
            mask_blur=0,
            inpainting_fill=fill,
            steps=2,
            denoising_strength=0.5,
        ),
    )

    outside = np.asarray(mask) == 0
    assert np.array_equal(pixels(result.images[0])[outside], pixels(image)[outside])
    # "original" is the default: left out of the infotext and filled back in by the parser
    assert ("Masked content" in result.infotexts[0]) == (fill != 1)
    assert parse_generation_parameters(result.infotexts[0])["Masked content"] == label


def test_mask_of_the_wrong_size_is_rejected(services: EngineServices):
    request = params(mode="img2img", init_images=[init_image()], mask=square_mask(size=32))
    with pytest.raises(InvalidParameter) as info:
        generate(services, request)
    assert info.value.field == "mask"
    assert "32x32" in str(info.value)


# --- hires. fix ------------------------------------------------------------------------------------


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_scales_the_image(services: EngineServices, upscaler: str):
    result = generate(
        services,
        params(
            steps=2,
            enable_hr=True,
            hr_scale=1.5,
            hr_upscaler=upscaler,
            hr_second_pass_steps=2,
            denoising_strength=0.5,
        ),
    )

    assert result.images[0].size == (96, 96)
    info = parse_generation_parameters(result.infotexts[0])
    assert info["Hires upscale"] == "1.5"
    assert info["Hires upscaler"] == upscaler
    assert info["Denoising strength"] == "0.5"
    assert (info["Size-1"], info["Size-2"]) == (64, 64)


def test_hires_resize_to(services: EngineServices):
    result = generate(
        services,
        params(
            steps=1,
            enable_hr=True,
            hr_resize_x=96,
            hr_resize_y=80,
            hr_upscaler="Latent (nearest)",
            hr_second_pass_steps=1,
            denoising_strength=0.5,
        ),
    )

    assert result.images[0].size == (96, 80)
    info = parse_generation_parameters(result.infotexts[0])
    assert (info["Hires resize-1"], info["Hires resize-2"]) == (96, 80)
    assert "Hires upscale" not in info


def test_unknown_hires_upscaler_is_rejected(services: EngineServices):
    with pytest.raises(InvalidParameter) as info:
        generate(services, params(enable_hr=True, hr_upscaler="Nonexistent"))
    assert info.value.field == "hr_upscaler"
    assert "Lanczos" in str(info.value)


# --- other model families --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-sd2-v", "tiny-sdxl", "tiny-sdxl-refiner", "tiny-sd1-inpainting"])
def test_model_families_generate_and_inpaint(app_context: AppContext, name: str):
    model = app_context.models.load(name)
    services = engine_services(app_context)
    try:
        txt = generate(services, params(steps=2, seed=5))
        image, mask = init_image(), square_mask()
        inpaint = generate(
            services,
            params(
                mode="img2img", init_images=[image], mask=mask, mask_blur=0, steps=2, denoising_strength=0.8
            ),
        )
    finally:
        app_context.models.load(SD1)

    assert txt.images[0].size == (64, 64) and pixels(txt.images[0]).std() > 1.0
    outside = np.asarray(mask) == 0
    assert np.array_equal(pixels(inpaint.images[0])[outside], pixels(image)[outside])
    assert parse_generation_parameters(txt.infotexts[0])["Model"] == name
    assert txt.info["is_using_inpainting_conditioning"] == model.spec.inpaint


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"width": 65}, "width"),
        ({"height": 32}, "height"),
        ({"steps": 0}, "steps"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"batch_size": 65}, "batch_size"),
        ({"n_iter": 0}, "n_iter"),
        ({"denoising_strength": 1.5}, "denoising_strength"),
        ({"mode": "img2img"}, "init_images"),
        (
            {"mode": "img2img", "init_images": [Image.new("RGB", (64, 64))], "inpainting_fill": 7},
            "inpainting_fill",
        ),
        ({"mode": "img2img", "init_images": [Image.new("RGB", (64, 64))], "resize_mode": 9}, "resize_mode"),
        ({"scheduler": "Sometimes"}, "scheduler"),
    ],
)
def test_invalid_parameters(services: EngineServices, changes: dict[str, Any], field: str):
    with pytest.raises(InvalidParameter) as info:
        generate(services, params(**changes))
    assert info.value.field == field


def test_unknown_sampler_lists_the_valid_ones(services: EngineServices):
    with pytest.raises(InvalidParameter) as info:
        generate(services, params(sampler_name="Euler b"))
    assert info.value.field == "sampler_name"
    assert "Euler a" in str(info.value) and "DPM++ 2M" in str(info.value)


def test_failed_job_raises_on_wait_and_the_next_job_runs(queue_context: AppContext):
    bad = queue_context.submit_generation(params(width=65))
    good = queue_context.submit_generation(params(steps=1))

    with pytest.raises(InvalidParameter) as info:
        bad.wait(timeout=60)
    assert info.value.field == "width"
    assert bad.status is JobStatus.FAILED
    result = good.wait(timeout=60)
    assert good.status is JobStatus.DONE
    assert len(result.images) == 1


# --- interrupt, skip, progress ---------------------------------------------------------------------


def _stop_during_second_image(ctx: AppContext, action: str) -> tuple[Job[Any], Processed, list[Any]]:
    """Run 3 images; when the second one has made a step, ``action`` ("interrupt" / "skip") comes from
    this (the test's) thread while the worker waits for it."""
    reached, acted = threading.Event(), threading.Event()
    states: list[Any] = []

    def listener(job: Job[Any]) -> None:
        state = job.progress
        states.append(state)
        if state.job_no == 1 and state.sampling_step >= 1 and not reached.is_set():
            reached.set()
            acted.wait(timeout=30)

    remove = ctx.queue.add_listener(listener)
    try:
        job = ctx.submit_generation(params(n_iter=3, steps=3, seed=20))
        assert reached.wait(timeout=60)
        assert getattr(ctx.queue, action)()
        acted.set()
        result = job.wait(timeout=60)
    finally:
        remove()
    return job, result, states


def test_interrupt_keeps_the_finished_images(queue_context: AppContext):
    job, result, _ = _stop_during_second_image(queue_context, "interrupt")

    assert result.interrupted
    assert result.seeds == [20]
    assert len(result.images) == 1
    assert job.status is JobStatus.INTERRUPTED


def test_skip_drops_only_the_current_image(queue_context: AppContext):
    job, result, _ = _stop_during_second_image(queue_context, "skip")

    assert not result.interrupted
    assert result.seeds == [20, 22]
    assert len(result.images) == 2
    assert job.status is JobStatus.DONE


def test_progress_reports_steps_and_a_preview(queue_context: AppContext):
    states: list[Any] = []
    remove = queue_context.queue.add_listener(lambda job: states.append(job.progress))
    try:
        job = queue_context.submit_generation(params(n_iter=2, steps=3))
        job.wait(timeout=60)
    finally:
        remove()

    steps = [(s.job_no, s.sampling_step, s.sampling_steps) for s in states if s.sampling_steps]
    assert (0, 1, 6) in steps and (1, 6, 6) in steps
    assert max(s.preview_id for s in states) >= 1
    previews = [s.preview for s in states if s.preview is not None]
    assert previews and isinstance(previews[-1], Image.Image)
    assert job.progress.fraction == 1.0


def test_hires_pass_sees_first_pass_prompt_edits_as_finished(services: EngineServices):
    common = {
        "steps": 2,
        "enable_hr": True,
        "hr_scale": 1.25,
        "hr_second_pass_steps": 2,
        "denoising_strength": 0.5,
    }
    edited = generate(services, params(prompt="[red:blue:0.5] circle", **common))
    explicit = generate(services, params(prompt="[red:blue:0.5] circle", hr_prompt="blue circle", **common))
    halfway = generate(services, params(prompt="[red:blue:1.5] circle", **common))

    # A1111's new scheduling: a fractional edit below 1 is done before the hires pass starts ...
    assert edited.images[0].size == (80, 80)
    assert np.array_equal(pixels(edited.images[0]), pixels(explicit.images[0]))
    # ... while one above 1 still applies in it (here: "red" up to hires step 1 of 2)
    assert not np.array_equal(pixels(edited.images[0]), pixels(halfway.images[0]))


@pytest.mark.parametrize(("method", "full_size"), [("Full", True), ("Approx cheap", False)])
def test_live_preview_method(sd1_context: AppContext, method: str, full_size: bool):
    services = engine_services(sd1_context, show_progress_type=method)
    job = Job("txt2img", lambda ctx: None)
    generate(services, params(steps=2, width=64, height=64), JobContext(job, preview_every_n_steps=1))
    preview = job.progress.preview
    assert isinstance(preview, Image.Image), "no preview was produced"
    # "Full" decodes with the VAE (image size); the cheap approximation is at latent resolution
    assert (preview.size == (64, 64)) is full_size
