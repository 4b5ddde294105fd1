"""Extensions seen from the whole app: hooks and denoiser wrappers inside real generation jobs, an
extension sampler in txt2img, extension routes and /sdapi/v1/extensions over HTTP, and a failing hook
that fails its job with a clear message while the app keeps working."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.extensions.helpers import manifest, write_extension
from tests.factories import write_tiny_checkpoint
from webui.config.flags import parse_flags
from webui.context import AppContext, build_context
from webui.engine.outputs import read_infotext
from webui.engine.params import GenerationParams
from webui.extensions.hooks import ExtensionError
from webui.infotext.parse import parse_generation_parameters
from webui.server import create_app

REPO = Path(__file__).resolve().parents[2]

PROBE = """
    calls = {"denoiser": 0, "saved": []}

    def setup(api):
        def before(p, extra_generation_params):
            extra_generation_params["Probe"] = "on"
            p.prompt = p.prompt + ", probed"
            return p

        def wrapper(model):
            def wrapped(x, sigma, **kw):
                calls["denoiser"] += 1
                return model(x, sigma, **kw)
            return wrapped

        api.on("before_process", before)
        api.add_denoiser_wrapper(wrapper, order=5)
        api.on("after_image_saved", lambda **kw: calls["saved"].append(str(kw["path"])))
        api.add_api_route("/calls", lambda: {"denoiser": calls["denoiser"], "saved": calls["saved"]})
"""

BOOM = """
    def setup(api):
        def explode(images, **kw):
            if any("explode" in p for p in kw["params"].prompt.split()):
                raise RuntimeError("kaboom")
            return images
        api.on("after_decode", explode)
"""


@pytest.fixture()
def ctx(tmp_path: Path) -> Iterator[AppContext]:
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint(tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1")
    write_extension(tmp_path / "extensions", "probe", manifest("probe"), {"main.py": PROBE})
    write_extension(tmp_path / "extensions", "boom", manifest("boom"), {"main.py": BOOM})
    # root = the repository, so its built-in extensions (extra-samplers) load too
    context = build_context(parse_flags(["--data-dir", str(tmp_path), "--api"]), REPO)
    context.start()
    try:
        yield context
    finally:
        context.close()


def small(**kw: object) -> GenerationParams:
    return GenerationParams(**{"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 3, **kw})


def test_hooks_wrappers_and_routes_act_on_real_jobs(ctx: AppContext) -> None:
    statuses = {e.id: e.status for e in ctx.extensions.list()}
    assert statuses == {
        "probe": "loaded",
        "boom": "loaded",
        "extra-samplers": "loaded",
        "disco-mode": "loaded",
    }

    result = ctx.submit_generation(small(sampler_name="Euler")).wait(120)
    infotext = read_infotext(result.paths[0])
    assert infotext == result.infotexts[0]
    parsed = parse_generation_parameters(infotext)
    assert parsed["Probe"] == "on"
    assert parsed["Prompt"] == "a cat, probed"

    client = TestClient(create_app(ctx))
    calls = client.get("/ext/probe/calls").json()
    assert calls["denoiser"] == 3  # Euler: one guided denoiser call per step
    assert calls["saved"] == [str(result.paths[0])]

    listed = {e["id"]: e for e in client.get("/sdapi/v1/extensions").json()}
    assert listed["probe"]["enabled"] is True and listed["probe"]["status"] == "loaded"
    assert client.get("/ext/nope/calls").status_code == 404


def test_extension_sampler_runs_in_txt2img_and_is_listed(ctx: AppContext) -> None:
    assert "iPNDM" in ctx.samplers.labels()
    result = ctx.submit_generation(small(sampler_name="iPNDM", batch_size=2)).wait(120)
    assert len(result.images) == 2
    assert parse_generation_parameters(result.infotexts[0])["Sampler"] == "iPNDM"
    client = TestClient(create_app(ctx))
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert {"iPNDM", "DEIS", "Res Multistep", "ER SDE"} <= set(names)


def test_failing_hook_fails_its_job_and_disables_the_extension(ctx: AppContext) -> None:
    job = ctx.submit_generation(small(prompt="please explode"))
    with pytest.raises(ExtensionError, match="boom"):
        job.wait(120)
    assert {e.id: e.status for e in ctx.extensions.list()}["boom"] == "failed"
    # the app keeps working, without the broken extension
    again = ctx.submit_generation(small(prompt="please explode")).wait(120)
    assert len(again.images) == 1
    ctx.extensions.disable("probe")
    plain = ctx.submit_generation(small()).wait(120)
    assert "Probe" not in parse_generation_parameters(plain.infotexts[0])


GUIDE = """
    import torch

    seen = {}

    def setup(api):
        api.add_ui_section("txt2img", "Guide", [
            {"name": "strength", "kind": "slider", "default": 0.0, "minimum": 0, "maximum": 1},
        ])

        def factory(model, sampling):
            strength = api.values(sampling.extension_args)["strength"]
            if strength == 0:
                return model
            seen["steps"] = len(sampling.sigmas) - 1
            seen["seeds"] = list(sampling.seeds)

            def guided(x, sigma, **kw):
                with torch.enable_grad():
                    x = x.detach().requires_grad_()
                    x0 = model(x, sigma, **kw)
                    rgb = sampling.decode(x0)
                    approx = sampling.decode_approx(x0)
                    seen["rgb"] = tuple(rgb.shape)
                    seen["approx"] = tuple(approx.shape)
                    grad = torch.autograd.grad(rgb.mean(), x)[0]
                seen["grad_finite"] = bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
                return x0.detach() + strength

            return guided

        api.add_denoiser_wrapper(factory, order=10, with_context=True)

        def job(run):
            done = run.generate({"prompt": "a job", "steps": 2, "width": 64, "height": 64, "seed": 9},
                                extension_args={"guide": {"strength": 0.5}}, folder="guide-images/run1")
            for step in range(1, 4):
                run.report(step, 3)
            return {"paths": [str(p) for p in done.paths], "seeds": list(done.seeds)}

        api.add_api_route("/seen", lambda: {k: list(v) if isinstance(v, tuple) else v for k, v in seen.items()})
        api.add_api_route("/run", lambda: {"job": api.submit_job(job, label="run").id}, methods=("POST",))
"""


@pytest.fixture()
def guide_ctx(tmp_path: Path) -> Iterator[AppContext]:
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    write_tiny_checkpoint(tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1")
    write_extension(
        tmp_path / "extensions", "guide", manifest("guide", facade=">=1.1,<2"), {"main.py": GUIDE}
    )
    context = build_context(parse_flags(["--data-dir", str(tmp_path), "--api"]), tmp_path)
    context.start()
    try:
        yield context
    finally:
        context.close()


def test_context_wrapper_gets_job_values_sigmas_and_differentiable_decoders(guide_ctx: AppContext) -> None:
    client = TestClient(create_app(guide_ctx))
    body = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 4, "sampler_name": "Euler"}
    plain = client.post("/sdapi/v1/txt2img", json=body)
    assert plain.status_code == 200, plain.text
    assert client.get("/ext/guide/seen").json() == {}  # strength 0: the wrapper stays out
    guided = client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"guide": {"args": {"strength": 0.2}}}}
    )
    assert guided.status_code == 200, guided.text
    seen = client.get("/ext/guide/seen").json()
    assert seen == {
        "steps": 3,
        "seeds": [4],
        "rgb": [1, 3, 64, 64],
        "approx": [1, 3, 64, 64],
        "grad_finite": True,
    }
    assert guided.json()["images"][0] != plain.json()["images"][0]
    bad = client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"guide": {"args": {"strenght": 1}}}}
    )
    assert bad.status_code == 422 and "strenght" in bad.text
    unknown = client.post(
        "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"nope": {"args": {"a": 1}}}}
    )
    assert unknown.status_code == 422 and "nope" in unknown.text


def test_extension_job_runs_generation_into_its_own_folder(guide_ctx: AppContext) -> None:
    client = TestClient(create_app(guide_ctx))
    job_id = client.post("/ext/guide/run").json()["job"]
    job = guide_ctx.queue.get(job_id)
    result = job.wait(120)
    paths = [Path(p) for p in result["paths"]]
    assert len(paths) == 1 and paths[0].is_file()
    assert paths[0].parent == guide_ctx.paths.outputs_dir / "guide-images" / "run1"
    assert result["seeds"] == [9]
    assert "a job" in (read_infotext(paths[0]) or "")
    assert client.get("/ext/guide/seen").json()["steps"] == 2
