"""Architecture detection on stripped full-size state dicts (keys and shapes of real SD checkpoints).

Expected configs are those published with the real models (runwayml SD1.5, stabilityai SD2.1 / SDXL
base 1.0 / SDXL refiner 1.0); a second check rebuilds the diffusers/transformers modules from the
detected configs on the ``meta`` device and compares every parameter shape with the real classes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tests.factories import make_meta_components, stripped_state_dict, write_header_only_safetensors
from webui.models.checkpoint_files import read_header
from webui.models.detection import detect
from webui.models.discovery import CheckpointInfo
from webui.models.errors import CorruptCheckpoint, UnknownArchitecture
from webui.models.loader import inspect_checkpoint

VARIANTS = {
    "sd1": ("sd1", False),
    "sd2": ("sd2", False),
    "sdxl": ("sdxl", False),
    "sdxl_refiner": ("sdxl_refiner", False),
    "sd1_inpaint": ("sd1", True),
    "sd2_inpaint": ("sd2", True),
    "sdxl_inpaint": ("sdxl", True),
}

SD_DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
SD_UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
CLIP_L = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
CLIP_L |= {"hidden_act": "quick_gelu", "vocab_size": 49408, "max_position_embeddings": 77}

REAL_UNET = {
    "sd1": {
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 768,
        "down_block_types": SD_DOWN,
        "up_block_types": SD_UP,
        "use_linear_projection": False,
        "sample_size": 64,
    },
    "sd2": {
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024,
        "down_block_types": SD_DOWN,
        "up_block_types": SD_UP,
        "use_linear_projection": True,
    },
    "sdxl": {
        "block_out_channels": [320, 640, 1280],
        "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20],
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 2, 10],
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
        "use_linear_projection": True,
        "sample_size": 128,
    },
    "sdxl_refiner": {
        "block_out_channels": [384, 768, 1536, 1536],
        "attention_head_dim": [6, 12, 24, 24],
        "cross_attention_dim": 1280,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "transformer_layers_per_block": 4,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2560,
        "use_linear_projection": True,
    },
}
REAL_TEXT = {
    "sd1": [CLIP_L],
    "sd2": [{"hidden_size": 1024, "num_hidden_layers": 23, "num_attention_heads": 16, "hidden_act": "gelu"}],
    "sdxl": [
        CLIP_L,
        {"hidden_size": 1280, "num_hidden_layers": 32, "projection_dim": 1280, "intermediate_size": 5120},
    ],
    "sdxl_refiner": [{"hidden_size": 1280, "num_hidden_layers": 32, "projection_dim": 1280}],
}
LABELS = {
    "sd1": "SD1.x",
    "sd2": "SD2.x",
    "sdxl": "SDXL",
    "sdxl_refiner": "SDXL refiner",
    "sd1_inpaint": "SD1.x inpainting",
    "sd2_inpaint": "SD2.x inpainting",
    "sdxl_inpaint": "SDXL inpainting",
}


@pytest.fixture(scope="module")
def stripped() -> dict[str, dict[str, tuple[int, ...]]]:
    """Keys and shapes of every full-size variant, built once on the meta device."""
    return {name: stripped_state_dict(fam, inpaint=inp) for name, (fam, inp) in VARIANTS.items()}


def _subset(config: dict, expected: dict) -> dict:
    return {
        k: (list(config[k]) if isinstance(config.get(k), list | tuple) else config.get(k)) for k in expected
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_family_label_and_inpaint(stripped: dict, variant: str) -> None:
    family, inpaint = VARIANTS[variant]
    spec = detect(stripped[variant])
    assert spec.family == family
    assert spec.label == LABELS[variant]
    assert spec.inpaint is inpaint
    assert spec.unet["in_channels"] == (9 if inpaint else 4)
    assert spec.unet["out_channels"] == 4
    assert spec.prediction_type == "epsilon"
    assert spec.prediction_source == "default"
    assert spec.is_sdxl is family.startswith("sdxl")


@pytest.mark.parametrize("family", list(REAL_UNET))
def test_unet_config_equals_real_diffusers_config(stripped: dict, family: str) -> None:
    spec = detect(stripped[family])
    assert _subset(dict(spec.unet), REAL_UNET[family]) == REAL_UNET[family]


@pytest.mark.parametrize("family", list(REAL_TEXT))
def test_text_encoder_configs_equal_real_ones(stripped: dict, family: str) -> None:
    spec = detect(stripped[family])
    assert len(spec.text_encoders) == len(REAL_TEXT[family])
    for encoder, expected in zip(spec.text_encoders, REAL_TEXT[family], strict=True):
        assert _subset(dict(encoder.config), expected) == expected
    # the pooled, projected encoder is the last one of SDXL base and refiner
    assert [e.with_projection for e in spec.text_encoders][-1] is family.startswith("sdxl")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_vae_config_equals_real_one(stripped: dict, family: str) -> None:
    vae = detect(stripped[family]).vae
    assert vae is not None
    assert list(vae["block_out_channels"]) == [128, 256, 512, 512]
    assert (vae["layers_per_block"], vae["latent_channels"]) == (2, 4)
    assert vae["scaling_factor"] == (0.13025 if family.startswith("sdxl") else 0.18215)


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_detected_configs_rebuild_identical_modules(stripped: dict, variant: str) -> None:
    family, inpaint = VARIANTS[variant]
    spec = detect(stripped[variant])
    real = make_meta_components(family, inpaint=inpaint)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(spec.unet))
        vae = AutoencoderKL.from_config(dict(spec.vae or {}))
        encoders = [
            (CLIPTextModelWithProjection if e.with_projection else CLIPTextModel)(CLIPTextConfig(**e.config))
            for e in spec.text_encoders
        ]
    assert _meta_shapes(unet) == _meta_shapes(real["unet"])
    assert _meta_shapes(vae) == _meta_shapes(real["vae"])
    real_encoders = [real[k] for k in ("text_encoder", "text_encoder_2") if k in real]
    for built, expected in zip(encoders, real_encoders, strict=True):
        assert _meta_shapes(built) == _meta_shapes(expected)


def test_sd2_sample_size_follows_prediction_type(stripped: dict) -> None:
    eps = detect(stripped["sd2"])
    v = detect(stripped["sd2"], {"modelspec.prediction_type": "v"})
    assert (eps.unet["sample_size"], eps.native_size) == (64, 512)
    assert (v.unet["sample_size"], v.native_size) == (96, 768)
    assert v.unet["upcast_attention"] is True


@pytest.mark.parametrize(
    ("metadata", "extra_key", "expected", "source"),
    [
        ({"modelspec.prediction_type": "v"}, None, "v_prediction", "header"),
        ({"modelspec.prediction_type": "epsilon"}, None, "epsilon", "header"),
        ({"ss_v_parameterization": "true"}, None, "v_prediction", "header"),
        ({}, "v_pred", "v_prediction", "header"),
        ({}, None, "epsilon", "default"),
    ],
)
def test_sd2_prediction_markers(
    stripped: dict, metadata: dict, extra_key: str | None, expected: str, source: str
) -> None:
    shapes = dict(stripped["sd2"])
    if extra_key:
        shapes[extra_key] = (0,)
    spec = detect(shapes, metadata)
    assert (spec.prediction_type, spec.prediction_source) == (expected, source)
    assert spec.label == ("SD2.x v-prediction" if expected == "v_prediction" else "SD2.x")


def test_sdxl_v_pred_and_ztsnr_keys() -> None:
    shapes = stripped_state_dict("sdxl", prediction_type="v")
    assert "v_pred" in shapes
    spec = detect(shapes)
    assert (spec.label, spec.zero_terminal_snr) == ("SDXL v-prediction", False)
    assert detect({**shapes, "ztsnr": (0,)}).zero_terminal_snr is True


@pytest.mark.parametrize(("parameterization", "expected"), [("v", "v_prediction"), ("eps", "epsilon")])
def test_yaml_beside_checkpoint_sets_prediction(
    tmp_path: Path, stripped: dict, parameterization: str, expected: str
) -> None:
    path = tmp_path / "sd21.safetensors"
    # the yaml wins over the header metadata, as A1111's per-checkpoint config does
    other = "epsilon" if parameterization == "v" else "v"
    write_header_only_safetensors(path, stripped["sd2"], metadata={"modelspec.prediction_type": other})
    (tmp_path / "sd21.yaml").write_text(
        f"model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
        f"  params:\n    parameterization: {parameterization}\n    linear_start: 0.00085\n",
        encoding="utf-8",
    )
    spec, header = inspect_checkpoint(CheckpointInfo(path=path, name=path.name))
    assert (spec.prediction_type, spec.prediction_source) == (expected, "yaml")
    assert header is not None and header.metadata == {"modelspec.prediction_type": other}


def test_header_detection_of_multi_gigabyte_file_is_fast_and_reads_no_tensor_data(
    tmp_path: Path, stripped: dict
) -> None:
    path = tmp_path / "sdxl_base.safetensors"
    size = write_header_only_safetensors(path, stripped["sdxl"], dtype="F16")
    assert size > 5 * 1024**3  # about 6.9 GB of (sparse) fp16 tensors
    with open(path, "rb") as f:
        header_bytes = 8 + int.from_bytes(f.read(8), "little")
    io = Path("/proc/self/io")
    before = _rchar(io)
    started = time.perf_counter()
    spec = detect(read_header(path).shapes)
    elapsed = time.perf_counter() - started
    read = _rchar(io) - before if before is not None else None
    print(f"header {header_bytes} B, detection {elapsed * 1000:.1f} ms, bytes read {read}")
    assert spec.label == "SDXL"
    assert elapsed < 0.5
    if read is not None:
        assert read < header_bytes + 64 * 1024  # the header, never the tensor data


def _rchar(io: Path) -> int | None:
    try:
        fields = dict(line.split(": ") for line in io.read_text().splitlines())
        return int(fields["rchar"])
    except (OSError, KeyError, ValueError):
        return None


@pytest.mark.parametrize(
    ("shapes", "needle"),
    [
        (
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320, 1, 1),
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": (3072, 4),
            },
            "LoRA file, not a checkpoint: put it in models/Lora",
        ),
        (
            {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)},
            "VAE file, not a checkpoint: put it in models/VAE",
        ),
        ({"foo": (3,), "bar.weight": (2, 2)}, "no Stable Diffusion UNet weights"),
    ],
)
def test_non_checkpoints_are_unknown_architecture(shapes: dict, needle: str) -> None:
    with pytest.raises(UnknownArchitecture, match=needle):
        detect(shapes)


def test_unet_only_file_is_unknown_architecture(stripped: dict) -> None:
    unet_only = {k: v for k, v in stripped["sd1"].items() if k.startswith("model.diffusion_model.")}
    with pytest.raises(UnknownArchitecture, match=r"no text encoder weights \(cross-attention width 768\)"):
        detect(unet_only)


def test_incomplete_unet_is_corrupt(stripped: dict) -> None:
    shapes = {k: v for k, v in stripped["sd1"].items() if k != "model.diffusion_model.out.2.weight"}
    with pytest.raises(CorruptCheckpoint, match=r"model\.diffusion_model\.out\.2\.weight"):
        detect(shapes)


def test_mismatched_text_encoder_width_is_rejected(stripped: dict) -> None:
    shapes = dict(stripped["sd1"])
    shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = (49408, 1024)
    with pytest.raises(UnknownArchitecture, match="cross-attention width 768 does not match"):
        detect(shapes)
