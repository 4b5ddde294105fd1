"""Weights-free diffusers config folders generated from a :class:`ModelSpec`.

diffusers' single-file loaders need a local folder with each component's config (``config=<folder>``);
we write one per distinct architecture under ``cache/model-configs/`` so nothing is fetched from a hub.
The folder is a complete diffusers layout (``model_index.json``, tokenizers, scheduler), so plain
diffusers pipelines can also load our checkpoints offline (the benchmark does).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from webui.models.detection import ModelSpec
from webui.models.tokenizer_files import write_clip_tokenizer

PIPELINE_CLASSES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline",
}


def _dump(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def scheduler_config(spec: ModelSpec) -> dict[str, Any]:
    """An Euler discrete scheduler config matching the model's training noise schedule."""
    return {
        "_class_name": "EulerDiscreteScheduler",
        **spec.scheduler,
        "prediction_type": spec.prediction_type,
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "rescale_betas_zero_snr": spec.zero_terminal_snr,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    }


def tokenizer_dir(root: Path, pad_token: str) -> Path:
    """The shared tokenizer folder for a padding convention (CLIP-L or OpenCLIP)."""
    name = "clip-l" if pad_token != "!" else "open-clip"
    return write_clip_tokenizer(root / "tokenizers" / name, pad_token=pad_token)


def _component_names(spec: ModelSpec) -> list[tuple[str, str, Any]]:
    """(text encoder folder, tokenizer folder, encoder spec) in pipeline order."""
    if spec.family == "sdxl_refiner":
        return [("text_encoder_2", "tokenizer_2", spec.text_encoders[0])]
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")]
    return [(te, tok, enc) for (te, tok), enc in zip(names, spec.text_encoders, strict=False)]


def config_key(spec: ModelSpec) -> str:
    """A short hash that identifies the architecture (same configs -> same folder)."""
    payload = {
        "unet": spec.unet,
        "vae": spec.vae,
        "te": [dict(e.config) | {"proj": e.with_projection} for e in spec.text_encoders],
        "sched": scheduler_config(spec),
        "family": spec.family,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_config_folder(root: Path, spec: ModelSpec, vae_config: dict[str, Any] | None = None) -> Path:
    """Write (once) and return the diffusers config folder for ``spec`` under ``root``."""
    vae = vae_config or spec.vae
    key = config_key(spec) + (
        ""
        if vae == spec.vae
        else "-" + hashlib.sha256(json.dumps(vae, sort_keys=True).encode()).hexdigest()[:8]
    )
    folder = root / f"{spec.family}-{key}"
    if (folder / "model_index.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        index: dict[str, Any] = {
            "_class_name": PIPELINE_CLASSES[spec.family],
            "_diffusers_version": "0.42.1",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        }
        _dump(tmp / "unet" / "config.json", dict(spec.unet))
        if vae is not None:
            _dump(tmp / "vae" / "config.json", dict(vae))
        _dump(tmp / "scheduler" / "scheduler_config.json", scheduler_config(spec))
        for te_name, tok_name, enc in _component_names(spec):
            arch = "CLIPTextModelWithProjection" if enc.with_projection else "CLIPTextModel"
            _dump(
                tmp / te_name / "config.json",
                {**enc.config, "architectures": [arch], "model_type": "clip_text_model"},
            )
            shutil.copytree(tokenizer_dir(root, enc.pad_token), tmp / tok_name)
            index[te_name] = ["transformers", arch]
            index[tok_name] = ["transformers", "CLIPTokenizer"]
        if spec.family in ("sd1", "sd2"):
            index |= {
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            }
        elif spec.family == "sdxl":
            index |= {"force_zeros_for_empty_prompt": True}
        else:
            index |= {
                "text_encoder": [None, None],
                "tokenizer": [None, None],
                "requires_aesthetics_score": True,
            }
        _dump(tmp / "model_index.json", index)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
