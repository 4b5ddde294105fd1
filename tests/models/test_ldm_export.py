"""Export to the single-file layout, checked against diffusers' own converters and real-file facts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    SD_2_TEXT_ENCODER_KEYS_TO_IGNORE,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    create_diffusers_clip_model_from_ldm,
    infer_diffusers_model_type,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from tests.factories import (
    TINY_CONFIGS,
    make_meta_components,
    make_tiny_components,
    stripped_state_dict,
    write_header_only_safetensors,
    write_tiny_checkpoint,
    write_tiny_diffusers_folder,
)
from webui.models.ldm_export import (
    FAMILIES,
    blank_open_clip_block,
    export_single_file,
    open_clip_to_ldm,
    single_file_state_dict,
    unet_to_ldm,
)

OPEN_CLIP_PREFIXES = {
    "sd2": "cond_stage_model.model.",
    "sdxl": "conditioner.embedders.1.model.",
    "sdxl_refiner": "conditioner.embedders.0.model.",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, dict]]:
    """Per family: the single file, a diffusers folder with the same configs, and the source components."""
    root = tmp_path_factory.mktemp("ldm_export")
    result = {}
    for family in FAMILIES:
        checkpoint = root / f"{family}.safetensors"
        components = write_tiny_checkpoint(checkpoint, family, seed=3)
        folder = root / family
        write_tiny_diffusers_folder(folder, family, seed=3)
        result[family] = (checkpoint, folder, components)
    return result


def _without_text_model(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix("text_model."): tensor for key, tensor in state_dict.items()}


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    unequal = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert unequal == []


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_converters_restore_every_tensor(written, family: str) -> None:
    checkpoint, _, components = written[family]
    state_dict = load_file(checkpoint)
    unet, vae = components["unet"], components["vae"]
    _assert_same_tensors(convert_ldm_unet_checkpoint(state_dict, unet.config), unet.state_dict())
    _assert_same_tensors(convert_ldm_vae_checkpoint(state_dict, vae.config), vae.state_dict())

    if family in ("sd1", "sdxl"):
        clip = _without_text_model(convert_ldm_clip_checkpoint(state_dict))
        position_ids = clip.pop("embeddings.position_ids")
        assert torch.equal(position_ids, torch.arange(77)[None])
        _assert_same_tensors(clip, components["text_encoder"].state_dict())
    if family != "sd1":
        encoder = components["text_encoder" if family == "sd2" else "text_encoder_2"]
        converted = convert_open_clip_checkpoint(encoder, state_dict, prefix=OPEN_CLIP_PREFIXES[family])
        if family == "sd2":
            # the extra (unused) 24th-style block comes back as one layer too many; loaders drop it
            layers = encoder.config.num_hidden_layers
            extra = {key for key in converted if key.startswith(f"text_model.encoder.layers.{layers}.")}
            assert len(extra) == 16
            converted = {key: value for key, value in converted.items() if key not in extra}
            converted = _without_text_model(converted)
        _assert_same_tensors(converted, encoder.state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_from_single_file_gives_the_same_outputs(written, family: str) -> None:
    checkpoint, folder, components = written[family]
    generator = torch.Generator().manual_seed(0)
    unet_config = TINY_CONFIGS[family]["unet"]
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 5, unet_config["cross_attention_dim"], generator=generator)
    extra = {}
    if family.startswith("sdxl"):
        time_ids = 6 if family == "sdxl" else 5
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 128, generator=generator),
            "time_ids": torch.randn(1, time_ids, generator=generator),
        }

    unet = UNet2DConditionModel.from_single_file(str(checkpoint), config=str(folder), subfolder="unet")
    with torch.no_grad():
        expected = components["unet"](latents, 500, context, **extra).sample
        actual = unet(latents, 500, context, **extra).sample
    # weights are bit-identical (test above); mmap-backed tensors may take another SIMD path
    assert expected.abs().mean() > 0.01
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)

    vae = AutoencoderKL.from_single_file(str(checkpoint), config=str(folder), subfolder="vae")
    with torch.no_grad():
        decoded = vae.decode(latents).sample
        torch.testing.assert_close(decoded, components["vae"].decode(latents).sample, rtol=1e-5, atol=1e-5)

    state_dict = load_file(checkpoint)
    tokens = torch.tensor([[49406, 320, 1125, 539, 49407, 0, 0]])
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        if name not in components:
            continue
        loaded = create_diffusers_clip_model_from_ldm(
            cls, state_dict, subfolder=name, config=str(folder), local_files_only=True
        )
        with torch.no_grad():
            want, got = components[name](tokens), loaded(tokens)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)


def _open_clip_reference(
    weights: dict[str, torch.Tensor], prefix: str, tokens: torch.Tensor, blocks: int, heads: int
) -> torch.Tensor:
    """OpenCLIP's text tower written with torch.nn primitives that read the fused ``in_proj`` layout."""
    length = tokens.shape[1]
    x = weights[prefix + "token_embedding.weight"][tokens] + weights[prefix + "positional_embedding"][:length]
    width = x.shape[-1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for index in range(blocks):
        block = f"{prefix}transformer.resblocks.{index}."
        attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attention.load_state_dict(
            {name: weights[block + "attn." + name] for name in attention.state_dict()}, strict=True
        )
        norm = torch.nn.functional.layer_norm
        h = norm(x, (width,), weights[block + "ln_1.weight"], weights[block + "ln_1.bias"])
        x = x + attention(h, h, h, attn_mask=causal, need_weights=False)[0]
        h = norm(x, (width,), weights[block + "ln_2.weight"], weights[block + "ln_2.bias"])
        h = torch.nn.functional.linear(
            h, weights[block + "mlp.c_fc.weight"], weights[block + "mlp.c_fc.bias"]
        )
        h = torch.nn.functional.gelu(h)
        x = x + torch.nn.functional.linear(
            h, weights[block + "mlp.c_proj.weight"], weights[block + "mlp.c_proj.bias"]
        )
    return torch.nn.functional.layer_norm(
        x, (width,), weights[prefix + "ln_final.weight"], weights[prefix + "ln_final.bias"]
    )


def test_open_clip_layout_computes_what_the_hf_encoder_computes() -> None:
    tokens = torch.tensor([[49406, 320, 1125, 539, 49407, 0, 0, 0]])
    sdxl = make_tiny_components("sdxl", seed=5)["text_encoder_2"]
    weights = open_clip_to_ldm(sdxl.state_dict(), "m.")
    with torch.no_grad():
        hidden = _open_clip_reference(weights, "m.", tokens, blocks=2, heads=2)
        pooled = hidden[0, 4] @ weights["m.text_projection"]
        output = sdxl(tokens, output_hidden_states=True)
    torch.testing.assert_close(hidden, output.last_hidden_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, output.text_embeds[0], rtol=1e-4, atol=1e-5)

    # SD2 runs all but the last of the file's blocks (the "penultimate" layer), then ln_final.
    sd2 = make_tiny_components("sd2", seed=6)["text_encoder"]
    extra = blank_open_clip_block(64, 256, generator=torch.Generator().manual_seed(1))
    weights = open_clip_to_ldm(sd2.state_dict(), "c.", extra_final_layer=extra)
    assert "c.transformer.resblocks.2.attn.in_proj_weight" in weights
    with torch.no_grad():
        hidden = _open_clip_reference(weights, "c.", tokens, blocks=2, heads=1)
        torch.testing.assert_close(hidden, sd2(tokens).last_hidden_state, rtol=1e-4, atol=1e-5)


def test_vae_attention_is_stored_as_1x1_convolutions(written) -> None:
    checkpoint, _, components = written["sd1"]
    state_dict = load_file(checkpoint)
    for coder in ("encoder", "decoder"):
        for name in ("q", "k", "v", "proj_out"):
            weight = state_dict[f"first_stage_model.{coder}.mid.attn_1.{name}.weight"]
            assert weight.shape == (64, 64, 1, 1)
        assert state_dict[f"first_stage_model.{coder}.mid.attn_1.norm.weight"].shape == (64,)
    query = components["vae"].state_dict()["decoder.mid_block.attentions.0.to_q.weight"]
    assert torch.equal(state_dict["first_stage_model.decoder.mid.attn_1.q.weight"][:, :, 0, 0], query)
    # the decoder's levels are numbered from the lowest resolution in the original layout
    upsampler = components["vae"].state_dict()["decoder.up_blocks.0.upsamplers.0.conv.weight"]
    assert torch.equal(state_dict["first_stage_model.decoder.up.1.upsample.conv.weight"], upsampler)


def test_ckpt_format_holds_the_same_state_dict(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "a.safetensors", "sd1", seed=2)
    write_tiny_checkpoint(tmp_path / "a.ckpt", "sd1", seed=2, fmt="ckpt")
    expected = load_file(tmp_path / "a.safetensors")
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert list(loaded) == ["state_dict"]
    _assert_same_tensors(loaded["state_dict"], expected)


def test_prediction_markers(tmp_path: Path) -> None:
    write_tiny_checkpoint(tmp_path / "xl_v.safetensors", "sdxl", prediction_type="v")
    write_tiny_checkpoint(tmp_path / "xl_eps.safetensors", "sdxl")
    write_tiny_checkpoint(tmp_path / "sd2_v.safetensors", "sd2", prediction_type="v")
    with safe_open(tmp_path / "xl_v.safetensors", "pt") as handle:
        assert handle.metadata() == {"modelspec.prediction_type": "v"}
        assert handle.get_tensor("v_pred").shape == (0,)
        assert "ztsnr" not in list(handle.keys())
    with safe_open(tmp_path / "xl_eps.safetensors", "pt") as handle:
        assert not (handle.metadata() or {}).get("modelspec.prediction_type")
        assert "v_pred" not in list(handle.keys())
    with safe_open(tmp_path / "sd2_v.safetensors", "pt") as handle:
        assert handle.metadata() == {"modelspec.prediction_type": "v"}
        assert "v_pred" not in list(handle.keys())

    parts = make_tiny_components("sdxl")
    path = export_single_file(
        tmp_path / "ztsnr.safetensors",
        "sdxl",
        parts["unet"],
        parts["vae"],
        parts["text_encoder"],
        parts["text_encoder_2"],
        metadata={"modelspec.title": "tiny"},
        dtype=torch.float16,
        prediction_type="v",
        zero_terminal_snr=True,
    )
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"modelspec.title": "tiny", "modelspec.prediction_type": "v"}
        assert {"v_pred", "ztsnr"} <= set(handle.keys())
        assert handle.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
        ids = handle.get_tensor("conditioner.embedders.0.transformer.text_model.embeddings.position_ids")
        assert ids.dtype == torch.int64


def test_sd2_export_appends_one_block_by_default() -> None:
    parts = make_tiny_components("sd2")
    state_dict = single_file_state_dict("sd2", parts["unet"], parts["vae"], parts["text_encoder"])
    blocks = {key.split(".")[4] for key in state_dict if ".resblocks." in key}
    assert blocks == {"0", "1", "2"}
    assert torch.equal(
        state_dict["cond_stage_model.model.transformer.resblocks.2.ln_1.weight"], torch.ones(64)
    )
    assert state_dict["cond_stage_model.model.text_projection"].shape == (64, 64)


def test_invalid_arguments_name_the_valid_values(tmp_path: Path) -> None:
    parts = make_tiny_components("sd1")
    with pytest.raises(ValueError, match=r"family.*sd1, sd2, sdxl, sdxl_refiner"):
        single_file_state_dict("sd3", parts["unet"], parts["vae"], parts["text_encoder"])
    with pytest.raises(ValueError, match=r"prediction_type.*epsilon, v"):
        single_file_state_dict("sd1", parts["unet"], parts["vae"], parts["text_encoder"], prediction_type="x")
    with pytest.raises(ValueError, match="text_encoder_2"):
        single_file_state_dict("sdxl", parts["unet"], parts["vae"], parts["text_encoder"])
    with pytest.raises(ValueError, match="lora_up"):
        unet_to_ldm({"lora_up.weight": torch.zeros(1)}, parts["unet"].config)
    with pytest.raises(ValueError, match="extra_final_layer"):
        open_clip_to_ldm(
            parts["text_encoder"].state_dict(), "p.", extra_final_layer={"ln_1.weight": torch.ones(64)}
        )
    with pytest.raises(ValueError, match=r"fmt.*safetensors, ckpt"):
        write_tiny_checkpoint(tmp_path / "x", "sd1", fmt="bin")


@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_layout_converts_back_to_the_diffusers_shapes(family: str) -> None:
    parts = make_meta_components(family)
    state_dict = single_file_state_dict(
        family, parts["unet"], parts["vae"], parts.get("text_encoder"), parts.get("text_encoder_2")
    )
    assert all(tensor.is_meta for tensor in state_dict.values())

    def shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
        return {key: tuple(tensor.shape) for key, tensor in tensors.items()}

    unet = convert_ldm_unet_checkpoint(state_dict, parts["unet"].config)
    assert shapes(unet) == shapes(parts["unet"].state_dict())
    vae = convert_ldm_vae_checkpoint(state_dict, parts["vae"].config)
    assert shapes(vae) == shapes(parts["vae"].state_dict())
    expected_type = {"sd1": "v1", "sd2": "v2", "sdxl": "xl_base", "sdxl_refiner": "xl_refiner"}[family]
    assert infer_diffusers_model_type(state_dict) == expected_type


def test_full_size_layouts_match_real_files() -> None:
    sd1 = stripped_state_dict("sd1")
    assert len(sd1) == 1131  # v1-5-pruned-emaonly: UNet 686 + VAE 248 + CLIP-L 197
    assert sd1["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert sd1["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert sd1["cond_stage_model.transformer.text_model.embeddings.position_ids"] == (1, 77)
    assert sd1["model.diffusion_model.output_blocks.11.0.skip_connection.weight"] == (320, 640, 1, 1)
    assert sd1["model.diffusion_model.input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert sd1["first_stage_model.decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert sd1["first_stage_model.quant_conv.weight"] == (8, 8, 1, 1)

    sd2 = stripped_state_dict("sd2")
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320)
    assert sd2["model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
    assert sd2["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert "cond_stage_model.model.transformer.resblocks.24.ln_1.weight" not in sd2
    assert set(SD_2_TEXT_ENCODER_KEYS_TO_IGNORE) <= set(sd2)
    assert sd2["cond_stage_model.model.positional_embedding"] == (77, 1024)

    sdxl = stripped_state_dict("sdxl")
    assert len(sdxl) == 2515  # sd_xl_base_1.0
    assert sdxl["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    assert sdxl["conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_fc.weight"] == (5120, 1280)
    assert sdxl["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] == (768,)
    assert sdxl["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert sdxl["model.diffusion_model.input_blocks.4.1.proj_in.weight"] == (640, 640)
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" not in sdxl
    assert sdxl["model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight"] == (1280, 2048)

    refiner = stripped_state_dict("sdxl_refiner")
    assert refiner["model.diffusion_model.label_emb.0.0.weight"] == (1536, 2560)
    assert refiner["model.diffusion_model.input_blocks.0.0.weight"] == (384, 4, 3, 3)
    assert refiner["conditioner.embedders.0.model.text_projection"] == (1280, 1280)
    assert not any(key.startswith("conditioner.embedders.1.") for key in refiner)
    assert stripped_state_dict("sdxl", prediction_type="v")["v_pred"] == (0,)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_inpainting_layouts_have_nine_input_channels(family: str) -> None:
    full = stripped_state_dict(family, inpaint=True)
    assert full["model.diffusion_model.input_blocks.0.0.weight"][1] == 9
    tiny = stripped_state_dict(family, inpaint=True, full_size=False)
    first = TINY_CONFIGS[family]["unet"]["block_out_channels"][0]
    assert tiny["model.diffusion_model.input_blocks.0.0.weight"] == (first, 9, 3, 3)
    assert len(tiny) == len(stripped_state_dict(family, full_size=False))


def test_tiny_stripped_layout_matches_a_written_checkpoint(written) -> None:
    checkpoint, _, _ = written["sdxl"]
    with safe_open(checkpoint, "pt") as handle:
        on_disk = {key: tuple(handle.get_slice(key).get_shape()) for key in list(handle.keys())}
    assert on_disk == stripped_state_dict("sdxl", full_size=False)


def test_header_only_file_reads_back_with_full_size(tmp_path: Path) -> None:
    shapes = stripped_state_dict("sdxl")
    path = tmp_path / "big.safetensors"
    size = write_header_only_safetensors(path, shapes, metadata={"modelspec.architecture": "x"})
    elements = sum(torch.Size(shape).numel() for shape in shapes.values())
    assert elements > 3_000_000_000  # SDXL base: about 3.5 billion parameters
    assert os.path.getsize(path) == size
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
    assert size == 8 + header_length + 2 * elements
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"modelspec.architecture": "x"}
        assert {key: tuple(handle.get_slice(key).get_shape()) for key in list(handle.keys())} == shapes
        bias = handle.get_tensor("model.diffusion_model.out.2.bias")
    assert torch.equal(bias, torch.zeros(4, dtype=torch.float16))
