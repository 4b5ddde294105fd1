"""The results column of txt2img / img2img: live preview, progress bar, gallery (grid first), infotext of
the selected image, output folder, zip download and the "send to" buttons; and the Generate streaming."""

from __future__ import annotations

import contextlib
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from webui.app.progress import error_html, follow_job
from webui.app.services import UiServices

PARAMS_FILE = "params.txt"  # A1111 keeps the last generation's infotext here for "paste parameters"


@dataclass
class ResultsPanel:
    """The components of a results column."""

    tab: str
    progress: Any
    preview: Any
    gallery: Any
    infotext: Any
    folder: Any
    send_img2img: Any
    send_inpaint: Any
    send_extras: Any
    make_zip: Any
    download: Any
    state: Any  # {"images", "infotexts", "seeds", "subseeds", "paths", "selected"}
    job_id: Any


def empty_results() -> dict[str, Any]:
    """The results state before the first generation."""
    return {"images": [], "infotexts": [], "seeds": [], "subseeds": [], "paths": [], "selected": 0}


def build_results(tab: str) -> ResultsPanel:
    """Lay out a results column."""
    with gr.Column(elem_id=f"{tab}_results"):
        progress = gr.HTML("", elem_id=f"{tab}_progress")
        preview = gr.Image(label="Live preview", interactive=False, visible=False, elem_id=f"{tab}_preview",
                           type="pil", format="png", height=256)  # fmt: skip
        gallery = gr.Gallery(label="Output", elem_id=f"{tab}_gallery", columns=4, height=420, format="png",
                             object_fit="contain", preview=False, interactive=False)  # fmt: skip
        with gr.Row():
            send_img2img = gr.Button("Send to img2img", elem_id=f"{tab}_send_to_img2img", size="sm")
            send_inpaint = gr.Button("Send to inpaint", elem_id=f"{tab}_send_to_inpaint", size="sm")
            send_extras = gr.Button("Send to extras", elem_id=f"{tab}_send_to_extras", size="sm")
            make_zip = gr.Button("Zip", elem_id=f"{tab}_zip", size="sm")
        download = gr.File(label="Download", visible=False, elem_id=f"{tab}_download", interactive=False)
        infotext = gr.Textbox("", label="Generation info", lines=4, interactive=False, elem_id=f"{tab}_infotext",
                              buttons=["copy"])  # fmt: skip
        folder = gr.Textbox(
            "", label="Output folder", interactive=False, elem_id=f"{tab}_folder", max_lines=1
        )
        state = gr.State(empty_results())
        job_id = gr.State("")
    panel = ResultsPanel(tab, progress, preview, gallery, infotext, folder, send_img2img, send_inpaint, send_extras,
                         make_zip, download, state, job_id)  # fmt: skip
    _wire(panel)
    return panel


def _wire(panel: ResultsPanel) -> None:
    def select(state: dict[str, Any], evt: gr.SelectData):
        state = dict(state)
        state["selected"] = int(evt.index) if evt.index is not None else 0
        return state, selected_infotext(state)

    panel.gallery.select(select, panel.state, [panel.state, panel.infotext], queue=False)

    def zip_files(state: dict[str, Any]):
        paths = [Path(p) for p in state.get("paths", []) if Path(p).is_file()]
        if not paths:
            return gr.update(visible=False, value=None)
        return gr.update(visible=True, value=str(zip_paths(paths)))

    panel.make_zip.click(zip_files, panel.state, panel.download)


def selected_image(state: dict[str, Any]) -> Any:
    """The image selected in the gallery (the first one when nothing is selected), or None."""
    images = state.get("images") or []
    if not images:
        return None
    return images[min(int(state.get("selected", 0)), len(images) - 1)]


def selected_infotext(state: dict[str, Any]) -> str:
    """The infotext of the selected gallery image."""
    texts = state.get("infotexts") or []
    if not texts:
        return ""
    return texts[min(int(state.get("selected", 0)), len(texts) - 1)]


def selected_seed(state: dict[str, Any], key: str = "seeds") -> int | None:
    """The seed (``"seeds"``) or variation seed (``"subseeds"``) of the selected image."""
    seeds = state.get(key) or []
    if not seeds:
        return None
    return int(seeds[min(int(state.get("selected", 0)), len(seeds) - 1)])


def zip_paths(paths: list[Path]) -> Path:
    """A zip archive of ``paths`` in a new temporary folder (served by Gradio from there)."""
    folder = Path(tempfile.mkdtemp(prefix="webui-zip-"))
    target = folder / "images.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in paths:
            zf.write(path, arcname=path.name)
    return target


def results_state(processed: Any) -> dict[str, Any]:
    """The gallery's state from a :class:`Processed` (or an extension job's result with ``images``,
    ``infotexts``, ``seeds`` and ``paths``): the grid (when there is one) first, as A1111 shows."""
    images, infotexts = list(processed.images), list(processed.infotexts)
    seeds = list(processed.seeds)
    subseeds = list(getattr(processed, "subseeds", seeds))  # extension results have no subseeds or grid
    paths = [str(p) for p in processed.paths]
    if getattr(processed, "grid", None) is not None and images:
        images.insert(0, processed.grid)
        infotexts.insert(0, infotexts[0])
        seeds.insert(0, seeds[0])
        subseeds.insert(0, subseeds[0])
        if processed.grid_path is not None:
            paths.insert(0, str(processed.grid_path))
    return {
        "images": images,
        "infotexts": infotexts,
        "seeds": seeds,
        "subseeds": subseeds,
        "paths": paths,
        "selected": 0,
    }


def stream_job(ui: UiServices, panel: ResultsPanel, submit: Callable[[], Any]) -> Iterator[dict[Any, Any]]:
    """Submit the job and stream its progress and preview, then the results, to ``panel``.

    ``submit`` queues the job and returns it (the caller has validated the request already).
    """
    ctx = ui.ctx
    job = submit()
    for view in follow_job(job, ctx.queue):
        update: dict[Any, Any] = {panel.progress: view.html, panel.job_id: job.id}
        if view.preview is not None:
            update[panel.preview] = gr.update(value=view.preview, visible=True)
        if view.done:
            break
        yield update
    yield finished_update(ui, panel, job, view.html)


def finished_update(ui: UiServices, panel: ResultsPanel, job: Any, progress: str) -> dict[Any, Any]:
    """The page update once ``job`` ended: results, or the error next to the controls."""
    update: dict[Any, Any] = {panel.preview: gr.update(visible=False, value=None), panel.job_id: ""}
    processed = job.result
    if processed is None:
        update[panel.progress] = progress if job.error is None else error_html(describe_error(job.error))
        return update
    state = results_state(processed)
    update[panel.state] = state
    update[panel.gallery] = [(im, None) for im in state["images"]]
    update[panel.infotext] = selected_infotext(state)
    update[panel.folder] = str(Path(state["paths"][-1]).parent) if state["paths"] else ""
    update[panel.download] = gr.update(visible=False, value=None)
    notes = "".join(f"<p>{w}</p>" for w in getattr(processed, "warnings", ()))
    update[panel.progress] = progress + notes
    if state["infotexts"]:
        write_params_file(ui, state["infotexts"][0])
    return update


def describe_error(error: BaseException) -> str:
    """A readable one-line message for an exception (InvalidParameter already says ``field: message``)."""
    text = str(error) or type(error).__name__
    return text if ":" in text else f"{type(error).__name__}: {text}"


def write_params_file(ui: UiServices, infotext: str) -> None:
    """Keep the last infotext in ``params.txt`` of the data folder (read by "paste parameters")."""
    with contextlib.suppress(OSError):  # a read-only data folder only loses the paste fallback
        (ui.ctx.paths.data_dir / PARAMS_FILE).write_text(infotext, encoding="utf-8")


def last_params(ui: UiServices) -> str:
    """The infotext of the last generation (``params.txt``), or an empty string."""
    try:
        return (ui.ctx.paths.data_dir / PARAMS_FILE).read_text(encoding="utf-8")
    except OSError:
        return ""
