"""The top bar: checkpoint and VAE pickers (switching runs as a job on the queue), quicksettings and the
queue state every open page sees."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from webui.app.progress import error_html, follow_job, queue_html
from webui.app.results import describe_error
from webui.app.services import UiServices
from webui.app.settings_spec import DEFAULT_QUICKSETTINGS, QUICKSETTINGS_KEY, coerce, spec_for
from webui.app.settings_widgets import setting_control

VAE_CHOICES = ("Automatic", "None")
QUEUE_POLL_SECONDS = 1.0


@dataclass
class TopBar:
    """The top bar's components."""

    checkpoint: Any
    vae: Any
    refresh: Any
    status: Any
    queue: Any
    quick: dict[str, Any] = field(default_factory=dict)
    note: Any = None


def checkpoint_titles(ui: UiServices) -> list[str]:
    """Titles (``name [hash]``) of the known checkpoints."""
    return [c.title for c in ui.ctx.models.checkpoints()]


def vae_choices(ui: UiServices) -> list[str]:
    """Automatic, None and the VAE files found."""
    return [*VAE_CHOICES, *(v.name for v in ui.ctx.models.vaes())]


def current_checkpoint(ui: UiServices) -> str | None:
    """The title of the loaded checkpoint, else the remembered setting when it is still known."""
    model = ui.ctx.models.current
    titles = checkpoint_titles(ui)
    if model is not None and model.checkpoint.title in titles:
        return model.checkpoint.title
    wanted = str(ui.ctx.options.get("sd_model_checkpoint", "") or "")
    for title in titles:
        if wanted and (wanted == title or wanted.split(" [", 1)[0] == title.split(" [", 1)[0]):
            return title
    return titles[0] if titles else None


DEMO_NOTE = (
    "Running on the bundled <b>demo model</b> (64x64 pictures of simple shapes: try "
    "<i>a large red circle on a blue background</i>). For real pictures put Stable Diffusion checkpoints "
    "(.safetensors / .ckpt) in <code>{folder}</code> and press 🔄, or download SD 1.5 with "
    "<code>python launch.py --download-model sd15</code>."
)


def model_note(ui: UiServices) -> str:
    """The top bar's note: how to get real checkpoints while only the demo model is there."""
    models = ui.ctx.models
    checkpoints = models.checkpoints()
    if checkpoints and all(models.is_demo(c) for c in checkpoints):
        return f'<div class="webui-note">{DEMO_NOTE.format(folder=ui.ctx.paths.ckpt_dirs[0])}</div>'
    return ""


def build_topbar(ui: UiServices) -> TopBar:
    """Lay out the top bar and wire it."""
    if not ui.ctx.models.checkpoints():
        ui.ctx.models.refresh()
    quick_keys = [k for k in ui.ctx.options.get(QUICKSETTINGS_KEY, list(DEFAULT_QUICKSETTINGS))
                  if k not in ("sd_model_checkpoint", "sd_vae") and spec_for(k) is not None]  # fmt: skip
    with gr.Row(elem_id="webui_topbar", equal_height=False):
        checkpoint = gr.Dropdown(checkpoint_titles(ui), value=current_checkpoint(ui), label="Stable Diffusion checkpoint",
                                 elem_id="setting_sd_model_checkpoint", scale=3)  # fmt: skip
        refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", size="sm", elem_classes="webui-tool")
        vaes = vae_choices(ui)
        vae_value = ui.ctx.options.get("sd_vae", "Automatic")
        vae = gr.Dropdown(vaes, value=vae_value if vae_value in vaes else "Automatic", label="SD VAE",
                          elem_id="setting_sd_vae", scale=2)  # fmt: skip
        quick = {key: setting_control(spec_for(key), ui.ctx.options.get(key), scale=2) for key in quick_keys}  # type: ignore[arg-type]
        with gr.Column(scale=2, min_width=160):
            status = gr.HTML("", elem_id="webui_model_status")
            queue = gr.HTML(queue_html(ui.ctx.queue), elem_id="webui_queue_status")
    note = gr.HTML(model_note(ui), elem_id="webui_model_note")
    bar = TopBar(checkpoint, vae, refresh, status, queue, quick, note)
    _wire(ui, bar)
    return bar


def _wire(ui: UiServices, bar: TopBar) -> None:
    ctx = ui.ctx

    def switch(title: str | None, vae: str | None) -> Iterator[Any]:
        if not title:
            yield (
                gr.skip(),
                error_html(
                    "sd_model_checkpoint: no checkpoint found; put .safetensors files in models/Stable-diffusion"
                ),
            )
            return
        current = ctx.models.current
        if (
            current is not None
            and current.checkpoint.title == title
            and ctx.options.get("sd_vae", "Automatic") == vae
        ):
            yield gr.skip(), ""
            return

        def load() -> str:
            model = ctx.models.load(title, vae or "Automatic")
            ctx.options.update({"sd_model_checkpoint": model.checkpoint.title, "sd_vae": vae or "Automatic"})
            return model.checkpoint.title

        job = ctx.submit("model-switch", load)
        for view in follow_job(job, ctx.queue):
            if view.done:
                break
            yield gr.skip(), view.html.replace("Preparing...", f"Loading {title}...")
        if job.error is not None:
            yield gr.update(value=current_checkpoint(ui)), error_html(describe_error(job.error))
            return
        yield gr.update(choices=checkpoint_titles(ui), value=job.result), f"Loaded {job.result}"

    bar.checkpoint.input(
        switch, [bar.checkpoint, bar.vae], [bar.checkpoint, bar.status], concurrency_limit=None
    )
    bar.vae.input(switch, [bar.checkpoint, bar.vae], [bar.checkpoint, bar.status], concurrency_limit=None)

    def refresh():
        ctx.models.refresh()
        return gr.update(choices=checkpoint_titles(ui), value=current_checkpoint(ui)), gr.update(
            choices=vae_choices(ui)
        )

    bar.refresh.click(refresh, None, [bar.checkpoint, bar.vae])

    for key, control in bar.quick.items():
        spec = spec_for(key)

        def apply(value: Any, key: str = key, spec: Any = spec) -> str:
            try:
                ctx.options.update({key: coerce(spec, value, ctx.options.get(key))})
            except ValueError as e:
                return error_html(f"{key}: {e}")
            return ""

        control.change(apply, control, bar.status, queue=False)

    timer = gr.Timer(QUEUE_POLL_SECONDS)
    timer.tick(lambda: queue_html(ctx.queue), None, bar.queue, show_progress="hidden", queue=False)


def page_load_values(ui: UiServices) -> tuple[Any, Any, Any]:
    """Fresh checkpoint / VAE dropdowns and model note for a page (re)load: the model may have loaded since
    the build."""
    vae = ui.ctx.options.get("sd_vae", "Automatic")
    vaes = vae_choices(ui)
    return (
        gr.update(choices=checkpoint_titles(ui), value=current_checkpoint(ui)),
        gr.update(choices=vaes, value=vae if vae in vaes else "Automatic"),
        model_note(ui),
    )
