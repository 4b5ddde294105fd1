"""The Extras tab: upscale one image or a batch (scale by / scale to) with the upscalers registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from webui.app.progress import error_html
from webui.app.results import describe_error
from webui.app.services import UiServices
from webui.engine.errors import InvalidParameter
from webui.engine.extras import ExtrasParams, upscale
from webui.engine.outputs import FileNameContext

SCALE_MODES = ("Scale by", "Scale to")


@dataclass
class ExtrasTab:
    """The Extras inputs other tabs send images to."""

    image: Any
    subtabs: Any


def build_extras(ui: UiServices) -> ExtrasTab:
    """Lay out the Extras tab inside the current ``gr.Tab`` and wire it."""
    names = ui.ctx.upscalers.names()
    with gr.Row():
        with gr.Column(scale=1):
            mode = gr.State("single")
            with gr.Tabs(elem_id="extras_mode") as subtabs:
                with gr.Tab("Single Image", id="extras_single", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(
                        label="Source", type="pil", elem_id="extras_image", height=320, format="png"
                    )
                with gr.Tab("Batch Process", id="extras_batch", elem_id="extras_batch_tab") as batch_tab:
                    files = gr.File(
                        label="Batch Process",
                        file_count="multiple",
                        type="filepath",
                        elem_id="extras_image_batch",
                    )
            single_tab.select(lambda: "single", None, mode, queue=False)
            batch_tab.select(lambda: "batch", None, mode, queue=False)
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            resize_mode = gr.Radio(
                list(SCALE_MODES), value=SCALE_MODES[0], label="Resize", elem_id="extras_resize_mode"
            )
            scale = gr.Slider(1.0, 8.0, 2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
            with gr.Row():
                width = gr.Number(512, label="Width", precision=0, elem_id="extras_upscaling_resize_w")
                height = gr.Number(512, label="Height", precision=0, elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            upscaler_1 = gr.Dropdown(
                names, value=names[0] if names else None, label="Upscaler 1", elem_id="extras_upscaler_1"
            )
            with gr.Row():
                upscaler_2 = gr.Dropdown(names, value="None" if "None" in names else None, label="Upscaler 2",
                                         elem_id="extras_upscaler_2")  # fmt: skip
                visibility = gr.Slider(0.0, 1.0, 0.0, step=0.01, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")  # fmt: skip
        with gr.Column(scale=1):
            status = gr.HTML("", elem_id="extras_status")
            gallery = gr.Gallery(label="Result", elem_id="extras_gallery", columns=3, height=420, format="png",
                                 interactive=False)  # fmt: skip
            info = gr.Textbox("", label="Info", interactive=False, elem_id="extras_info", lines=2)

    def process(mode: str, image: Image.Image | None, files: list[str] | None, resize_mode: str, scale: float,
                width: float, height: float, crop: bool, up1: str, up2: str, vis: float):  # fmt: skip
        try:
            params = ExtrasParams(
                resize_mode=SCALE_MODES.index(resize_mode), upscaling_resize=float(scale),
                upscaling_resize_w=int(width or 0), upscaling_resize_h=int(height or 0), upscaling_crop=bool(crop),
                upscaler_1=up1 or "None", upscaler_2=up2 or "None", extras_upscaler_2_visibility=float(vis),
            )  # fmt: skip
            sources = _sources(mode, image, files)
            job = ui.ctx.submit("extras", lambda: _upscale_all(ui, sources, params))
            results = job.wait()
        except InvalidParameter as e:
            return error_html(f"{e.field}: {e.message}"), gr.skip(), gr.skip()
        except Exception as e:  # a failing upscaler model: show it, keep the app running
            return error_html(describe_error(e)), gr.skip(), gr.skip()
        images = [im for im, _ in results]
        return f"Upscaled {len(images)} image(s).", images, results[0][1] if results else ""

    run.click(process, [mode, image, files, resize_mode, scale, width, height, crop, upscaler_1, upscaler_2, visibility],
              [status, gallery, info], concurrency_limit=None)  # fmt: skip
    return ExtrasTab(image, subtabs)


def _sources(mode: str, image: Image.Image | None, files: list[str] | None) -> list[Image.Image]:
    if mode == "single":
        if image is None:
            raise InvalidParameter("image", "drop an image into the Source box first")
        return [image]
    if not files:
        raise InvalidParameter("imageList", "add images to Batch Process first")
    out = []
    for path in files:
        with Image.open(path) as im:
            out.append(im.convert("RGB"))
    return out


def _upscale_all(
    ui: UiServices, images: list[Image.Image], params: ExtrasParams
) -> list[tuple[Image.Image, str]]:
    saver = ui.ctx.engine_services().outputs
    results = []
    for image in images:
        result, info = upscale(image, params, ui.ctx.upscalers)
        if saver is not None and ui.ctx.options.get("samples_save", True):
            saver.save_image(result, "extras", FileNameContext(), info)
        results.append((result, info))
    return results
