"""The parameter controls shared by txt2img and img2img: sampler, schedule, steps, size, batch, CFG and
seed (with the "Extra" variation options), plus txt2img's hires. fix section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.app.form_params import SAME_SAMPLER, SAME_SCHEDULER
from webui.app.services import Form
from webui.engine.images import LATENT_UPSCALE_MODES

RANDOM_SEED = -1


@dataclass
class SeedControls:
    """Seed, variation seed and their buttons."""

    seed: Any
    random_seed: Any
    reuse_seed: Any
    extras: Any
    subseed: Any
    random_subseed: Any
    reuse_subseed: Any


def _choice(value: Any, choices: list[str], default: str) -> str:
    return value if value in choices else default


def build_sampling(form: Form) -> None:
    """Sampling method, schedule type and steps."""
    samplers, schedules = form.ui.sampler_labels(), form.ui.schedule_labels()
    tab = form.tab
    with gr.Row():
        form.add("sampler_name", gr.Dropdown(
            samplers, value=_choice(form.saved("Sampling method", "DPM++ 2M"), samplers, samplers[0]),
            label="Sampling method", elem_id=f"{tab}_sampling",
        ), "Sampling method")  # fmt: skip
        form.add("scheduler", gr.Dropdown(
            schedules, value=_choice(form.saved("Schedule type", "Automatic"), schedules, schedules[0]),
            label="Schedule type", elem_id=f"{tab}_scheduler",
        ), "Schedule type")  # fmt: skip
        form.add("steps", gr.Slider(1, 150, form.saved("Sampling steps", 20), step=1, label="Sampling steps",
                                    elem_id=f"{tab}_steps"), "Sampling steps")  # fmt: skip


def build_size(form: Form) -> None:
    """Width and height with the swap button."""
    tab = form.tab
    with gr.Row():
        with gr.Column(scale=4):
            width = form.add("width", gr.Slider(64, 2048, form.saved("Width", 512), step=8, label="Width",
                                                elem_id=f"{tab}_width"), "Width")  # fmt: skip
            height = form.add("height", gr.Slider(64, 2048, form.saved("Height", 512), step=8, label="Height",
                                                  elem_id=f"{tab}_height"), "Height")  # fmt: skip
        swap = gr.Button("⇅", elem_id=f"{tab}_res_switch_btn", size="sm", elem_classes="webui-tool")
    swap.click(lambda w, h: (h, w), [width, height], [width, height], queue=False)


def build_batch_and_cfg(form: Form) -> None:
    """Batch count, batch size and CFG scale."""
    tab = form.tab
    limits = form.ui.ctx.options
    with gr.Row():
        form.add("n_iter", gr.Slider(1, int(limits.get("max_batch_count", 100)), form.saved("Batch count", 1), step=1,
                                     label="Batch count", elem_id=f"{tab}_batch_count"), "Batch count")  # fmt: skip
        form.add("batch_size", gr.Slider(1, 8, form.saved("Batch size", 1), step=1, label="Batch size",
                                         elem_id=f"{tab}_batch_size"), "Batch size")  # fmt: skip
    form.add("cfg_scale", gr.Slider(1.0, 30.0, form.saved("CFG Scale", 7.0), step=0.5, label="CFG Scale",
                                    elem_id=f"{tab}_cfg_scale"), "CFG Scale")  # fmt: skip


def build_seed(form: Form) -> SeedControls:
    """Seed with random / reuse buttons and the "Extra" variation options."""
    tab = form.tab
    with gr.Row():
        seed = form.add("seed", gr.Number(form.saved("Seed", RANDOM_SEED), label="Seed", precision=0,
                                          elem_id=f"{tab}_seed", scale=4), "Seed")  # fmt: skip
        random_seed = gr.Button("🎲", elem_id=f"{tab}_random_seed", size="sm", elem_classes="webui-tool")
        reuse_seed = gr.Button("♻️", elem_id=f"{tab}_reuse_seed", size="sm", elem_classes="webui-tool")
        extras = form.add("seed_extras", gr.Checkbox(form.saved("Extra", False), label="Extra",
                                                     elem_id=f"{tab}_subseed_show"), "Extra")  # fmt: skip
    with gr.Group(visible=bool(form.saved("Extra", False))) as extra_group:
        with gr.Row():
            subseed = form.add("subseed", gr.Number(form.saved("Variation seed", RANDOM_SEED), label="Variation seed",
                                                    precision=0, elem_id=f"{tab}_subseed", scale=4), "Variation seed")  # fmt: skip
            random_subseed = gr.Button(
                "🎲", elem_id=f"{tab}_random_subseed", size="sm", elem_classes="webui-tool"
            )
            reuse_subseed = gr.Button(
                "♻️", elem_id=f"{tab}_reuse_subseed", size="sm", elem_classes="webui-tool"
            )
            form.add("subseed_strength", gr.Slider(0.0, 1.0, form.saved("Variation strength", 0.0), step=0.01,
                                                   label="Variation strength", elem_id=f"{tab}_subseed_strength", scale=4),
                     "Variation strength")  # fmt: skip
        with gr.Row():
            form.add("seed_resize_from_w", gr.Slider(0, 2048, form.saved("Resize seed from width", 0), step=8,
                                                     label="Resize seed from width", elem_id=f"{tab}_seed_resize_from_w"),
                     "Resize seed from width")  # fmt: skip
            form.add("seed_resize_from_h", gr.Slider(0, 2048, form.saved("Resize seed from height", 0), step=8,
                                                     label="Resize seed from height", elem_id=f"{tab}_seed_resize_from_h"),
                     "Resize seed from height")  # fmt: skip
    extras.change(lambda on: gr.update(visible=bool(on)), extras, extra_group, queue=False)
    random_seed.click(lambda: RANDOM_SEED, None, seed, queue=False)
    random_subseed.click(lambda: RANDOM_SEED, None, subseed, queue=False)
    return SeedControls(seed, random_seed, reuse_seed, extras, subseed, random_subseed, reuse_subseed)


def hires_upscalers(form: Form) -> list[str]:
    """Latent modes first, then the upscaler registry's names (A1111's list)."""
    names = [n for n in form.ui.ctx.upscalers.names() if n not in LATENT_UPSCALE_MODES]
    return [*LATENT_UPSCALE_MODES, *names]


def build_hires(form: Form) -> Any:
    """The hires. fix section (txt2img); returns its enable checkbox."""
    tab, ui = form.tab, form.ui
    upscalers = hires_upscalers(form)
    enable = form.add("enable_hr", gr.Checkbox(form.saved("Hires. fix", False), label="Hires. fix",
                                               elem_id=f"{tab}_enable_hr"), "Hires. fix")  # fmt: skip
    with gr.Group(visible=bool(form.saved("Hires. fix", False)), elem_id=f"{tab}_hires_fix") as group:
        with gr.Row():
            form.add("hr_upscaler", gr.Dropdown(upscalers, value=_choice(form.saved("Upscaler", "Latent"), upscalers, "Latent"),
                                                label="Upscaler", elem_id=f"{tab}_hr_upscaler"), "Upscaler")  # fmt: skip
            form.add("hr_second_pass_steps", gr.Slider(0, 150, form.saved("Hires steps", 0), step=1, label="Hires steps",
                                                       elem_id=f"{tab}_hires_steps"), "Hires steps")  # fmt: skip
            form.add("denoising_strength", gr.Slider(0.0, 1.0, form.saved("Denoising strength", 0.7), step=0.01,
                                                     label="Denoising strength", elem_id=f"{tab}_denoising_strength"),
                     "Denoising strength")  # fmt: skip
        with gr.Row():
            form.add("hr_scale", gr.Slider(1.0, 4.0, form.saved("Upscale by", 2.0), step=0.05, label="Upscale by",
                                           elem_id=f"{tab}_hr_scale"), "Upscale by")  # fmt: skip
            form.add("hr_resize_x", gr.Slider(0, 2048, form.saved("Resize width to", 0), step=8, label="Resize width to",
                                              elem_id=f"{tab}_hr_resize_x"), "Resize width to")  # fmt: skip
            form.add("hr_resize_y", gr.Slider(0, 2048, form.saved("Resize height to", 0), step=8, label="Resize height to",
                                              elem_id=f"{tab}_hr_resize_y"), "Resize height to")  # fmt: skip
        samplers = [SAME_SAMPLER, *ui.sampler_labels()]
        schedules = [SAME_SCHEDULER, *ui.schedule_labels()]
        with gr.Row():
            form.add("hr_sampler_name", gr.Dropdown(samplers, value=_choice(form.saved("Hires sampling method", SAME_SAMPLER), samplers, SAME_SAMPLER),
                                                    label="Hires sampling method", elem_id=f"{tab}_hr_sampler"),
                     "Hires sampling method")  # fmt: skip
            form.add("hr_scheduler", gr.Dropdown(schedules, value=_choice(form.saved("Hires schedule type", SAME_SCHEDULER), schedules, SAME_SCHEDULER),
                                                 label="Hires schedule type", elem_id=f"{tab}_hr_scheduler"),
                     "Hires schedule type")  # fmt: skip
        form.add("hr_prompt", gr.Textbox(form.saved("Hires prompt", ""), label="Hires prompt", lines=2,
                                         elem_id=f"{tab}_hr_prompt"), "Hires prompt")  # fmt: skip
        form.add("hr_negative_prompt", gr.Textbox(form.saved("Hires negative prompt", ""), label="Hires negative prompt",
                                                  lines=2, elem_id=f"{tab}_hr_negative_prompt"), "Hires negative prompt")  # fmt: skip
    enable.change(lambda on: gr.update(visible=bool(on)), enable, group, queue=False)
    return enable
