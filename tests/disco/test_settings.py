"""DiscoSettings: Disco's defaults, validation naming the field, JSON and infotext round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

from webui.extensions.api import InvalidParameter
from webui.infotext.format import format_params_line
from webui.infotext.parse import parse_params_line


@pytest.fixture
def settings_cls(disco):
    return disco("settings").DiscoSettings


def test_pixel_defaults_are_disco_notebook_defaults(settings_cls):
    s = settings_cls.defaults("pixel")
    assert s.engine == "pixel"
    assert (s.steps, s.width, s.height) == (250, 1280, 768)
    assert (s.clip_guidance_scale, s.tv_scale, s.range_scale, s.sat_scale) == (5000, 0, 150, 0)
    assert s.cutn_batches == 4
    assert (s.cut_overview, s.cut_innercut) == ("[12]*400+[4]*600", "[4]*400+[12]*600")
    assert (s.cut_ic_pow, s.cut_icgray_p) == ("[1]*1000", "[0.2]*400+[0]*600")
    assert (s.clamp_grad, s.clamp_max, s.eta, s.skip_steps, s.init_scale) == (True, 0.05, 0.8, 10, 1000)
    assert (s.n_batches, s.display_rate, s.intermediate_saves, s.skip_augs) == (50, 50, 0, False)
    assert s.transformation_percent == (0.09,) and s.batch_name == "TimeToDisco"
    assert s.clip_models == ()  # every installed CLIP model (RN50 towers are not supported)
    assert s.text_prompts[0][1] == "yellow color scheme"


def test_latent_defaults_suit_sd_checkpoints(settings_cls):
    s = settings_cls.defaults("latent")
    pixel = settings_cls.defaults("pixel")
    assert s.engine == "latent" and 30 <= s.steps <= 50
    assert s.width % 8 == 0 and s.height % 8 == 0
    assert 0 < s.clip_guidance_scale < pixel.clip_guidance_scale
    assert s.cfg_scale > 1 and s.guidance_decoder == "vae" and 0 <= s.guidance_start < s.guidance_end <= 1
    assert settings_cls.defaults() == s


def test_settings_are_frozen(settings_cls):
    s = settings_cls.defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 10


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stepz": 10}, "stepz"),
        ({"steps": "50"}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"steps": 0}, "steps"),
        ({"clip_guidance_scale": "lots"}, "clip_guidance_scale"),
        ({"clip_guidance_scale": -1}, "clip_guidance_scale"),
        ({"range_scale": float("nan")}, "range_scale"),
        ({"eta": 1.5}, "eta"),
        ({"skip_steps": 40}, "skip_steps"),
        ({"width": 500}, "width"),
        ({"height": 0}, "height"),
        ({"cutn_batches": 0}, "cutn_batches"),
        ({"cut_overview": "[12]*400"}, "cut_overview"),
        ({"cut_innercut": "[4]*400+[12]*600+os.system('x')"}, "cut_innercut"),
        ({"cut_overview": "[0]*1000", "cut_innercut": "[0]*1000"}, "cut_innercut"),
        ({"cut_ic_pow": "[0]*1000"}, "cut_ic_pow"),
        ({"cut_icgray_p": "[1.5]*1000"}, "cut_icgray_p"),
        ({"skip_augs": "no"}, "skip_augs"),
        ({"clamp_max": 0}, "clamp_max"),
        ({"seed": -2}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"intermediate_saves": [5, 40]}, "intermediate_saves"),
        ({"transformation_percent": [1.5]}, "transformation_percent"),
        ({"clip_models": "ViT-B/32"}, "clip_models"),
        ({"clip_models": ["ViT-B/32", "ViT-B/32"]}, "clip_models"),
        ({"sampler": ""}, "sampler"),
        ({"guidance_start": 0.9, "guidance_end": 0.5}, "guidance_start"),
        ({"guide_every": 0}, "guide_every"),
        ({"guidance_decoder": "taesd"}, "guidance_decoder"),
        ({"engine": "quantum"}, "engine"),
        ({"batch_name": "../escape"}, "batch_name"),
        ({"text_prompts": {0: ["a:1", "b:-1"]}}, "text_prompts"),
        ({"text_prompts": {100: ["late start"]}}, "text_prompts"),
        ({"text_prompts": {"zero": ["x"]}}, "text_prompts"),
        ({"text_prompts": {0: "not a list"}}, "text_prompts"),
        ({"text_prompts": {0: [":2"]}}, "text_prompts"),
        ({"text_prompts": {}}, "text_prompts"),
        ({"negative_prompt": None}, "negative_prompt"),
    ],
)
def test_from_dict_rejects_bad_values_naming_the_field(settings_cls, changes, field):
    with pytest.raises(InvalidParameter) as info:
        settings_cls.from_dict(changes)
    assert info.value.field == field
    assert info.value.message


def test_pixel_engine_needs_multiples_of_64(settings_cls):
    with pytest.raises(InvalidParameter) as info:
        settings_cls.from_dict({"width": 520}, engine="pixel")
    assert info.value.field == "width" and "64" in info.value.message
    assert settings_cls.from_dict({"width": 520}).width == 520  # latent: multiples of 8


def test_from_dict_fills_engine_defaults_and_normalises(settings_cls):
    s = settings_cls.from_dict(
        {
            "text_prompts": {"0": ["a castle:2", " style: ukiyo-e "], "100": ["a forest"]},
            "steps": 30.0,
            "clip_models": ["ViT-B/32"],
            "transformation_percent": 0.2,
            "intermediate_saves": [12, 5],
            "width_height": [640, 384],
        },
        engine="pixel",
    )
    assert s.engine == "pixel" and s.clip_guidance_scale == 5000
    assert s.text_prompts == {0: ("a castle:2", "style: ukiyo-e"), 100: ("a forest",)}
    assert s.steps == 30 and type(s.steps) is int
    assert s.clip_models == ("ViT-B/32",) and s.transformation_percent == (0.2,)
    assert s.intermediate_saves == (5, 12) and (s.width, s.height) == (640, 384)


def test_engine_argument_must_agree_with_the_data(settings_cls):
    with pytest.raises(InvalidParameter) as info:
        settings_cls.from_dict({"engine": "latent"}, engine="pixel")
    assert info.value.field == "engine"


def test_image_prompts_count_in_the_weight_sum(settings_cls):
    s = settings_cls.from_dict({"text_prompts": {0: ["a:1", "b:-1"]}, "image_prompts": {0: ["C:/x.png:1"]}})
    assert s.image_prompts == {0: ("C:/x.png:1",)}


def test_replace_validates(settings_cls):
    s = settings_cls.defaults()
    assert s.replace(steps=20).steps == 20
    with pytest.raises(InvalidParameter):
        s.replace(steps=0)
    with pytest.raises(InvalidParameter):
        s.replace(bogus=1)


def test_cut_preset(settings_cls, disco):
    s = settings_cls.defaults().with_cut_preset("fast")
    fast = disco("schedules").SCHEDULE_PRESETS["fast"]
    assert (s.cut_overview, s.cut_innercut, s.cut_ic_pow, s.cut_icgray_p) == tuple(fast.values())
    with pytest.raises(InvalidParameter):
        s.with_cut_preset("ultra")


def _changed(settings_cls):
    return settings_cls.defaults("latent").replace(
        text_prompts={0: ["a castle, at dusk:2", "style: ukiyo-e"], 50: ["a forest:-0.5", "fog"]},
        image_prompts={0: ["C:/prompts/ref.png:0.5"]},
        clip_guidance_scale=250.0,
        cut_overview="[8]*500+[2]*500",
        seed=1234,
        use_vertical_symmetry=True,
        transformation_percent=[0.1, 0.5],
        negative_prompt='blurry, "text"',
        init_image="inits/a b.png",
        intermediate_saves=[3, 9],
    )


def test_json_round_trip(settings_cls, tmp_path):
    s = _changed(settings_cls)
    data = s.to_dict()
    assert json.loads(s.to_json()) == data
    assert data["text_prompts"] == {
        "0": ["a castle, at dusk:2", "style: ukiyo-e"],
        "50": ["a forest:-0.5", "fog"],
    }
    assert settings_cls.from_json(s.to_json()) == s
    path = s.save_json(tmp_path / "TimeToDisco(0)_settings.json")
    assert json.loads(path.read_text(encoding="utf-8"))["clip_guidance_scale"] == 250.0
    assert settings_cls.load_json(path) == s
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(InvalidParameter):
            settings_cls.from_json(bad)


def test_infotext_value_holds_only_non_defaults_and_round_trips(settings_cls):
    assert json.loads(settings_cls.defaults("latent").infotext_value()) == {"engine": "latent"}
    assert json.loads(settings_cls.defaults("pixel").infotext_value()) == {"engine": "pixel"}
    s = _changed(settings_cls)
    value = s.infotext_value()
    assert "\n" not in value
    assert set(json.loads(value)) == {
        "engine",
        "text_prompts",
        "image_prompts",
        "clip_guidance_scale",
        "cut_overview",
        "seed",
        "use_vertical_symmetry",
        "transformation_percent",
        "negative_prompt",
        "init_image",
        "intermediate_saves",
    }
    assert settings_cls.from_infotext_value(value) == s
    assert settings_cls.from_infotext_value(json.dumps(value)) == s  # still quoted


def test_infotext_value_survives_the_a1111_params_line(settings_cls):
    s = _changed(settings_cls)
    line = format_params_line({"Steps": 40, "Disco": s.infotext_value(), "Seed": 1234})
    parsed = parse_params_line(line)
    assert parsed["Steps"] == "40" and parsed["Seed"] == "1234"
    assert settings_cls.from_infotext_value(parsed["Disco"]) == s


def test_intermediate_save_steps(settings_cls):
    s = settings_cls.defaults("latent")
    assert s.intermediate_save_steps() == ()
    assert s.replace(intermediate_saves=3).intermediate_save_steps() == (10, 20, 30)
    pixel = settings_cls.defaults("pixel").replace(steps=110, skip_steps=10, intermediate_saves=4)
    assert pixel.intermediate_save_steps() == (30, 50, 70, 90)
    assert s.replace(intermediate_saves=[7, 2]).intermediate_save_steps() == (2, 7)
