"""Events shared by the txt2img and img2img tabs: Generate (validate, remember, submit, stream),
Interrupt, Skip, paste parameters and the seed reuse buttons."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from webui.app.form_params import apply_styles, generation_params, looks_like_infotext, pasted_values
from webui.app.generation_controls import SeedControls, hires_upscalers
from webui.app.progress import error_html
from webui.app.prompt_row import PromptRow
from webui.app.results import ResultsPanel, last_params, selected_seed, stream_job
from webui.app.services import Form, UiServices
from webui.engine.errors import InvalidParameter
from webui.engine.params import GenerationParams, validate

# Completes the request from the tab's extra inputs (img2img's images) and may return its own way of
# submitting it (img2img batch); raises InvalidParameter for bad input.
RequestHook = Callable[[GenerationParams, dict[Any, Any]], "Callable[[], Any] | None"]


def prepare_request(ui: UiServices, mode: str, values: dict[str, Any]) -> GenerationParams:
    """Validate the form values and build the request, with styles applied to the prompts."""
    p = generation_params(mode, values)
    p.prompt, p.negative_prompt = apply_styles(p.prompt, p.negative_prompt, p.styles, ui.styles)
    return p


def check_request(ui: UiServices, p: GenerationParams) -> None:
    """Everything the engine would reject, checked before the job is queued."""
    opts = ui.ctx.options
    validate(p, max_size=int(opts.get("max_image_size", 4096)), max_batch_size=int(opts.get("max_batch_size", 64)),
             max_batch_count=int(opts.get("max_batch_count", 100)))  # fmt: skip
    ui.ctx.samplers.resolve(p.sampler_name, p.scheduler)
    if p.enable_hr and p.hr_sampler_name:
        ui.ctx.samplers.resolve(p.hr_sampler_name, p.hr_scheduler or p.scheduler)


def wire_generation(
    form: Form,
    row: PromptRow,
    panel: ResultsPanel,
    seeds: SeedControls,
    *,
    extra_inputs: tuple[Any, ...] = (),
    complete: RequestHook | None = None,
) -> None:
    """Connect Generate (click and Ctrl+Enter), Interrupt, Skip, paste parameters and seed reuse."""
    ui, mode = form.ui, form.tab

    def generate(data: dict[Any, Any]) -> Iterator[dict[Any, Any]]:
        values = form.values(data)
        try:
            p = prepare_request(ui, mode, values)
            submit = complete(p, data) if complete is not None else None
            check_request(ui, p)
        except InvalidParameter as e:
            gr.Warning(f"{e.field}: {e.message}")
            yield {row.message: error_html(f"{e.field}: {e.message}")}
            return
        form.remember(values)
        yield {row.message: ""}
        yield from stream_job(ui, panel, submit or (lambda: ui.ctx.submit_generation(p)))

    outputs = [row.message, panel.progress, panel.preview, panel.gallery, panel.infotext, panel.folder,
               panel.state, panel.job_id, panel.download]  # fmt: skip
    row.generate.click(generate, form.inputs() | set(extra_inputs), outputs, show_progress="hidden",
                       concurrency_limit=None)  # fmt: skip

    def interrupt(job_id: str) -> None:
        job = ui.ctx.queue.get(job_id) if job_id else None
        if job is not None:
            job.cancel()
        else:
            ui.ctx.queue.interrupt()

    def skip(job_id: str) -> None:
        job = ui.ctx.queue.get(job_id) if job_id else None
        if job is not None:
            job.skip()
        else:
            ui.ctx.queue.skip()

    row.interrupt.click(interrupt, panel.job_id, None, queue=False)
    row.skip.click(skip, panel.job_id, None, queue=False)

    def paste(prompt: str) -> dict[Any, Any]:
        text = (
            prompt
            if prompt and looks_like_infotext(prompt)
            else ("" if prompt and prompt.strip() else last_params(ui))
        )
        if not text:
            return {row.message: error_html("paste: put generation parameters in the prompt box first")}
        values = pasted_values(text, ui.sampler_labels(), ui.schedule_labels(), hires_upscalers(form))
        update: dict[Any, Any] = {form.fields[k]: v for k, v in values.items() if k in form.fields}
        update[row.message] = ""
        return update

    row.paste.click(paste, row.prompt, [*form.fields.values(), row.message], queue=False)

    seed_reuse = (seeds.reuse_seed, seeds.seed, "seeds"), (seeds.reuse_subseed, seeds.subseed, "subseeds")
    for button, target, key in seed_reuse:
        button.click(lambda state, key=key: _seed_or_skip(state, key), panel.state, target, queue=False)


def _seed_or_skip(state: dict[str, Any], key: str) -> Any:
    seed = selected_seed(state, key)
    return gr.skip() if seed is None else seed
