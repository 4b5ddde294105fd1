"""Entry point of the disco-mode extension: registers the guidance wrapper, the infotext hook, the Disco
tab and the HTTP routes, all through the public facade."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from webui.extensions.api import ExtensionAPI, ExtensionRun, InvalidParameter, JobHandle

from .jobs import DiscoJobs
from .runner import DiscoRunner
from .settings import DiscoSettings
from .tab import controls, settings_from_values

# Guidance wraps outside CFG and outside every lower-order wrapper, as Disco guides the final x0.
GUIDANCE_ORDER = 100
KEPT_JOBS = 32


def setup(api: ExtensionAPI) -> None:
    """Register everything disco mode adds."""
    runner = DiscoRunner(api, load_clip=api.load_clip, clip_names=api.clip_models)
    jobs = DiscoJobs(runner)
    handles: OrderedDict[str, JobHandle] = OrderedDict()

    api.add_denoiser_wrapper(runner.wrap, order=GUIDANCE_ORDER, with_context=True)

    def note(params: Any, extension_args: Any = None, extra_generation_params: Any = None, **_: Any) -> None:
        if extra_generation_params is not None:
            runner.note_infotext(extension_args or {}, extra_generation_params)

    api.on("before_process", note)

    def submit(values: dict[str, Any]) -> JobHandle:
        settings, animation, init = settings_from_values(values)

        def body(run: ExtensionRun) -> Any:
            return jobs.run(run, settings, animation, init)

        handle = api.submit_job(body, label=settings.batch_name)
        handles[handle.id] = handle
        while len(handles) > KEPT_JOBS:
            handles.popitem(last=False)
        return handle

    api.add_ui_form_tab(
        "Disco",
        controls(api.sampler_names(), api.schedule_names(), safe_clip_names(api)),
        submit,
        button="Disco!",
    )

    def run_route(body: Any = None) -> dict[str, Any]:
        if body is not None and not isinstance(body, dict):
            raise InvalidParameter("body", "expected a JSON object of disco settings")
        return {"job": submit(dict(body or {})).id}

    def job_route(query: dict[str, str]) -> dict[str, Any]:
        handle = handles.get(query.get("id", ""))
        if handle is None:
            raise InvalidParameter(
                "id", f"no disco job {query.get('id')!r} (known: {', '.join(handles) or 'none'})"
            )
        return job_summary(handle)

    api.add_api_route("/run", run_route, methods=("POST",))
    api.add_api_route("/job", job_route)
    api.add_api_route(
        "/defaults", lambda query: DiscoSettings.defaults(query.get("engine", "latent")).to_dict()
    )
    api.add_api_route("/clip-models", lambda: {"models": safe_clip_names(api)})


def safe_clip_names(api: ExtensionAPI) -> list[str]:
    """Installed CLIP model names ([] when the models folder cannot be read)."""
    try:
        return list(api.clip_models())
    except InvalidParameter:
        return []


def job_summary(handle: JobHandle) -> dict[str, Any]:
    """A disco job as the API reports it: status, then the saved files or the error."""
    summary: dict[str, Any] = {"id": handle.id, "status": handle.status}
    if handle.done:
        if handle.error is not None:
            summary["error"] = str(handle.error)
        else:
            result = handle.wait(0)
            summary["images"] = [str(p) for p in getattr(result, "paths", ())]
            summary["infotexts"] = list(getattr(result, "infotexts", ()))
            summary["videos"] = [str(p) for p in getattr(result, "videos", ())]
    return summary
