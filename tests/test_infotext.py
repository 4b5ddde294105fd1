"""Infotext: formatting, parsing real A1111 infotexts, backfills, and the paste mapping.

The REAL_* strings are infotexts written by A1111 (and one by Forge) as quoted in public repositories.
"""

from __future__ import annotations

import pytest

from webui.infotext import (
    format_infotext,
    generation_params,
    infotext_to_params,
    parse_generation_parameters,
    quote,
    split_sampler_and_schedule,
    unquote,
)

# v1.8.0 inpainting ("Only masked", fill), written with an empty prompt.
REAL_V180_INPAINT = (
    "Negative prompt: (painting by bad-artist-anime:0.9), (painting by bad-artist:0.9), watermark, text, "
    "error, blurry, jpeg artifacts, cropped, worst quality, low quality, normal quality, jpeg artifacts, "
    "signature, watermark, username, artist name, (worst quality, low quality:1.4), bad anatomy, watermark, "
    "signature, text, logo\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1068468216, Size: 352x528, Model hash: "
    "cbfba64e66, Model: counterfeitV30_v30, VAE hash: df3c506e51, VAE: kl-f8-anime2.ckpt, Denoising strength: "
    "0.45, Mask blur: 4, Inpaint area: Only masked, Masked area padding: 32, Masked content: fill, Version: "
    "v1.8.0"
)

# v1.5.1 txt2img with hires fix, ADetailer fields and a LoRA.
REAL_V151_HIRES = (
    "breathtaking closeshot photo of ohwx man riding a dinosaur <lora:24gb_settings-000007:1> . award-winning, "
    "professional, highly detailed\n"
    "Negative prompt: deformed, ugly, deformed, noisy, blurry, distorted, grainy\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 4007836056, Size: 1280x720, Model hash: 31e35c80fc, "
    'Model: sd_xl_base_1.0, Denoising strength: 0.5, ADetailer model: face_yolov8n.pt, ADetailer prompt: "ohwx '
    'man <lora:24gb_settings-000007:1>", ADetailer confidence: 0.3, ADetailer dilate/erode: 4, ADetailer mask '
    "blur: 4, ADetailer denoising strength: 0.4, ADetailer inpaint only masked: True, ADetailer inpaint "
    "padding: 32, ADetailer version: 23.7.11, Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "
    '"24gb_settings-000007: f99b38a8f85d", Version: v1.5.1'
)

# v1.6.0 params line (old combined sampler name, hires steps, LoRA and TI hashes).
REAL_V160_PARAMS = (
    "a prompt\n"
    "Steps: 40, Sampler: DPM++ 2M Karras, CFG scale: 8, Seed: 1429876294, Size: 512x512, Model hash: "
    "61bc7001e8, Model: anyhentai_20, Denoising strength: 0.7, Clip skip: 2, Hires upscale: 1.5, Hires steps: "
    '10, Hires upscaler: Latent, Lora hashes: "concept_sunbathing: 7b93421e39bd", TI hashes: "EasyNegativeV2: '
    '339cc9210f70, FastNegativeV2: a7465e7cc2a2, EasyNegativeV2: 339cc9210f70, FastNegativeV2: a7465e7cc2a2", '
    "Version: 1.6.0"
)

# Late 2022: 8-hex model hash, batch fields, blank lines between the parts.
REAL_2022_OLD = (
    "Authentic and detailed face(man:1.2763)(boymasterpiece:1.1025), (best quality:1.1025), (ultra-detailed:"
    "1.1025), (illustration:1.1025), (tousled hair:1.1025), (frill:0.907) , white cutter shirt, (one boy:1.05), "
    "(solo:1.05) chest, detailed wet clothes, empty stare, pants, (flowers:1.05), beautifully detailed sky, "
    "beautifully detailed water, leaves, detailed and beautiful sea\n"
    "\n"
    "Negative prompt: \n"
    "(big breasts:1.2763)(breast:1.1025)}(woman:1.2155)} little girl,(3d:1.1576)(girl:1.629), nsfw, lowres\n"
    "\n"
    "Steps: 40, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1870332858, Size: 512x768, Model hash: 2700c435, "
    "Batch size: 2, Batch pos: 0, Clip skip: 2"
)

# Forge (f2.0.1) params line only: Forge-specific keys after Version.
REAL_FORGE = (
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3158555784, Size: 572x1024, "
    "Model hash: d64c08ec07, Model: divingIllustriousSemi_v10, Denoising strength: 0.7, Clip skip: 2, Hires "
    "Module 1: Use same choices, Hires CFG Scale: 7, Hires upscale: 2, Hires upscaler: Latent, Lora hashes: "
    '"NamieAmuro_for_Diving-Illustrious_Semi-Real_v1: 4a806b3db7ab, eyepatch-bikini-illustriousxl-lora-'
    'nochekaiser: bb10e9ffa412", Version: f2.0.1v1.10.1-previous-665-gae278f79, Module 1: sdxlVAE_sdxlVAE'
)

# v1.10.1 with the separate Schedule type field.
REAL_V1101 = (
    "(8k, RAW photo, highest quality), hyperrealistic, Photo of a traditional young-age romanian man, highly "
    "detailed, cinematic, film grain, action-themed\n"
    "Negative prompt: ((censored) ), ((Asian) ), ((bad anatomy) ), bad hands, three hands\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1170634956, Size: 640x896, "
    "Model hash: 92970aa785, Model: dreamlike-photoreal-2.0, Version: 1.10.1"
)

# ---------------------------------------------------------------- format


def test_quote_follows_a1111_rule() -> None:
    assert quote("Euler a") == "Euler a"
    assert quote(7) == "7"
    assert quote("a, b") == '"a, b"'
    assert quote("x: y") == '"x: y"'
    assert quote('say "hi"\nbye') == '"say \\"hi\\"\\nbye"'
    assert quote({"model": "abc"}) == '{"model": "abc"}'


def test_format_infotext_layout() -> None:
    params = {"Steps": 20, "Sampler": "Euler a", "Face restoration": None, "Tiling": "Tiling"}
    assert (
        format_infotext("a cat\nsecond line", "", params)
        == "a cat\nsecond line\nSteps: 20, Sampler: Euler a, Tiling"
    )
    assert format_infotext("", "blurry", {"Steps": 5}) == "Negative prompt: blurry\nSteps: 5"


def test_generation_params_reproduces_a_v180_inpaint_infotext() -> None:
    params = generation_params(
        steps=20,
        sampler="DPM++ 2M Karras",
        cfg_scale=7.0,
        seed=1068468216,
        width=352,
        height=528,
        model_hash="cbfba64e66",
        model="counterfeitV30_v30",
        vae_hash="df3c506e51",
        vae="kl-f8-anime2.ckpt",
        denoising_strength=0.45,
        mask_blur=4,
        inpaint_area="Only masked",
        masked_area_padding=32,
        masked_content="fill",
        mask_mode="Inpaint masked",
        version="v1.8.0",
    )
    negative = REAL_V180_INPAINT.split("\n")[0][len("Negative prompt: ") :]
    assert format_infotext("", negative, params) == REAL_V180_INPAINT


def test_generation_params_reproduces_a_v151_hires_infotext() -> None:
    prompt, negative, _ = REAL_V151_HIRES.split("\n")
    adetailer = {
        "ADetailer model": "face_yolov8n.pt",
        "ADetailer prompt": "ohwx man <lora:24gb_settings-000007:1>",
        "ADetailer confidence": 0.3,
        "ADetailer dilate/erode": 4,
        "ADetailer mask blur": 4,
        "ADetailer denoising strength": 0.4,
        "ADetailer inpaint only masked": True,
        "ADetailer inpaint padding": 32,
        "ADetailer version": "23.7.11",
    }
    params = generation_params(
        steps=20,
        sampler="Euler a",
        cfg_scale=7,
        seed=4007836056,
        width=1280,
        height=720,
        model_hash="31e35c80fc",
        model="sd_xl_base_1.0",
        denoising_strength=0.5,
        early_extra=adetailer,
        hires_sampler="Euler a",
        hires_upscale=2.0,
        hires_resize=(0, 0),
        hires_steps=0,
        hires_upscaler="Latent",
        lora_hashes={"24gb_settings-000007": "f99b38a8f85d"},
        version="v1.5.1",
    )
    assert format_infotext(prompt, negative[len("Negative prompt: ") :], params) == REAL_V151_HIRES


def test_generation_params_omits_defaults_and_orders_a1111_keys() -> None:
    params = generation_params(
        steps=30,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=6.5,
        seed=5,
        width=832,
        height=1216,
        variation_seed=99,
        variation_seed_strength=0.0,
        seed_resize_from=(0, 0),
        clip_skip=1,
        rng="GPU",
        emphasis="Original",
        hires_resize=(1024, 0),
        hires_upscale=2.0,
        hires_steps=12,
        hires_schedule_type="Exponential",
        ti_hashes={"neg": "abc"},
        extra={"Version": "ignored", "My field": "x"},
        version="v1.10.1",
    )
    assert list(params) == [
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size",
        "Hires schedule type",
        "Hires resize",
        "Hires steps",
        "TI hashes",
        "Version",  # an extension's "Version" key fixes the place, the real version the value (as A1111)
        "My field",
    ]
    assert params["Hires resize"] == "1024x0" and params["Version"] == "v1.10.1"
    with_variation = generation_params(
        steps=1,
        sampler="Euler",
        cfg_scale=7,
        seed=1,
        width=8,
        height=8,
        variation_seed=3,
        variation_seed_strength=0.25,
        seed_resize_from=(512, 768),
        clip_skip=2,
        emphasis="No norm",
    )
    assert [with_variation[k] for k in ("Variation seed", "Variation seed strength", "Seed resize from")] == [
        3,
        0.25,
        "512x768",
    ]
    assert with_variation["Clip skip"] == 2 and with_variation["Emphasis"] == "No norm"


# ---------------------------------------------------------------- parse real infotexts


def test_parse_v180_inpaint() -> None:
    res = parse_generation_parameters(REAL_V180_INPAINT)
    assert res["Prompt"] == ""
    assert res["Negative prompt"].startswith("(painting by bad-artist-anime:0.9), ")
    assert res["Negative prompt"].endswith("signature, text, logo")
    assert (res["Size-1"], res["Size-2"]) == (352, 528)
    assert res["Sampler"] == "DPM++ 2M" and res["Schedule type"] == "Karras"
    assert res["Inpaint area"] == "Only masked" and res["Masked content"] == "fill"
    assert res["Mask blur"] == "4" and res["VAE"] == "kl-f8-anime2.ckpt"
    assert res["Emphasis"] == "Original"
    assert "Old prompt editing timelines" not in res


def test_parse_v151_hires_with_quoted_values() -> None:
    res = parse_generation_parameters(REAL_V151_HIRES)
    assert res["Prompt"].startswith("breathtaking closeshot photo") and res["Prompt"].endswith(
        "highly detailed"
    )
    assert res["Negative prompt"] == "deformed, ugly, deformed, noisy, blurry, distorted, grainy"
    assert res["ADetailer prompt"] == "ohwx man <lora:24gb_settings-000007:1>"
    assert res["ADetailer dilate/erode"] == "4"
    assert res["Lora hashes"] == "24gb_settings-000007: f99b38a8f85d"
    assert res["Hires upscale"] == "2" and res["Hires upscaler"] == "Latent"
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (0, 0)
    assert res["Schedule type"] == "Automatic" and res["Sampler"] == "Euler a"
    assert res["Clip skip"] == "1"


def test_parse_v160_splits_the_combined_sampler_name() -> None:
    res = parse_generation_parameters(REAL_V160_PARAMS)
    assert (res["Sampler"], res["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert res["Hires steps"] == "10" and res["Clip skip"] == "2"
    assert res["TI hashes"].count(", ") == 3
    assert res["Version"] == "1.6.0" and res["Prompt"] == "a prompt"


def test_parse_2022_infotext_with_blank_lines_and_short_hash() -> None:
    res = parse_generation_parameters(REAL_2022_OLD)
    assert res["Prompt"].endswith("detailed and beautiful sea\n")
    assert res["Negative prompt"] == (
        "(big breasts:1.2763)(breast:1.1025)}(woman:1.2155)} little girl,(3d:1.1576)(girl:1.629), nsfw, lowres\n"
    )
    assert res["Model hash"] == "2700c435"
    assert (res["Sampler"], res["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert res["Batch size"] == "2" and res["Batch pos"] == "0"
    assert (res["Size-1"], res["Size-2"]) == (512, 768)


def test_parse_forge_infotext_keeps_unknown_keys() -> None:
    res = parse_generation_parameters(REAL_FORGE)
    assert res["Prompt"] == "" and res["Negative prompt"] == ""
    assert res["Hires Module 1"] == "Use same choices" and res["Module 1"] == "sdxlVAE_sdxlVAE"
    assert res["Lora hashes"].startswith("NamieAmuro_for_Diving-Illustrious_Semi-Real_v1: 4a806b3db7ab, ")
    assert res["Version"] == "f2.0.1v1.10.1-previous-665-gae278f79"
    assert (res["Size-1"], res["Size-2"]) == (572, 1024)


def test_parse_v1101() -> None:
    res = parse_generation_parameters(REAL_V1101)
    assert res["Prompt"].startswith("(8k, RAW photo, highest quality), hyperrealistic")
    assert res["Negative prompt"] == "((censored) ), ((Asian) ), ((bad anatomy) ), bad hands, three hands"
    assert (res["Steps"], res["Sampler"], res["Schedule type"], res["CFG scale"]) == (
        "25",
        "DPM++ 2M",
        "Karras",
        "7",
    )
    assert res["Model"] == "dreamlike-photoreal-2.0" and res["Seed"] == "1170634956"


# ---------------------------------------------------------------- parse rules


def test_last_line_is_params_only_with_three_pairs() -> None:
    res = parse_generation_parameters("a photo\nstyle: cinematic, mood: dark")
    assert res["Prompt"] == "a photo\nstyle: cinematic, mood: dark"
    assert "style" not in res
    res = parse_generation_parameters("a photo\nSteps: 3, Seed: 4, CFG scale: 5")
    assert res["Prompt"] == "a photo" and res["Seed"] == "4"


def test_backfills_and_old_versions() -> None:
    res = parse_generation_parameters("a [cat:dog:0.5]\nSteps: 20, Sampler: Euler, Seed: 1, Version: v1.5.2")
    assert res["Old prompt editing timelines"] is True
    assert res["Emphasis"] == "Original"
    assert res["RNG"] == "GPU" and res["Hires sampler"] == "Use same sampler"
    res = parse_generation_parameters("cat\nSteps: 20, Sampler: Euler, Seed: 1, Version: v1.6.0")
    assert "Old prompt editing timelines" not in res and "Emphasis" not in res
    bare = parse_generation_parameters("cat\nSteps: 20, Sampler: Euler, Seed: 1", backfill=False)
    assert set(bare) == {"Steps", "Sampler", "Seed", "Prompt", "Negative prompt"}


def test_old_hires_fix_first_pass_size() -> None:
    res = parse_generation_parameters("x\nSteps: 20, Size: 1024x768, First pass size: 0x0, Seed: 1")
    # 512*512 pixels at 4:3: scale sqrt(262144/786432) -> 591.2x443.4 -> rounded up to 640x448
    assert (res["Size-1"], res["Size-2"], res["Hires resize-1"], res["Hires resize-2"]) == (
        640,
        448,
        1024,
        768,
    )


def test_hypernet_field_becomes_a_tag() -> None:
    res = parse_generation_parameters("x\nSteps: 20, Hypernet: anime, Hypernet strength: 0.5, Seed: 1")
    assert res["Prompt"] == "x<hypernet:anime:0.5>"


def test_split_sampler_and_schedule() -> None:
    assert split_sampler_and_schedule("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Exponential")
    assert split_sampler_and_schedule("DPM++ 2M SGM Uniform") == ("DPM++ 2M", "SGM Uniform")
    assert split_sampler_and_schedule("Euler a") == ("Euler a", None)
    assert split_sampler_and_schedule("DDIM") == ("DDIM", None)


def test_unquote() -> None:
    assert unquote('"a, b"') == "a, b"
    assert unquote('"broken') == '"broken'
    assert unquote("plain") == "plain"


# ---------------------------------------------------------------- round trips and paste


@pytest.mark.parametrize("text", [REAL_V180_INPAINT, REAL_V151_HIRES, REAL_V1101, REAL_FORGE])
def test_format_parse_format_round_trip(text: str) -> None:
    res = parse_generation_parameters(text, backfill=False)
    prompt, negative = res.pop("Prompt"), res.pop("Negative prompt")
    params: dict[str, object] = {}
    for key, value in res.items():
        if key.endswith("-2"):
            continue
        if key.endswith("-1"):
            params[key[:-2]] = f"{value}x{res[key[:-2] + '-2']}"
        else:
            params[key] = value
    assert format_infotext(str(prompt), str(negative), params) == text


def test_infotext_to_params_for_a_hires_txt2img() -> None:
    params = infotext_to_params(parse_generation_parameters(REAL_V160_PARAMS))
    assert params["prompt"] == "a prompt" and params["negative_prompt"] == ""
    assert (params["steps"], params["sampler_name"], params["scheduler"]) == (40, "DPM++ 2M", "Karras")
    assert (params["cfg_scale"], params["seed"], params["width"], params["height"]) == (
        8.0,
        1429876294,
        512,
        512,
    )
    assert params["enable_hr"] is True
    assert (params["hr_scale"], params["hr_second_pass_steps"], params["hr_upscaler"]) == (1.5, 10, "Latent")
    assert (params["hr_resize_x"], params["hr_resize_y"]) == (0, 0)
    assert params["hr_sampler_name"] == "Use same sampler"
    assert params["clip_skip"] == 2 and params["denoising_strength"] == 0.7
    assert params["override_settings"]["sd_model_checkpoint"] == "anyhentai_20"
    assert params["override_settings"]["CLIP_stop_at_last_layers"] == 2


def test_infotext_to_params_for_inpainting_and_variation() -> None:
    params = infotext_to_params(parse_generation_parameters(REAL_V180_INPAINT))
    assert params["inpaint_full_res"] is True and params["inpaint_full_res_padding"] == 32
    assert params["inpainting_fill"] == 0 and params["mask_blur"] == 4
    assert params["enable_hr"] is False
    assert params["override_settings"]["sd_vae"] == "kl-f8-anime2.ckpt"
    text = "x\nSteps: 20, Seed: 1, Variation seed: 7, Variation seed strength: 0.3, Seed resize from: 640x512, CFG scale: bad"
    params = infotext_to_params(parse_generation_parameters(text))
    assert (params["subseed"], params["subseed_strength"]) == (7, 0.3)
    assert (params["seed_resize_from_w"], params["seed_resize_from_h"]) == (640, 512)
    assert "cfg_scale" not in params


def test_api_round_trip_through_generation_params() -> None:
    params = generation_params(
        steps=28,
        sampler="DPM++ SDE",
        schedule_type="Karras",
        cfg_scale=5.5,
        seed=123,
        width=768,
        height=512,
        model="m",
        denoising_strength=0.35,
        clip_skip=2,
        hires_upscale=1.5,
        hires_steps=8,
        hires_upscaler="4x-UltraSharp",
        hires_prompt="detailed, sharp",
    )
    text = format_infotext("a (red:1.2) fox", "blurry, lowres", params)
    back = infotext_to_params(parse_generation_parameters(text))
    expected = {
        "prompt": "a (red:1.2) fox",
        "negative_prompt": "blurry, lowres",
        "steps": 28,
        "sampler_name": "DPM++ SDE",
        "scheduler": "Karras",
        "cfg_scale": 5.5,
        "seed": 123,
        "width": 768,
        "height": 512,
        "denoising_strength": 0.35,
        "clip_skip": 2,
        "hr_scale": 1.5,
        "hr_second_pass_steps": 8,
        "hr_upscaler": "4x-UltraSharp",
        "hr_prompt": "detailed, sharp",
        "enable_hr": True,
    }
    assert {key: back[key] for key in expected} == expected
    assert back["override_settings"]["emphasis"] == "Original"
