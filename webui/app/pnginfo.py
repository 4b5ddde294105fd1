"""The PNG Info tab: drop an image, read its generation parameters and other metadata, send them on."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from webui.engine.outputs import read_infotext


@dataclass
class PngInfoTab:
    """The components the send-to wiring reads."""

    image: Any
    parameters: Any
    send_txt2img: Any
    send_img2img: Any


def image_metadata(path: str | None) -> tuple[str, str]:
    """``(parameters, html table of the other metadata)`` of an image file."""
    if not path:
        return "", ""
    try:
        with Image.open(path) as im:
            info = dict(im.info)
            rows = [("Format", im.format or ""), ("Size", f"{im.width}x{im.height}"), ("Mode", im.mode)]
            parameters = read_infotext(im) or ""
    except OSError as e:
        return "", f'<div class="webui-error">Cannot read the image: {html.escape(str(e))}</div>'
    for key, value in info.items():
        if key in ("parameters", "exif", "icc_profile"):
            continue
        rows.append((str(key), value if isinstance(value, str) else repr(value)))
    body = "".join(
        f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return parameters, f'<table class="webui-pnginfo-table">{body}</table>'


def build_pnginfo() -> PngInfoTab:
    """Lay out the PNG Info tab inside the current ``gr.Tab`` and wire it."""
    with gr.Row():
        with gr.Column():
            image = gr.Image(
                label="Source", type="filepath", image_mode=None, elem_id="pnginfo_image", height=400
            )
        with gr.Column():
            parameters = gr.Textbox(
                "", label="Parameters", lines=6, interactive=False, elem_id="pnginfo_parameters"
            )
            other = gr.HTML("", elem_id="pnginfo_html")
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")
                send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img")
    image.change(image_metadata, image, [parameters, other])
    return PngInfoTab(image, parameters, send_txt2img, send_img2img)
