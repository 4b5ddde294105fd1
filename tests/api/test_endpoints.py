"""The listing, settings, progress, PNG info and extras endpoints over HTTP."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from tests.api.conftest import SMALL, ContextFactory, decode_b64, png_b64
from webui.context import AppContext
from webui.engine.images import LATENT_UPSCALE_MODES
from webui.server import create_app

API = "/sdapi/v1"


def test_samplers_and_schedulers_list_the_registries(client: TestClient, shared_context: AppContext) -> None:
    samplers = client.get(f"{API}/samplers").json()
    by_name = {s["name"]: s for s in samplers}
    assert [s["name"] for s in samplers] == list(shared_context.samplers.labels())
    assert "k_dpmpp_2m" in by_name["DPM++ 2M"]["aliases"]
    assert by_name["DPM++ 2M"]["options"]["scheduler"] == "karras"
    assert set(samplers[0]) == {"name", "aliases", "options"}
    schedulers = client.get(f"{API}/schedulers").json()
    karras = next(s for s in schedulers if s["name"] == "karras")
    assert karras == {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    }
    assert schedulers[0]["name"] == "automatic"


def test_upscalers_latent_modes_models_vaes(client: TestClient, checkpoint_dir) -> None:
    names = [u["name"] for u in client.get(f"{API}/upscalers").json()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert [m["name"] for m in client.get(f"{API}/latent-upscale-modes").json()] == list(LATENT_UPSCALE_MODES)
    models = client.get(f"{API}/sd-models").json()
    assert sorted(m["model_name"] for m in models) == ["tiny_a", "tiny_b"]
    for m in models:
        assert set(m) == {"title", "model_name", "hash", "sha256", "filename", "config"}
        assert m["filename"] == str(checkpoint_dir / f"{m['model_name']}.safetensors")
        assert m["title"].startswith(f"{m['model_name']}.safetensors")
    assert client.get(f"{API}/sd-vae").json() == []


def test_static_listings(client: TestClient) -> None:
    assert client.get(f"{API}/scripts").json() == {"txt2img": [], "img2img": []}
    assert client.get(f"{API}/script-info").json() == []
    assert client.get(f"{API}/extensions").json() == []
    assert client.get(f"{API}/loras").json() == []
    assert client.get(f"{API}/embeddings").json() == {"loaded": {}, "skipped": {}}
    memory = client.get(f"{API}/memory").json()
    assert memory["ram"]["total"] > 0 and memory["ram"]["used"] > 0
    assert "cuda" in memory


def test_cmd_flags_redact_passwords(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui", "--api-auth", "me:secret", "--listen")
    with TestClient(create_app(ctx)) as c:
        flags = c.get(f"{API}/cmd-flags", auth=("me", "secret")).json()
    assert flags["nowebui"] is True and flags["listen"] is True
    assert flags["api_auth"] == "<redacted>"
    assert "secret" not in json.dumps(flags)


def test_options_get_and_post_validate_types(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui")
    with TestClient(create_app(ctx)) as c:
        options = c.get(f"{API}/options").json()
        assert options["CLIP_stop_at_last_layers"] == 1
        assert options["samples_format"] == "png"
        r = c.post(f"{API}/options", json={"CLIP_stop_at_last_layers": 2, "eta_ancestral": 1})
        assert r.status_code == 200, r.text
        assert r.json() is None
        assert ctx.options.get("CLIP_stop_at_last_layers") == 2
        assert ctx.options.get("eta_ancestral") == 1.0
        assert json.loads(ctx.paths.config_file.read_text())["CLIP_stop_at_last_layers"] == 2
        bad = c.post(f"{API}/options", json={"CLIP_stop_at_last_layers": "two"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "CLIP_stop_at_last_layers"]
        assert c.post(f"{API}/options", json={"samples_save": 1}).status_code == 422
        unknown = c.post(f"{API}/options", json={"no_such_option": 1})
        assert unknown.status_code == 422 and "samples_save" in unknown.json()["errors"]
        missing = c.post(f"{API}/options", json={"sd_model_checkpoint": "nope"})
        assert missing.status_code == 404
        assert "tiny_a" in missing.json()["errors"] and "nope" in missing.json()["errors"]
        # CLIP skip from the settings reaches the infotext of the next job
        r = c.post(f"{API}/txt2img", json={"prompt": "x", **SMALL})
        assert "Clip skip: 2" in json.loads(r.json()["info"])["infotexts"][0]


def test_options_report_the_loaded_checkpoint_and_refresh_unload_reload(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui")
    with TestClient(create_app(ctx)) as c:
        assert c.post(f"{API}/options", json={"sd_model_checkpoint": "tiny_b"}).status_code == 200
        options = c.get(f"{API}/options").json()
        assert options["sd_model_checkpoint"].startswith("tiny_b.safetensors [")
        assert options["sd_checkpoint_hash"] == ctx.models.current.checkpoint.sha256
        assert c.post(f"{API}/refresh-checkpoints").status_code == 200
        assert c.post(f"{API}/refresh-vae").status_code == 200
        assert c.post(f"{API}/unload-checkpoint").status_code == 200
        assert c.post(f"{API}/reload-checkpoint").status_code == 200
        assert ctx.models.current.checkpoint.name == "tiny_b.safetensors"
        r = c.post(f"{API}/txt2img", json={"prompt": "x", **SMALL})
        assert json.loads(r.json()["info"])["sd_model_name"] == "tiny_b"


def test_override_settings_apply_to_one_job_and_are_restored(make_context: ContextFactory) -> None:
    ctx = make_context("--nowebui")
    with TestClient(create_app(ctx)) as c:
        c.post(f"{API}/options", json={"sd_model_checkpoint": "tiny_a"})
        body = {
            "prompt": "x",
            "override_settings": {"sd_model_checkpoint": "tiny_b", "CLIP_stop_at_last_layers": 2},
        }
        info = json.loads(c.post(f"{API}/txt2img", json={**body, **SMALL}).json()["info"])
        assert info["sd_model_name"] == "tiny_b"
        assert "Clip skip: 2" in info["infotexts"][0]
        assert ctx.models.current.checkpoint.name == "tiny_a.safetensors"  # switched back
        assert ctx.options.get("CLIP_stop_at_last_layers") == 1
        after = json.loads(c.post(f"{API}/txt2img", json={"prompt": "x", **SMALL}).json()["info"])
        assert after["sd_model_name"] == "tiny_a" and "Clip skip" not in after["infotexts"][0]
        kept = {**body, "override_settings_restore_afterwards": False, **SMALL}
        assert c.post(f"{API}/txt2img", json=kept).status_code == 200
        assert ctx.models.current.checkpoint.name == "tiny_b.safetensors"
        assert ctx.options.get("CLIP_stop_at_last_layers") == 2


def test_png_info_reads_parameters_and_other_chunks(client: TestClient) -> None:
    text = "a cat\nNegative prompt: dog\nSteps: 12, Sampler: Euler a, CFG scale: 6, Seed: 42, Size: 512x768"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    info.add_text("Software", "test")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    import base64

    r = client.post(f"{API}/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["info"] == text
    assert data["items"] == {"Software": "test"}
    assert data["parameters"]["Seed"] == "42"
    assert data["parameters"]["Size-2"] == 768
    assert data["parameters"]["Negative prompt"] == "dog"
    assert client.post(f"{API}/png-info", json={"image": ""}).json() == {
        "info": "",
        "items": {},
        "parameters": {},
    }
    plain = client.post(f"{API}/png-info", json={"image": png_b64(Image.new("RGB", (4, 4)))}).json()
    assert plain["info"] == "" and plain["parameters"] == {}


def test_extras_upscale_single_and_batch(client: TestClient) -> None:
    image = Image.new("RGB", (16, 8), (10, 200, 10))
    r = client.post(
        f"{API}/extra-single-image",
        json={"image": png_b64(image), "upscaling_resize": 2, "upscaler_1": "Nearest"},
    )
    assert r.status_code == 200, r.text
    out = decode_b64(r.json()["image"])
    assert out.size == (32, 16) and out.convert("RGB").getpixel((5, 5)) == (10, 200, 10)
    assert "Postprocess upscale by: 2" in r.json()["html_info"]
    batch = {
        "imageList": [
            {"data": png_b64(image), "name": "a.png"},
            {"data": png_b64(image, prefix=True), "name": "b.png"},
        ],
        "resize_mode": 1,
        "upscaling_resize_w": 20,
        "upscaling_resize_h": 20,
        "upscaler_1": "Lanczos",
        "gfpgan_visibility": 0.5,
    }
    r = client.post(f"{API}/extra-batch-images", json=batch)
    assert r.status_code == 200, r.text
    assert [decode_b64(i).size for i in r.json()["images"]] == [(20, 20), (20, 20)]
    assert "gfpgan_visibility" in r.json()["warnings"][0]
    bad = client.post(f"{API}/extra-single-image", json={"image": png_b64(image), "upscaler_1": "ESRGAN"})
    assert bad.status_code == 422 and "Lanczos" in bad.json()["errors"]


def test_progress_when_idle_and_interrupt_skip_answer(client: TestClient) -> None:
    p = client.get(f"{API}/progress").json()
    assert p["progress"] == 0 and p["eta_relative"] == 0
    assert p["state"]["job_count"] == 0 and p["current_image"] is None
    assert client.post(f"{API}/interrupt").json() == {}
    assert client.post(f"{API}/skip").json() == {}
    assert client.get(f"{API}/queue").json() == {"running": 0, "waiting": 0, "jobs": []}
    r = client.delete(f"{API}/queue/nope")
    assert r.status_code == 404 and "nope" in r.json()["errors"]


def test_openapi_documents_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/sdapi/v1/txt2img" in spec["paths"]
    props = spec["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert props["steps"]["default"] == 50 and props["sampler_index"]["default"] == "Euler"
    assert client.get("/docs").status_code == 200
