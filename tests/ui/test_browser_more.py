"""More of the UI in headless Chromium: drawing on the inpaint and sketch editors, Skip, Zip, the send-to
buttons, switching checkpoints, img2img batch folders and prompt styles."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import numpy as np
import pytest
from PIL import Image

from tests.factories import write_tiny_checkpoint
from tests.ui.conftest import (
    UI_DEFAULTS,
    RunningServer,
    _browser_skip_reason,
    open_app,
    screenshot,
    start_server,
)
from tests.ui.test_browser import _pattern_image, generate_img2img, outputs_with, set_number, wait_text
from tests.ui.test_browser_extensions import choose
from webui.engine.outputs import read_infotext
from webui.engine.params import GenerationParams

SKETCH_BLUE = (50, 112, 204)  # the fourth default swatch of Gradio's brush


# --- helpers -------------------------------------------------------------------------------------------


def fetch_bytes(url: str) -> bytes:
    """The body of ``url`` (a ``data:`` URL is decoded)."""
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def image_from_src(pg: Any, selector: str, base_url: str) -> np.ndarray:
    """The RGB pixels of the ``<img>`` at ``selector`` as the browser got them."""
    src = pg.locator(selector).first.get_attribute("src")
    assert src, f"{selector} has no src"
    data = fetch_bytes(src if src.startswith("data:") else urljoin(base_url, src))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def load_into_editor(pg: Any, elem_id: str, path: Path, attempts: int = 3) -> None:
    """Upload ``path`` as the background of the image editor ``elem_id`` and wait until it is shown.

    An editor whose canvas is still starting up drops the file (on a busy machine), so the upload is
    repeated until the picture is there."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    pg.locator(f"#{elem_id} canvas").first.wait_for()
    for attempt in range(attempts):
        pg.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))
        try:
            # uploading is an undoable step: Undo turns on once the background is on the canvas
            pg.wait_for_selector(f"#{elem_id} button[aria-label=Undo]:not([disabled])", timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
    time.sleep(0.5)  # the editor zooms the picture to fit


def set_brush_size(pg: Any, elem_id: str, size: int) -> None:
    """Open the editor's "Brush Size" popover, set the slider and close it again."""
    button = pg.locator(f"#{elem_id} button[aria-label='Brush Size']")
    button.click()
    slider = pg.locator(f"#{elem_id} input[type=range]")
    slider.evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); }",
        str(size),
    )
    button.click()


def pick_swatch(pg: Any, elem_id: str, rgb: tuple[int, int, int]) -> None:
    """Choose the brush colour ``rgb`` among the editor's default swatches."""
    button = pg.locator(f"#{elem_id} button[aria-label=Color]")
    button.click()
    pg.locator(f"#{elem_id} menu.swatch button[style*='rgb({rgb[0]}, {rgb[1]}, {rgb[2]})']").click()
    button.click()


def draw_stroke(pg: Any, elem_id: str, points: list[tuple[float, float]], image_size: int = 64) -> None:
    """Drag the mouse through ``points`` (picture pixels of a square picture of ``image_size``) on the
    canvas of the image editor ``elem_id``; the editor shows the picture centred at its zoom level."""
    canvas = pg.locator(f"#{elem_id} canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    zoom = float(pg.locator(f"#{elem_id} .zoom-number span").inner_text().strip().rstrip("%")) / 100
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def screen(x: float, y: float) -> tuple[float, float]:
        return cx + (x - image_size / 2) * zoom, cy + (y - image_size / 2) * zoom

    pg.mouse.move(*screen(*points[0]))
    pg.mouse.down()
    for point in points[1:]:
        pg.mouse.move(*screen(*point), steps=2)
    pg.mouse.up()
    time.sleep(0.3)


def line(x0: float, x1: float, y: float, n: int = 3) -> list[tuple[float, float]]:
    """Points of a horizontal line in picture pixels."""
    return [(x0 + (x1 - x0) * k / (n - 1), y) for k in range(n)]


def generate_txt2img(pg: Any, prompt: str, seed: int, shown_prompt: str | None = None) -> str:
    """Generate with the page's txt2img settings and wait for this job's infotext (whose first line is
    ``shown_prompt``, by default ``prompt``); returns it."""
    pg.locator("#txt2img_prompt textarea").fill(prompt)
    set_number(pg, "txt2img_seed", seed)
    pg.locator("#txt2img_generate").click()
    pg.wait_for_function(
        "([first, seed]) => { const t = document.querySelector('#txt2img_infotext textarea').value;"
        " return t.split('\\n')[0] === first && t.includes('Seed: ' + seed + ','); }",
        arg=[shown_prompt or prompt, seed],
        timeout=60_000,
    )
    wait_text(pg, "#txt2img_progress", "Done")
    return str(pg.locator("#txt2img_infotext textarea").input_value())


def tab_selected(pg: Any, tab_button: str) -> bool:
    return pg.locator(f"#{tab_button}").get_attribute("aria-selected") == "true"


@pytest.fixture
def spy_requests(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[GenerationParams]:
    """The requests the UI submits to the session server's engine, in order."""
    seen: list[GenerationParams] = []
    submit = server.ctx.submit_generation

    def spy(params: GenerationParams) -> Any:
        seen.append(params)
        return submit(params)

    monkeypatch.setattr(server.ctx, "submit_generation", spy)
    return seen


# --- img2img editors -----------------------------------------------------------------------------------


def test_inpaint_mask_drawn_with_mouse_repaints_only_the_stroke(
    page: Any, data_dir: Path, tmp_path: Path
) -> None:
    original = _pattern_image(tmp_path / "init.png")
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_inpaint_tab-button").click()
    load_into_editor(page, "img2img_inpaint", tmp_path / "init.png")
    set_brush_size(page, "img2img_inpaint", 3)
    draw_stroke(page, "img2img_inpaint", line(20, 44, 32))
    prompt = "inpaint a drawn stroke"
    generate_img2img(page, prompt, "img2img-inpaint-drawn")
    page.wait_for_selector("#img2img_gallery img")
    files = outputs_with(data_dir, "img2img", prompt)
    assert len(files) == 1
    result = np.asarray(Image.open(files[0]).convert("RGB")).astype(int)
    changed = np.abs(result - original.astype(int)).max(axis=-1) > 2
    # well away from the stroke (rows 32 +- 3, columns 20..44 plus the brush radius) nothing moved
    far = np.ones((64, 64), dtype=bool)
    far[22:43, 10:55] = False
    assert not changed[far].any(), f"pixels changed away from the stroke: {np.argwhere(changed & far)[:5]}"
    # along the stroke the picture was repainted
    assert changed[32, 22:43].mean() > 0.8
    assert changed.sum() < 64 * 64 // 4
    assert "Denoising strength" in (read_infotext(files[0]) or "")


def test_sketch_stroke_colour_reaches_the_engine(
    page: Any, data_dir: Path, tmp_path: Path, spy_requests: list[GenerationParams]
) -> None:
    original = _pattern_image(tmp_path / "init.png")
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_sketch_tab-button").click()
    load_into_editor(page, "img2img_sketch", tmp_path / "init.png")
    pick_swatch(page, "img2img_sketch", SKETCH_BLUE)
    set_brush_size(page, "img2img_sketch", 4)
    draw_stroke(page, "img2img_sketch", line(8, 56, 32))
    prompt = "a blue line sketched on"
    set_number(page, "img2img_denoising_strength", 0.2)
    generate_img2img(page, prompt, "img2img-sketch")
    assert len(spy_requests) == 1
    request = spy_requests[0]
    assert request.mask is None and request.denoising_strength == pytest.approx(0.2)
    init = np.asarray(request.init_images[0].convert("RGB")).astype(int)
    assert init.shape == (64, 64, 3)
    blue = np.abs(init - np.array(SKETCH_BLUE)).max(axis=-1) <= 8
    assert blue[32, 12:52].all(), "the stroke is missing from the init image"
    assert np.array_equal(init[:20], original[:20]) and np.array_equal(init[45:], original[45:])
    files = outputs_with(data_dir, "img2img", prompt)
    assert len(files) == 1 and "Denoising strength: 0.2" in (read_infotext(files[0]) or "")


# --- results panel -------------------------------------------------------------------------------------


def test_skip_drops_one_image_of_a_batch_and_the_job_finishes(
    page: Any, server: RunningServer, data_dir: Path
) -> None:
    prompt = "skip the first of three"
    page.locator("#txt2img_prompt textarea").fill(prompt)
    set_number(page, "txt2img_batch_count", 3)
    set_number(page, "txt2img_steps", 25)
    set_number(page, "txt2img_seed", 500)
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_progress", "Batch 1/3 · Step")
    page.locator("#txt2img_skip").click()
    wait_text(page, "#txt2img_progress", "Done", timeout=120)
    screenshot(page, "txt2img-skip")
    files = outputs_with(data_dir, "txt2img", prompt)
    assert len(files) == 2
    seeds = sorted(int(str(read_infotext(f)).split("Seed: ")[1].split(",")[0]) for f in files)
    assert seeds == [501, 502]  # the skipped image was the first one (seed 500)
    assert server.ctx.queue.current() is None
    # the page (and the remembered values) go back to a normal job
    set_number(page, "txt2img_batch_count", 1)
    set_number(page, "txt2img_steps", 3)
    generate_txt2img(page, "after the skip", 3)
    assert len(outputs_with(data_dir, "txt2img", "after the skip")) == 1


def test_zip_button_downloads_the_jobs_pngs(page: Any, server: RunningServer, data_dir: Path) -> None:
    prompt = "two pictures to zip"
    set_number(page, "txt2img_batch_count", 2)
    generate_txt2img(page, prompt, 600)
    set_number(page, "txt2img_batch_count", 1)
    page.locator("#txt2img_zip").click()
    link = page.locator("#txt2img_download a").first
    link.wait_for()
    screenshot(page, "txt2img-zip")
    archive = zipfile.ZipFile(io.BytesIO(fetch_bytes(urljoin(server.url, str(link.get_attribute("href"))))))
    images = outputs_with(data_dir, "txt2img", prompt)
    grids = [
        p
        for p in (data_dir / "outputs" / "txt2img-grids").rglob("*.png")
        if (read_infotext(p) or "").split("\n")[0] == prompt
    ]
    assert len(images) == 2 and len(grids) <= 1
    job_files = [*images, *grids]
    assert sorted(archive.namelist()) == sorted(f.name for f in job_files)
    for f in job_files:
        assert archive.read(f.name) == f.read_bytes()


def test_send_to_img2img_inpaint_and_extras(page: Any, server: RunningServer, data_dir: Path) -> None:
    prompt = "a picture to send on"
    assert "Seed: 4242" in generate_txt2img(page, prompt, 4242)
    files = outputs_with(data_dir, "txt2img", prompt)
    assert len(files) == 1
    saved = np.asarray(Image.open(files[0]).convert("RGB"))

    page.locator("#txt2img_send_to_img2img").click()
    page.wait_for_selector("#img2img_image img")
    assert tab_selected(page, "tab_img2img-button") and tab_selected(page, "img2img_img2img_tab-button")
    shown = image_from_src(page, "#img2img_image img", server.url)
    assert np.array_equal(shown, saved)
    page.wait_for_function("t => document.querySelector('#img2img_prompt textarea').value === t", arg=prompt)
    assert float(page.locator("#img2img_seed input").input_value()) == 4242
    screenshot(page, "send-to-img2img")

    page.locator("#tab_txt2img-button").click()
    page.locator("#txt2img_send_to_extras").click()
    page.wait_for_selector("#extras_image img")
    assert tab_selected(page, "tab_extras-button")
    assert np.array_equal(image_from_src(page, "#extras_image img", server.url), saved)
    screenshot(page, "send-to-extras")

    # inpaint: the editor gets the picture as its background; a stroke repaints only the stroke
    page.locator("#tab_txt2img-button").click()
    page.locator("#txt2img_send_to_inpaint").click()
    page.locator("#img2img_inpaint canvas").first.wait_for()
    assert tab_selected(page, "tab_img2img-button") and tab_selected(page, "img2img_inpaint_tab-button")
    time.sleep(1.0)
    set_brush_size(page, "img2img_inpaint", 3)
    draw_stroke(page, "img2img_inpaint", line(24, 40, 16))
    inpainted = "repaint the sent picture"
    generate_img2img(page, inpainted, "send-to-inpaint")
    out = outputs_with(data_dir, "img2img", inpainted)
    assert len(out) == 1
    result = np.asarray(Image.open(out[0]).convert("RGB")).astype(int)
    changed = np.abs(result - saved.astype(int)).max(axis=-1) > 2
    assert not changed[30:].any() and changed[16, 26:39].mean() > 0.8


# --- top bar -------------------------------------------------------------------------------------------


@pytest.fixture
def two_model_server(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    """A server of its own over two tiny checkpoints."""
    reason = _browser_skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "data"
    models = root / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    write_tiny_checkpoint(models / "sd1.safetensors", "sd1")
    write_tiny_checkpoint(models / "sd1b.safetensors", "sd1", seed=5)
    (root / "ui-config.json").write_text(json.dumps(UI_DEFAULTS), encoding="utf-8")
    running = start_server(root)
    yield running, root
    running.stop()


def test_checkpoint_switch_changes_model_hash_and_bad_file_shows_error(
    browser: Any, two_model_server: tuple[RunningServer, Path]
) -> None:
    running, root = two_model_server
    models = root / "models" / "Stable-diffusion"
    second_hash = hashlib.sha256((models / "sd1b.safetensors").read_bytes()).hexdigest()[:10]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    try:
        open_app(pg, running.url)
        first = generate_txt2img(pg, "the first model", 9)
        assert "Model: sd1," in first and f"Model hash: {second_hash}" not in first

        choose(pg, "setting_sd_model_checkpoint", "sd1b")
        wait_text(pg, "#webui_model_status", "Loaded sd1b")
        current = running.ctx.models.current
        assert current is not None and current.checkpoint.name == "sd1b.safetensors"
        second = generate_txt2img(pg, "the second model", 9)
        assert f"Model hash: {second_hash}" in second and "Model: sd1b," in second
        screenshot(pg, "checkpoint-switched")

        (models / "broken.safetensors").write_bytes(b"this is not a safetensors file" * 10)
        pg.locator("#refresh_sd_model_checkpoint").click()
        choose(pg, "setting_sd_model_checkpoint", "broken")
        error = pg.locator("#webui_model_status .webui-error")
        error.wait_for()
        screenshot(pg, "checkpoint-error")
        assert "broken.safetensors: invalid safetensors header" in error.inner_text()
        assert pg.locator("#setting_sd_model_checkpoint input").first.input_value().startswith("sd1b")
        # the loaded model stays, and generating still works with it
        third = generate_txt2img(pg, "still the second model", 9)
        assert f"Model hash: {second_hash}" in third
    finally:
        context.close()


# --- img2img batch and styles --------------------------------------------------------------------------


def test_img2img_batch_writes_every_output_with_infotext(page: Any, tmp_path: Path) -> None:
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    _pattern_image(source / "first.png")
    Image.new("RGB", (64, 64), (200, 40, 40)).save(source / "second.png")
    (source / "notes.txt").write_text("not an image", encoding="utf-8")
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_batch_tab-button").click()
    page.locator("#img2img_batch_input_dir textarea, #img2img_batch_input_dir input").first.fill(str(source))
    page.locator("#img2img_batch_output_dir textarea, #img2img_batch_output_dir input").first.fill(
        str(target)
    )
    prompt = "a batch from a folder"
    set_number(page, "img2img_seed", 77)
    generate_img2img(page, prompt, "img2img-batch")
    written = sorted(p.name for p in target.iterdir())
    assert written == ["first.png", "second.png"]
    for name in written:
        info = read_infotext(target / name) or ""
        assert info.split("\n")[0] == prompt and "Denoising strength: 0.75" in info and "Seed: 77" in info
        assert Image.open(target / name).size == (64, 64)


def test_saved_style_applies_to_a_later_generation(page: Any, server: RunningServer, data_dir: Path) -> None:
    style_prompt = "masterpiece, {prompt}, ink drawing"
    page.locator("#txt2img_prompt textarea").fill(style_prompt)
    page.locator("#txt2img_style_name input, #txt2img_style_name textarea").first.fill("inky")
    page.locator("#txt2img_style_create").click()
    wait_text(page, "#txt2img_message", "Saved style 'inky'")
    with open(data_dir / "styles.csv", encoding="utf-8", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert rows["inky"]["prompt"] == style_prompt
    # the img2img tab lists it at once, without a reload (as in A1111)
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_styles input").first.click()
    expect_listed = page.locator("ul[role=listbox] li", has_text="inky")
    expect_listed.first.wait_for(state="visible", timeout=10_000)
    assert expect_listed.count() == 1
    page.keyboard.press("Escape")

    # a new page lists the style in both tabs; picking it applies it to the prompt of the job
    open_app(page, server.url)
    page.locator("#txt2img_prompt textarea").fill("a heron")
    choose(page, "txt2img_styles", "inky")
    page.keyboard.press("Escape")
    infotext = generate_txt2img(page, "a heron", 31, "masterpiece, a heron, ink drawing")
    screenshot(page, "txt2img-style")
    assert infotext.split("\n")[0] == "masterpiece, a heron, ink drawing"
    files = outputs_with(data_dir, "txt2img", "masterpiece, a heron, ink drawing")
    assert len(files) == 1
    page.locator("#tab_img2img-button").click()
    page.locator("#img2img_styles input").first.click()
    assert page.locator("ul[role=listbox] li", has_text="inky").count() == 1
