"""The UI's pure logic, without a browser: form values -> request, paste, masks, ui-config, settings."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from webui.app.form_params import (
    generation_params,
    looks_like_infotext,
    mask_from_layers,
    pasted_values,
    scaled_size,
)
from webui.app.progress import format_eta, progress_html
from webui.app.settings_spec import SETTINGS, coerce, spec_for
from webui.app.theme import page_script
from webui.app.tokens import token_count_text
from webui.app.ui_state import UiState
from webui.engine.errors import InvalidParameter
from webui.infotext.format import format_infotext

SAMPLERS = ("Euler", "Euler a", "DPM++ 2M")
SCHEDULES = ("Automatic", "Karras", "Uniform")
UPSCALERS = ("Latent", "Lanczos", "Nearest")


def test_generation_params_converts_form_values() -> None:
    p = generation_params("txt2img", {
        "prompt": "cat", "steps": 12.0, "width": 64.0, "height": 128, "cfg_scale": 5, "seed": 7.0, "n_iter": 2,
        "batch_size": 3, "seed_extras": False, "subseed": 9, "subseed_strength": 0.5, "enable_hr": False,
        "denoising_strength": 0.4,
    })  # fmt: skip
    assert (p.steps, p.width, p.height, p.seed, p.n_iter, p.batch_size) == (12, 64, 128, 7, 2, 3)
    assert p.cfg_scale == 5.0 and p.subseed_strength == 0.0 and p.seed_resize_from_w == -1
    assert p.denoising_strength is None  # only meaningful with hires. fix


def test_generation_params_img2img_choices_and_errors() -> None:
    p = generation_params("img2img", {
        "resize_mode": "Crop and resize", "inpainting_fill": "latent noise", "inpainting_mask_invert": "Inpaint not masked",
        "inpaint_full_res": "Only masked", "mask_blur": 0, "inpaint_full_res_padding": 16,
    })  # fmt: skip
    assert (p.resize_mode, p.inpainting_fill, p.inpainting_mask_invert, p.inpaint_full_res) == (1, 2, 1, True)
    with pytest.raises(InvalidParameter) as e:
        generation_params("txt2img", {"steps": 2.5})
    assert e.value.field == "steps"
    with pytest.raises(InvalidParameter) as e:
        generation_params("img2img", {"resize_mode": "Stretch"})
    assert e.value.field == "resize_mode" and "Just resize" in e.value.message
    assert scaled_size(100, 60, 1.5) == (152, 88)


def test_paste_fills_fields_and_drops_unknown_choices() -> None:
    text = format_infotext("a dog", "ugly", {
        "Steps": 9, "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": 4.5, "Seed": 11, "Size": "96x64",
        "Denoising strength": 0.3, "Hires upscale": 2, "Hires upscaler": "Some ESRGAN", "Variation seed": 5,
        "Variation seed strength": 0.25,
    })  # fmt: skip
    assert looks_like_infotext(text) and not looks_like_infotext("just a prompt")
    values = pasted_values(text, SAMPLERS, SCHEDULES, UPSCALERS)
    assert values["prompt"] == "a dog" and values["negative_prompt"] == "ugly"
    assert (values["steps"], values["sampler_name"], values["scheduler"], values["cfg_scale"]) == (
        9,
        "Euler a",
        "Karras",
        4.5,
    )
    assert (values["seed"], values["width"], values["height"]) == (11, 96, 64)
    assert values["enable_hr"] is True and values["hr_scale"] == 2.0 and values["denoising_strength"] == 0.3
    assert "hr_upscaler" not in values  # not installed here: the form keeps its choice
    assert values["seed_extras"] is True and values["subseed"] == 5 and values["subseed_strength"] == 0.25


def test_mask_from_layers_marks_painted_pixels() -> None:
    background = Image.new("RGB", (8, 6), "gray")
    layer = Image.new("RGBA", (8, 6), (0, 0, 0, 0))
    layer.putpixel((2, 3), (255, 255, 255, 40))
    mask = mask_from_layers(background, [layer, None])
    assert mask is not None and mask.size == (8, 6)
    assert mask.getpixel((2, 3)) == 255 and mask.getpixel((0, 0)) == 0
    assert sum(1 for v in mask.getdata() if v) == 1
    assert mask_from_layers(background, [Image.new("RGBA", (8, 6), (0, 0, 0, 0))]) is None


def test_ui_state_round_trip_and_type_guard(tmp_path: Path) -> None:
    file = tmp_path / "ui-config.json"
    file.write_text(
        json.dumps({"txt2img/Width/value": "wide", "txt2img/Prompt/value": "x"}), encoding="utf-8"
    )
    state = UiState(file)
    assert state.get("txt2img", "Width", 512) == 512  # a value of the wrong type is ignored
    state.remember("txt2img", {"Width": 768, "Styles": ["a", "b"], "Image": object()})
    again = UiState(file)
    assert again.get("txt2img", "Width", 512) == 768
    assert again.get("txt2img", "Styles", []) == ["a", "b"]
    assert again.get("txt2img", "Prompt", "") == "x"
    assert "txt2img/Image/value" not in again.as_dict()


def test_token_counter_uses_loaded_tokenizer() -> None:
    def tokenizer(texts, **_kwargs):
        return {"input_ids": [[1] * len(t.split()) for t in texts]}

    tokenizer.pad_token_id = 49407  # type: ignore[attr-defined]
    models = SimpleNamespace(current=SimpleNamespace(tokenizers=(tokenizer,)))
    assert token_count_text(models, "one two three") == "3/75"
    assert token_count_text(models, " ".join(["w"] * 80)) == "80/150"
    assert token_count_text(models, "a AND b c d e") == "4/75"  # the longest AND part
    assert token_count_text(SimpleNamespace(current=None), "x") == "?/75"


def test_settings_coerce_to_option_types() -> None:
    assert coerce(spec_for("jpeg_quality"), 55.0, 80) == 55
    assert coerce(spec_for("samples_save"), 1, True) is True
    assert coerce(spec_for("eta_ddim"), 1, 0.0) == 1.0
    assert len({s.key for s in SETTINGS}) == len(SETTINGS)


def test_progress_text_and_theme_script() -> None:
    assert format_eta(65) == "ETA 01:05" and format_eta(None) == "" and format_eta(3725) == "ETA 1:02:05"
    job = SimpleNamespace(
        id="j", status=SimpleNamespace(value="running"), token=SimpleNamespace(interrupted=False),
        progress=SimpleNamespace(job_no=1, job_count=2, sampling_step=5, sampling_steps=10, fraction=0.75,
                                 eta_seconds=4.0, textinfo=None),
    )  # fmt: skip
    html = progress_html(job, SimpleNamespace(snapshot=list))
    assert (
        "Batch 2/2" in html and "Step 5/10" in html and "ETA 00:04" in html and 'data-fraction="75.0"' in html
    )
    assert '"dark"' in page_script("dark") and "Enter" in page_script("dark") and "null" in page_script(None)


def test_extension_settings_and_controls_reach_the_settings_tab_and_the_request(tmp_path: Path) -> None:
    from webui.app.settings import all_settings, apply_settings, current_values
    from webui.config.options import Options
    from webui.extensions.contributions import SettingSpec as ExtensionSetting

    added = (
        ExtensionSetting("ext", "jump_scale", 0.5, "Jump scale", "Jump", None, 0.0, 1.0, 0.05),
        ExtensionSetting("ext", "jump_mode", "soft", "Jump mode", "Jump", ("soft", "hard")),
        ExtensionSetting("ext", "jump_on", True, "Jump on", "Jump"),
    )
    options = Options(tmp_path / "config.json")
    ui = SimpleNamespace(
        ctx=SimpleNamespace(extensions=SimpleNamespace(settings=lambda: added), options=options)
    )
    specs = all_settings(ui)
    mine = {s.key: s for s in specs[len(SETTINGS) :]}
    assert {k: (s.kind, s.section, s.default) for k, s in mine.items()} == {
        "jump_scale": ("slider", "Jump", 0.5),
        "jump_mode": ("radio", "Jump", "soft"),
        "jump_on": ("checkbox", "Jump", True),
    }
    values = current_values(ui, specs)
    assert values[len(SETTINGS) :] == [0.5, "soft", True]
    values[-3:] = [0.75, "hard", False]
    assert "jump_scale, jump_mode, jump_on" in apply_settings(ui, values, specs)
    assert json.loads((tmp_path / "config.json").read_text())["jump_scale"] == 0.75
    # extension controls in a tab's form become the job's extension_args, keyed by name
    p = generation_params("txt2img", {"prompt": "x", "ext:jump:strength": 0.25, "ext:jump:mode": "hard",
                                      "ext:jump:steps": 3.0})  # fmt: skip
    assert p.extension_args == {"jump": {"strength": 0.25, "mode": "hard", "steps": 3}}
