"""txt2img / img2img over HTTP: fields, defaults, infotext, styles, warnings, images, errors."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from PIL import Image

from tests.api.conftest import SMALL, decode_b64, png_b64
from webui.infotext.parse import parse_generation_parameters


def test_txt2img_returns_pngs_with_infotext_and_a1111_info(client: TestClient) -> None:
    body = {"prompt": "a red cube", "negative_prompt": "blur", "seed": 1234, "batch_size": 2, **SMALL}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert set(data) == {"images", "parameters", "info"}
    info = json.loads(data["info"])
    assert info["all_seeds"] == [1234, 1235]
    assert info["all_prompts"] == ["a red cube", "a red cube"]
    assert info["sd_model_name"] in ("tiny_a", "tiny_b")
    assert info["warnings"] == []
    assert len(data["images"]) == 2  # save_images is False by default, so no grid
    for k, encoded in enumerate(data["images"]):
        image = decode_b64(encoded)
        assert image.size == (64, 64)
        parsed = parse_generation_parameters(image.info["parameters"])
        assert parsed["Seed"] == str(1234 + k)
        assert parsed["Prompt"] == "a red cube"
        assert parsed["Negative prompt"] == "blur"
        assert image.info["parameters"] == info["infotexts"][k]
    # sampler_index is the legacy default ("Euler") when no sampler_name is sent
    assert info["sampler_name"] == "Euler"
    assert data["parameters"]["prompt"] == "a red cube"
    assert data["parameters"]["seed"] == 1234


def test_same_seed_gives_the_same_image_and_send_images_false_gives_none(client: TestClient) -> None:
    body = {"prompt": "x", "seed": 7, "sampler_name": "DPM++ 2M", "scheduler": "karras", **SMALL}
    a = client.post("/sdapi/v1/txt2img", json=body).json()
    b = client.post("/sdapi/v1/txt2img", json=body).json()
    assert decode_b64(a["images"][0]).tobytes() == decode_b64(b["images"][0]).tobytes()
    info = json.loads(a["info"])
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras")
    none = client.post("/sdapi/v1/txt2img", json={**body, "send_images": False}).json()
    assert none["images"] == []
    assert json.loads(none["info"])["all_seeds"] == [7]


def test_unsupported_fields_are_reported_not_ignored(client: TestClient) -> None:
    body = {
        "prompt": "x",
        "seed": 1,
        "restore_faces": True,
        "tiling": True,
        "script_name": "x/y/z plot",
        "alwayson_scripts": {"ControlNet": {"args": [{"enabled": True}]}},
        "some_future_field": 3,
        **SMALL,
    }
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    warnings = json.loads(r.json()["info"])["warnings"]
    text = "\n".join(warnings)
    for name in (
        "restore_faces",
        "tiling",
        "script_name",
        "alwayson_scripts",
        "ControlNet",
        "some_future_field",
    ):
        assert name in text
    # the defaults that clients such as webuiapi always send are not reported
    quiet = {
        "prompt": "x",
        "restore_faces": False,
        "tiling": False,
        "alwayson_scripts": {},
        "script_args": [],
        **SMALL,
    }
    assert json.loads(client.post("/sdapi/v1/txt2img", json=quiet).json()["info"])["warnings"] == []


def test_infotext_fills_unset_fields_and_explicit_fields_win(client: TestClient) -> None:
    infotext = (
        "a lighthouse\nNegative prompt: fog\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 99, Size: 64x64"
    )
    r = client.post("/sdapi/v1/txt2img", json={"infotext": infotext, "seed": 5})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["prompt"] == "a lighthouse"
    assert info["negative_prompt"] == "fog"
    assert info["steps"] == 3
    assert info["sampler_name"] == "Euler a"
    assert info["cfg_scale"] == 5.0
    assert info["all_seeds"] == [5]  # sent explicitly
    assert (info["width"], info["height"]) == (64, 64)


def test_styles_are_applied_from_styles_csv(client: TestClient, shared_context) -> None:
    shared_context.paths.styles_file.write_text(
        'name,prompt,negative_prompt\nphoto,"photo of {prompt}, 35mm",cartoon\nsharp,sharp focus,\n',
        encoding="utf-8",
    )
    r = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "a dog", "negative_prompt": "ugly", "styles": ["photo", "sharp"], **SMALL},
    )
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_prompts"] == ["photo of a dog, 35mm, sharp focus"]
    assert info["all_negative_prompts"] == ["ugly, cartoon"]
    assert info["styles"] == ["photo", "sharp"]
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "styles": ["nope"], **SMALL})
    assert bad.status_code == 422
    assert "photo" in bad.json()["errors"] and "nope" in bad.json()["errors"]
    styles = client.get("/sdapi/v1/prompt-styles").json()
    assert styles[0] == {"name": "photo", "prompt": "photo of {prompt}, 35mm", "negative_prompt": "cartoon"}
    assert [s["name"] for s in styles] == ["photo", "sharp"]


def test_img2img_with_mask_keeps_unmasked_pixels_and_accepts_data_urls(client: TestClient) -> None:
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half only
    body = {
        "init_images": [png_b64(init, prefix=True)],
        "mask": png_b64(mask),
        "mask_blur": 2,
        "inpainting_fill": 1,
        "inpaint_full_res": False,
        "denoising_strength": 0.9,
        "prompt": "a blue sky",
        "seed": 3,
        **SMALL,
    }
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    out = decode_b64(data["images"][0]).convert("RGB")
    assert out.size == (64, 64)
    assert out.getpixel((60, 10)) == (200, 30, 30)  # outside the mask: the original pixel
    assert out.getpixel((10, 10)) != (200, 30, 30)
    info = json.loads(data["info"])
    assert "Mask blur: 2" in info["infotexts"][0]
    assert data["parameters"]["init_images"] is None  # not echoed unless include_init_images
    echoed = client.post("/sdapi/v1/img2img", json={**body, "include_init_images": True}).json()
    assert echoed["parameters"]["init_images"] == body["init_images"]


def test_validation_errors_answer_422_with_a1111_shape_and_field_path(client: TestClient) -> None:
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": "wide"})
    assert r.status_code == 422
    err = r.json()
    assert set(err) == {"error", "detail", "body", "errors"}
    assert err["detail"][0]["loc"] == ["body", "width"]
    assert "body.width" in err["errors"]

    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 65, "height": 64, "steps": 2})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "width"]
    assert "multiple of 8" in r.json()["errors"]

    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Eulr", **SMALL})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "sampler_name"]
    assert "Euler a" in r.json()["errors"]  # lists the valid ones

    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": ["not base64 at all!"], **SMALL})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "init_images", "0"]

    r = client.post("/sdapi/v1/img2img", json={"prompt": "x", **SMALL})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "init_images"]

    r = client.post("/sdapi/v1/txt2img", json={"override_settings": {"no_such_setting": 1}, **SMALL})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "override_settings", "no_such_setting"]
    assert "CLIP_stop_at_last_layers" in r.json()["errors"]

    r = client.post("/sdapi/v1/txt2img", json={"override_settings": {"sd_model_checkpoint": "nope"}, **SMALL})
    assert r.status_code == 422
    assert "tiny_a" in r.json()["errors"]


def test_save_images_writes_files_and_returns_the_grid_first(client: TestClient, shared_context) -> None:
    before = set(shared_context.paths.outputs_dir.rglob("*.png"))
    body = {"prompt": "saved", "seed": 21, "batch_size": 2, "save_images": True, **SMALL}
    data = client.post("/sdapi/v1/txt2img", json=body).json()
    info = json.loads(data["info"])
    assert len(data["images"]) == 3 and info["index_of_first_image"] == 1
    assert decode_b64(data["images"][0]).size == (128, 64)  # 2 images side by side
    new = set(shared_context.paths.outputs_dir.rglob("*.png")) - before
    assert len(new) == 3  # two samples and the grid
    assert len(set(shared_context.paths.outputs_dir.rglob("*.png"))) == len(before) + 3
    unsaved = client.post("/sdapi/v1/txt2img", json={**body, "save_images": False}).json()
    assert len(unsaved["images"]) == 2
    assert len(set(shared_context.paths.outputs_dir.rglob("*.png"))) == len(before) + 3


def test_infotext_model_becomes_an_override_and_a_missing_one_a_warning(client: TestClient) -> None:
    base = "a boat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 4, Size: 64x64"
    info = json.loads(
        client.post("/sdapi/v1/txt2img", json={"infotext": base + ", Model: tiny_b"}).json()["info"]
    )
    assert info["sd_model_name"] == "tiny_b"
    r = client.post("/sdapi/v1/txt2img", json={"infotext": base + ", Model: gone_model"})
    assert r.status_code == 200, r.text
    warnings = json.loads(r.json()["info"])["warnings"]
    assert any("gone_model" in w for w in warnings)
