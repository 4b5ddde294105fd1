"""The UI in headless Chromium against the real server and a tiny SD1 model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.ui.conftest import RunningServer, open_app, screenshot, start_server
from webui.engine.outputs import read_infotext


def set_number(pg: Any, elem_id: str, value: object) -> None:
    """Type into the number box of a slider / number control and commit it."""
    box = pg.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def number_of(pg: Any, elem_id: str) -> float:
    return float(pg.locator(f"#{elem_id} input[type=number]").input_value())


def dropdown_of(pg: Any, elem_id: str) -> str:
    return pg.locator(f"#{elem_id} input").first.input_value()


def wait_text(pg: Any, selector: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = pg.locator(selector).inner_text()
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{selector} never showed {text!r}; last: {pg.locator(selector).inner_text()!r}")


def generate_img2img(pg: Any, prompt: str, shot: str) -> None:
    """Type ``prompt`` into img2img, press Generate, wait for the job to finish and keep a screenshot."""
    pg.locator("#img2img_prompt textarea").fill(prompt)
    pg.locator("#img2img_generate").click()
    wait_text(pg, "#img2img_progress", "Done")
    screenshot(pg, shot)


def outputs_with(root: Path, kind: str, prompt: str) -> list[Path]:
    folder = root / "outputs" / f"{kind}-images"
    return sorted(p for p in folder.rglob("*.png") if (read_infotext(p) or "").split("\n")[0] == prompt)


def test_generate_with_ctrl_enter_shows_image_and_saves_png(
    page: Any, server: RunningServer, data_dir: Path
) -> None:
    prompt = "a red cat on a mat"
    page.locator("#txt2img_prompt textarea").fill(prompt)
    wait_text(page, "#txt2img_token_counter", "/75")
    set_number(page, "txt2img_seed", 1234)
    page.locator("#txt2img_prompt textarea").press("Control+Enter")
    wait_text(page, "#txt2img_progress", "Done")
    page.wait_for_selector("#txt2img_gallery img")
    infotext = page.locator("#txt2img_infotext textarea").input_value()
    screenshot(page, "txt2img")
    files = outputs_with(data_dir, "txt2img", prompt)
    assert len(files) == 1
    saved = read_infotext(files[0])
    assert saved == infotext
    assert "Steps: 3, Sampler: Euler" in saved and "Seed: 1234" in saved and "Size: 64x64" in saved
    assert Image.open(files[0]).size == (64, 64)
    assert page.locator("#txt2img_folder textarea, #txt2img_folder input").first.input_value() == str(
        files[0].parent
    )
    # the tiny model's tokenizer counts "a red cat on a mat" as 6 tokens
    assert page.locator("#txt2img_token_counter").inner_text().strip() == "6/75"
    remembered = json.loads((data_dir / "ui-config.json").read_text(encoding="utf-8"))
    assert remembered["txt2img/Prompt/value"] == prompt


def test_interrupt_long_job_and_second_tab_sees_queue(
    page: Any, server: RunningServer, browser: Any, data_dir: Path
) -> None:
    prompt = "a very long job"
    page.locator("#txt2img_prompt textarea").fill(prompt)
    set_number(page, "txt2img_batch_count", 40)
    set_number(page, "txt2img_steps", 30)
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_progress", "Step")
    other = browser.new_page()
    try:
        open_app(other, server.url)
        wait_text(other, "#webui_queue_status", "Running txt2img")
        screenshot(other, "second-tab-queue")
    finally:
        other.close()
    screenshot(page, "txt2img-progress")
    page.locator("#txt2img_interrupt").click()
    wait_text(page, "#txt2img_progress", "Interrupted")
    set_number(page, "txt2img_batch_count", 1)
    set_number(page, "txt2img_steps", 3)
    saved = outputs_with(data_dir, "txt2img", prompt)
    assert 0 <= len(saved) < 40
    assert server.ctx.queue.current() is None
    wait_text(page, "#webui_queue_status", "Idle")


def test_paste_parameters_fills_every_field(page: Any) -> None:
    infotext = (
        "a castle, (detailed:1.2)\nNegative prompt: blurry, lowres\n"
        "Steps: 17, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 987654, Size: 128x96, "
        "Model hash: 9bc0f8d58c, Model: sd1, Variation seed: 42, Variation seed strength: 0.3, "
        "Seed resize from: 256x192, Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 7, "
        "Hires upscaler: Lanczos, Version: v0.1.0"
    )
    page.locator("#txt2img_prompt textarea").fill(infotext)
    page.locator("#txt2img_paste").click()
    page.wait_for_function(
        "document.querySelector('#txt2img_prompt textarea').value === 'a castle, (detailed:1.2)'"
    )
    time.sleep(0.5)
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "blurry, lowres"
    assert number_of(page, "txt2img_steps") == 17
    assert dropdown_of(page, "txt2img_sampling") == "DPM++ 2M"
    assert dropdown_of(page, "txt2img_scheduler") == "Karras"
    assert number_of(page, "txt2img_cfg_scale") == 6.5
    assert float(page.locator("#txt2img_seed input").input_value()) == 987654
    assert (number_of(page, "txt2img_width"), number_of(page, "txt2img_height")) == (128, 96)
    assert page.locator("#txt2img_subseed_show input[type=checkbox]").is_checked()
    assert float(page.locator("#txt2img_subseed input").input_value()) == 42
    assert number_of(page, "txt2img_subseed_strength") == 0.3
    assert (number_of(page, "txt2img_seed_resize_from_w"), number_of(page, "txt2img_seed_resize_from_h")) == (
        256,
        192,
    )
    assert page.locator("#txt2img_enable_hr input[type=checkbox]").is_checked()
    assert number_of(page, "txt2img_denoising_strength") == 0.45
    assert number_of(page, "txt2img_hr_scale") == 1.5
    assert number_of(page, "txt2img_hires_steps") == 7
    assert dropdown_of(page, "txt2img_hr_upscaler") == "Lanczos"
    screenshot(page, "txt2img-pasted")


def test_bad_input_shows_readable_error_and_app_keeps_working(page: Any) -> None:
    page.locator("#txt2img_prompt textarea").fill("error check")
    set_number(page, "txt2img_width", 100)  # not a multiple of 8
    page.locator("#txt2img_generate").click()
    message = wait_text(page, "#txt2img_message", "width")
    assert "multiple of 8" in message
    set_number(page, "txt2img_width", 64)
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_progress", "Done")
    assert page.locator("#txt2img_message").inner_text().strip() == ""


def _pattern_image(path: Path) -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def test_inpaint_upload_keeps_pixels_outside_mask(page: Any, data_dir: Path, tmp_path: Path) -> None:
    original = _pattern_image(tmp_path / "init.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_inpaint_upload_tab-button").click()
    page.locator("#img2img_inpaint_upload_image input[type=file]").set_input_files(str(tmp_path / "init.png"))
    page.locator("#img2img_inpaint_upload_mask input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    page.wait_for_selector("#img2img_inpaint_upload_mask img")
    prompt = "inpaint the middle"
    assert number_of(page, "img2img_mask_blur") == 0
    generate_img2img(page, prompt, "img2img-inpaint-upload")
    page.wait_for_selector("#img2img_gallery img")
    files = outputs_with(data_dir, "img2img", prompt)
    assert len(files) == 1
    result = np.asarray(Image.open(files[0]).convert("RGB"))
    outside = mask == 0
    assert np.array_equal(result[outside], original[outside])
    assert not np.array_equal(result[~outside], original[~outside])
    assert "Denoising strength: 0.75" in (read_infotext(files[0]) or "")


def test_pnginfo_shows_parameters_of_generated_file(page: Any, data_dir: Path) -> None:
    files = sorted((data_dir / "outputs" / "txt2img-images").rglob("*.png"))
    if not files:
        pytest.skip("no generated file yet")
    page.locator("#tab_pnginfo-button").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(files[0]))
    expected = read_infotext(files[0])
    page.wait_for_function(
        "t => document.querySelector('#pnginfo_parameters textarea').value === t",
        arg=expected,
        timeout=30_000,
    )
    assert "64x64" in page.locator("#pnginfo_html").inner_text()
    screenshot(page, "pnginfo")
    page.locator("#pnginfo_send_txt2img").click()
    page.wait_for_function(
        "t => document.querySelector('#txt2img_prompt textarea').value === t", arg=expected.split("\n")[0]
    )


def test_extras_upscales_single_image(page: Any, tmp_path: Path) -> None:
    _pattern_image(tmp_path / "small.png")
    page.locator("#tab_extras-button").click()
    page.locator("#extras_image input[type=file]").set_input_files(str(tmp_path / "small.png"))
    page.wait_for_selector("#extras_image img")
    page.locator("#extras_generate").click()
    wait_text(page, "#extras_status", "Upscaled 1")
    assert "Postprocess upscale by: 2" in page.locator("#extras_info textarea").input_value()
    screenshot(page, "extras")


def test_setting_and_last_used_values_survive_restart(page: Any, data_dir: Path, browser: Any) -> None:
    page.locator("#tab_settings-button").click()
    set_number(page, "setting_jpeg_quality", 55)
    page.locator("#settings_submit").click()
    wait_text(page, "#settings_result", "jpeg_quality")
    screenshot(page, "settings")
    assert json.loads((data_dir / "config.json").read_text(encoding="utf-8"))["jpeg_quality"] == 55
    remembered = json.loads((data_dir / "ui-config.json").read_text(encoding="utf-8"))["txt2img/Prompt/value"]

    restarted = start_server(data_dir, load_model=False)
    fresh = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        assert restarted.ctx.options.get("jpeg_quality") == 55
        open_app(fresh, restarted.url)
        assert fresh.locator("#txt2img_prompt textarea").input_value() == remembered
        assert number_of(fresh, "txt2img_width") == 64
        fresh.locator("#tab_settings-button").click()
        assert number_of(fresh, "setting_jpeg_quality") == 55
    finally:
        fresh.close()
        restarted.stop()
