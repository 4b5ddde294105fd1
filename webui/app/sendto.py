"""The "send to" buttons: results and PNG Info hand an image and its parameters to another tab."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from webui.app.extras import ExtrasTab
from webui.app.form_params import pasted_values
from webui.app.generation_controls import hires_upscalers
from webui.app.img2img import Img2ImgTab, subtab_id
from webui.app.pnginfo import PngInfoTab
from webui.app.results import ResultsPanel, selected_image, selected_infotext
from webui.app.services import Form
from webui.app.txt2img import Txt2ImgTab


def _paste_into(form: Form, infotext: str) -> dict[Any, Any]:
    if not infotext:
        return {}
    ui = form.ui
    values = pasted_values(infotext, ui.sampler_labels(), ui.schedule_labels(), hires_upscalers(form))
    return {form.fields[k]: v for k, v in values.items() if k in form.fields}


def wire_send_to(
    tabs: Any, txt2img: Txt2ImgTab, img2img: Img2ImgTab, extras: ExtrasTab, pnginfo: PngInfoTab
) -> None:
    """Connect every send-to button to its target tab."""
    img_form = img2img.form
    to_img2img = [
        tabs,
        img2img.subtabs,
        img2img.subtab,
        img2img.init_image,
        img2img.inpaint,
        *img_form.fields.values(),
    ]

    def send(target: str, image: Any, infotext: str) -> dict[Any, Any]:
        update = _paste_into(img_form, infotext)
        update[tabs] = gr.Tabs(selected="img2img")
        update[img2img.subtabs] = gr.Tabs(selected=subtab_id(target))
        update[img2img.subtab] = target
        if target == "inpaint":
            update[img2img.inpaint] = {"background": image, "layers": [], "composite": image}
        else:
            update[img2img.init_image] = image
        return update

    panels: tuple[ResultsPanel, ...] = (txt2img.results, img2img.results)
    for panel in panels:
        panel.send_img2img.click(
            lambda s: send("img2img", selected_image(s), selected_infotext(s)), panel.state, to_img2img
        )
        panel.send_inpaint.click(
            lambda s: send("inpaint", selected_image(s), selected_infotext(s)), panel.state, to_img2img
        )
        panel.send_extras.click(
            lambda s: (gr.Tabs(selected="extras"), gr.Tabs(selected="extras_single"), selected_image(s)),
            panel.state, [tabs, extras.subtabs, extras.image],
        )  # fmt: skip

    def png_to_img2img(path: str | None, infotext: str) -> dict[Any, Any]:
        image = None
        if path:
            with Image.open(path) as im:
                image = im.convert("RGB")
        return send("img2img", image, infotext)

    pnginfo.send_img2img.click(png_to_img2img, [pnginfo.image, pnginfo.parameters], to_img2img)

    def png_to_txt2img(infotext: str) -> dict[Any, Any]:
        update = _paste_into(txt2img.form, infotext)
        update[tabs] = gr.Tabs(selected="txt2img")
        return update

    pnginfo.send_txt2img.click(png_to_txt2img, pnginfo.parameters, [tabs, *txt2img.form.fields.values()])
