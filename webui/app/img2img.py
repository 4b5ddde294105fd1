"""The img2img tab: sub-tabs img2img, Sketch, Inpaint, Inpaint upload and Batch, with the resize and
inpainting controls."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, PngImagePlugin

from webui.app.extension_sections import build_extension_sections
from webui.app.form_params import INPAINT_AREAS, MASK_MODES, mask_from_layers, scaled_size
from webui.app.generation import wire_generation
from webui.app.generation_controls import build_batch_and_cfg, build_sampling, build_seed
from webui.app.prompt_row import PromptRow, build_prompt_row
from webui.app.results import ResultsPanel, build_results
from webui.app.services import Form, UiServices
from webui.engine.errors import InvalidParameter
from webui.engine.images import RESIZE_MODES
from webui.engine.jobs import Job
from webui.engine.masks import INPAINTING_FILL_MODES
from webui.engine.params import GenerationParams
from webui.engine.processing import Processed, generate

SUBTABS = ("img2img", "sketch", "inpaint", "inpaint_upload", "batch")
SUBTAB_LABELS = ("img2img", "Sketch", "Inpaint", "Inpaint upload", "Batch")
RESIZE_TARGETS = ("Resize to", "Resize by")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Img2ImgTab:
    """What other tabs connect to: the sub-tabs and their image inputs, the form and the results."""

    form: Form
    row: PromptRow
    results: ResultsPanel
    subtabs: Any
    subtab: Any  # gr.State with the selected sub-tab id
    init_image: Any
    sketch: Any
    inpaint: Any
    upload_image: Any
    upload_mask: Any


def subtab_id(name: str) -> str:
    """The ``gr.Tab`` id of a sub-tab (``"img2img_inpaint"``)."""
    return f"img2img_{name}"


def build_img2img(ui: UiServices) -> Img2ImgTab:
    """Lay out the img2img tab inside the current ``gr.Tab`` and wire it."""
    form = Form("img2img", ui)
    row = build_prompt_row(form)
    subtab = gr.State("img2img")
    with gr.Row():
        with gr.Column(scale=1, elem_id="img2img_settings"):
            with gr.Tabs(elem_id="img2img_mode") as subtabs:
                with gr.Tab("img2img", id=subtab_id("img2img"), elem_id="img2img_img2img_tab") as t0:
                    init_image = gr.Image(label="Image for img2img", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                                          elem_id="img2img_image", height=360, format="png")  # fmt: skip
                with gr.Tab("Sketch", id=subtab_id("sketch"), elem_id="img2img_sketch_tab") as t1:
                    sketch = gr.ImageEditor(label="Sketch", type="pil", elem_id="img2img_sketch", height=360,
                                            brush=gr.Brush(color_mode="defaults"), format="png")  # fmt: skip
                with gr.Tab("Inpaint", id=subtab_id("inpaint"), elem_id="img2img_inpaint_tab") as t2:
                    inpaint = gr.ImageEditor(label="Image for inpainting with mask", type="pil", elem_id="img2img_inpaint",
                                             height=360, brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), format="png")  # fmt: skip
                with gr.Tab(
                    "Inpaint upload", id=subtab_id("inpaint_upload"), elem_id="img2img_inpaint_upload_tab"
                ) as t3:
                    upload_image = gr.Image(
                        label="Image",
                        type="pil",
                        image_mode="RGB",
                        elem_id="img2img_inpaint_upload_image",
                        format="png",
                    )
                    upload_mask = gr.Image(
                        label="Mask",
                        type="pil",
                        image_mode="L",
                        elem_id="img2img_inpaint_upload_mask",
                        format="png",
                    )
                with gr.Tab("Batch", id=subtab_id("batch"), elem_id="img2img_batch_tab") as t4:
                    gr.Markdown(
                        "Process every image of a folder; results go to the output folder (or outputs/)."
                    )
                    batch_input = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                    batch_output = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir")
                    batch_mask = gr.Textbox(
                        label="Inpaint batch mask directory (optional)",
                        elem_id="img2img_batch_inpaint_mask_dir",
                    )
            for tab, name in zip((t0, t1, t2, t3, t4), SUBTABS, strict=True):
                tab.select(lambda name=name: name, None, subtab, queue=False)
            _resize_controls(form)
            _inpaint_controls(form)
            build_sampling(form)
            build_batch_and_cfg(form)
            form.add("denoising_strength", gr.Slider(0.0, 1.0, form.saved("Denoising strength", 0.75), step=0.01,
                                                     label="Denoising strength", elem_id="img2img_denoising_strength"),
                     "Denoising strength")  # fmt: skip
            seeds = build_seed(form)
            build_extension_sections(form)
        with gr.Column(scale=1):
            results = build_results(form.tab)
    images = (
        subtab,
        init_image,
        sketch,
        inpaint,
        upload_image,
        upload_mask,
        batch_input,
        batch_output,
        batch_mask,
    )

    def complete(p: GenerationParams, data: dict[Any, Any]) -> Callable[[], Any] | None:
        mode, init, drawn, painted, up_image, up_mask, b_in, b_out, b_mask = (data[c] for c in images)
        values = form.values(data)
        if mode == "batch":
            return batch_submitter(ui, p, values, b_in, b_out, b_mask)
        image, mask = request_images(mode, init, drawn, painted, up_image, up_mask)
        p.init_images, p.mask = [image], mask
        _apply_resize(p, values, image)
        return None

    wire_generation(form, row, results, seeds, extra_inputs=images, complete=complete)
    return Img2ImgTab(
        form, row, results, subtabs, subtab, init_image, sketch, inpaint, upload_image, upload_mask
    )


def _resize_controls(form: Form) -> None:
    form.add("resize_mode", gr.Radio(list(RESIZE_MODES), value=form.saved("Resize mode", RESIZE_MODES[0]),
                                     label="Resize mode", elem_id="img2img_resize_mode"), "Resize mode")  # fmt: skip
    with gr.Row():
        form.add("resize_target", gr.Radio(list(RESIZE_TARGETS), value=form.saved("Resize target", RESIZE_TARGETS[0]),
                                           label="Resize", elem_id="img2img_resize_target"), "Resize target")  # fmt: skip
        form.add("scale_by", gr.Slider(0.05, 4.0, form.saved("Scale", 1.0), step=0.05, label="Scale",
                                       elem_id="img2img_scale"), "Scale")  # fmt: skip
    with gr.Row():
        width = form.add(
            "width",
            gr.Slider(64, 2048, form.saved("Width", 512), step=8, label="Width", elem_id="img2img_width"),
            "Width",
        )
        height = form.add(
            "height",
            gr.Slider(64, 2048, form.saved("Height", 512), step=8, label="Height", elem_id="img2img_height"),
            "Height",
        )
        swap = gr.Button("⇅", elem_id="img2img_res_switch_btn", size="sm", elem_classes="webui-tool")
    swap.click(lambda w, h: (h, w), [width, height], [width, height], queue=False)


def _inpaint_controls(form: Form) -> None:
    with gr.Accordion("Inpainting", open=True, elem_id="img2img_inpaint_controls"):
        with gr.Row():
            form.add("mask_blur", gr.Slider(0, 64, form.saved("Mask blur", 4), step=1, label="Mask blur",
                                            elem_id="img2img_mask_blur"), "Mask blur")  # fmt: skip
            form.add("inpaint_full_res_padding", gr.Slider(0, 256, form.saved("Only masked padding, pixels", 32), step=4,
                                                           label="Only masked padding, pixels", elem_id="img2img_inpaint_full_res_padding"),
                     "Only masked padding, pixels")  # fmt: skip
        form.add("inpainting_mask_invert", gr.Radio(list(MASK_MODES), value=form.saved("Mask mode", MASK_MODES[0]),
                                                    label="Mask mode", elem_id="img2img_mask_mode"), "Mask mode")  # fmt: skip
        form.add("inpainting_fill", gr.Radio(list(INPAINTING_FILL_MODES), value=form.saved("Masked content", "original"),
                                             label="Masked content", elem_id="img2img_inpainting_fill"), "Masked content")  # fmt: skip
        form.add("inpaint_full_res", gr.Radio(list(INPAINT_AREAS), value=form.saved("Inpaint area", INPAINT_AREAS[0]),
                                              label="Inpaint area", elem_id="img2img_inpaint_full_res"), "Inpaint area")  # fmt: skip


def _apply_resize(p: GenerationParams, values: dict[str, Any], image: Image.Image) -> None:
    if values.get("resize_target") == RESIZE_TARGETS[1]:
        p.width, p.height = scaled_size(image.width, image.height, values.get("scale_by", 1.0))


def request_images(
    mode: str, init: Any, drawn: Any, painted: Any, up_image: Any, up_mask: Any
) -> tuple[Image.Image, Image.Image | None]:
    """The init image and mask of the selected sub-tab; missing input raises :class:`InvalidParameter`."""
    if mode == "img2img":
        if init is None:
            raise InvalidParameter("init_images", "drop an image into the img2img box first")
        return init.convert("RGB"), None
    if mode == "sketch":
        composite = (drawn or {}).get("composite")
        if composite is None:
            raise InvalidParameter("init_images", "drop an image into the Sketch box first")
        return _flatten(composite), None
    if mode == "inpaint":
        background = (painted or {}).get("background")
        if background is None:
            raise InvalidParameter("init_images", "drop an image into the Inpaint box first")
        mask = mask_from_layers(background, (painted or {}).get("layers") or [])
        if mask is None:
            raise InvalidParameter("mask", "draw the area to repaint on the image first")
        return _flatten(background), mask
    if mode == "inpaint_upload":
        if up_image is None or up_mask is None:
            raise InvalidParameter("mask", "Inpaint upload needs both an image and a mask")
        mask = up_mask.convert("L")
        if mask.size != up_image.size:
            mask = mask.resize(up_image.size)
        return up_image.convert("RGB"), mask
    raise InvalidParameter("img2img_mode", f"unknown img2img mode {mode!r}; valid: {', '.join(SUBTABS)}")


def _flatten(image: Image.Image) -> Image.Image:
    """RGB on white, so transparent editor pixels do not turn black."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        base = Image.new("RGB", rgba.size, (255, 255, 255))
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    return image.convert("RGB")


def batch_files(folder: str, field: str) -> list[Path]:
    """The images of a batch folder, sorted; a missing or empty folder raises :class:`InvalidParameter`."""
    path = Path(folder or "").expanduser()
    if not folder or not path.is_dir():
        raise InvalidParameter(field, f"not a folder: {folder!r}")
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise InvalidParameter(field, f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def batch_submitter(
    ui: UiServices,
    p: GenerationParams,
    values: dict[str, Any],
    input_dir: str,
    output_dir: str,
    mask_dir: str,
) -> Callable[[], Any]:
    """Check the batch folders and return what queues the whole batch as one img2img job."""
    files = batch_files(input_dir, "img2img_batch_input_dir")
    masks = Path(mask_dir).expanduser() if mask_dir else None
    if masks is not None and not masks.is_dir():
        raise InvalidParameter("img2img_batch_inpaint_mask_dir", f"not a folder: {mask_dir!r}")
    out = Path(output_dir).expanduser() if output_dir else None
    with Image.open(files[0]) as first:
        p.init_images = [first.convert("RGB")]  # lets the request be validated before queuing
    _apply_resize(p, values, p.init_images[0])

    def run(job_ctx: Any) -> Processed:
        return run_batch(ui, p, values, files, masks, out, job_ctx)

    return lambda: ui.ctx.queue.submit(Job("img2img", run, payload=p))


def run_batch(
    ui: UiServices, p: GenerationParams, values: dict[str, Any], files: list[Path], masks: Path | None,
    out: Path | None, job_ctx: Any,
) -> Processed:  # fmt: skip
    """Run img2img on every file (on the GPU worker); results are saved beside their source names."""
    total = Processed([], [], [], [], [], [])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for index, file in enumerate(files):
        if job_ctx.interrupted:
            total.interrupted = True
            break
        job_ctx.set_textinfo(f"Image {index + 1}/{len(files)}: {file.name}")
        with Image.open(file) as im:
            image = im.convert("RGB")
        mask = None
        if masks is not None:
            candidates = [
                m for m in masks.iterdir() if m.stem == file.stem and m.suffix.lower() in IMAGE_SUFFIXES
            ]
            if candidates:
                with Image.open(candidates[0]) as m:
                    mask = m.convert("L").resize(image.size)
        q = dataclasses.replace(p, init_images=[image], mask=mask, do_not_save_samples=out is not None,
                                do_not_save_grid=True)  # fmt: skip
        _apply_resize(q, values, image)
        result = generate(ui.ctx.engine_services(), q, job_ctx)
        for k, (img, info) in enumerate(zip(result.images, result.infotexts, strict=True)):
            if out is not None:
                target = out / (file.stem + (f"-{k}" if k else "") + ".png")
                meta = PngImagePlugin.PngInfo()
                meta.add_text("parameters", info)
                img.save(target, pnginfo=meta)
                total.paths.append(target)
        total.paths.extend(result.paths if out is None else [])
        total.images += result.images
        total.infotexts += result.infotexts
        total.seeds += result.seeds
        total.subseeds += result.subseeds
        total.prompts += result.prompts
        total.negative_prompts += result.negative_prompts
        if result.interrupted:
            total.interrupted = True
            break
    return total
