"""CLIP models for guidance: discovery in models/clip, offline loading of transformers folders, OpenAI
files (plain and TorchScript) and OpenCLIP state dicts, safety and error cases. Tiny models built here."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from tests.models.conftest import cpu_policy, make_paths
from webui.models.clip_models import (
    OPENAI_MEAN,
    OPENAI_STD,
    ClipModelEntry,
    discover_clip_models,
    find_clip_model,
    load_clip_model,
)
from webui.models.errors import CorruptCheckpoint, ModelNotFound, UnknownArchitecture, UnsafeCheckpoint
from webui.models.manager import ModelManager
from webui.models.tokenizer_files import write_clip_tokenizer

IMAGE = 32
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def tiny_clip(act: str = "quick_gelu", context: int = 77, seed: int = 0) -> CLIPModel:
    """A tiny CLIP: vision 64 wide (1 head of 64), text 128 wide (2 heads of 64), as OpenAI's convention."""
    torch.manual_seed(seed)
    text = {
        "vocab_size": 49408, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": context, "hidden_act": act,
        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
    }  # fmt: skip
    vision = {
        "image_size": IMAGE, "patch_size": 8, "hidden_size": 64, "intermediate_size": 192,
        "num_hidden_layers": 2, "num_attention_heads": 1, "hidden_act": act,
    }  # fmt: skip
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():  # non-trivial norms and biases, so that a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def to_openai(model: CLIPModel) -> dict[str, torch.Tensor]:
    """The inverse mapping: a transformers CLIPModel's weights under OpenAI CLIP's names."""
    sd = model.state_dict()
    out = {
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t(),
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t(),
        "logit_scale": sd["logit_scale"],
    }
    for tower, prefix in (("vision_model", "visual."), ("text_model", "")):
        for i in range(2):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                qkv = [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
                out[f"{dst}attn.out_proj.{kind}"] = sd[f"{src}self_attn.out_proj.{kind}"]
                out[f"{dst}ln_1.{kind}"] = sd[f"{src}layer_norm1.{kind}"]
                out[f"{dst}ln_2.{kind}"] = sd[f"{src}layer_norm2.{kind}"]
                out[f"{dst}mlp.c_fc.{kind}"] = sd[f"{src}mlp.fc1.{kind}"]
                out[f"{dst}mlp.c_proj.{kind}"] = sd[f"{src}mlp.fc2.{kind}"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


class _Node(torch.nn.Module):
    """A scriptable module that only holds attributes (to write TorchScript archives like OpenAI's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` as a TorchScript archive whose module tree has OpenAI CLIP's attribute names."""
    root = _Node()
    for key, tensor in state.items():
        node = root
        *parents, leaf = key.split(".")
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _Node())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(tensor.clone(), requires_grad=False))
    root.transformer.resblocks.get_submodule("0").attn_mask = torch.full((77, 77), float("-inf")).triu(1)
    root.input_resolution = IMAGE  # type: ignore[assignment]
    torch.jit.save(torch.jit.script(root), str(path))


def reference(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD):
    """Image and text features of ``model`` itself, through transformers' own feature functions."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=(pixels - m) / s)
        text = model.get_text_features(input_ids=ids)
    pooled = [x if isinstance(x, torch.Tensor) else x.pooler_output for x in (image, text)]
    return pooled[0], pooled[1]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer") / "clip-l")


@pytest.fixture(scope="module")
def source() -> CLIPModel:
    return tiny_clip()


@pytest.fixture()
def pixels() -> torch.Tensor:
    return torch.rand(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))


TEXTS = ["a photo of a cat", "a watercolor painting of a lighthouse at dusk"]


def check_same(loaded, model: CLIPModel, pixels: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> None:
    ids = loaded.tokenize(TEXTS)
    ref_image, ref_text = reference(model, pixels, ids, mean, std)
    image = loaded.encode_image(pixels)
    text = loaded.encode_text(TEXTS)
    assert image.shape == (2, 32) and text.shape == (2, 32)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(text, ref_text, atol=1e-5, rtol=0)


def test_transformers_folder_discovered_and_loaded(tmp_path: Path, tokenizer_folder: Path, pixels) -> None:
    model = tiny_clip(context=32)
    folder = tmp_path / "models" / "clip" / "tiny-hf"
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copytree(tokenizer_folder, folder, dirs_exist_ok=True)
    (tmp_path / "models" / "clip" / "README.md").write_text("not a model")

    entries = discover_clip_models(tmp_path / "models")
    assert entries == [ClipModelEntry("tiny-hf", folder, "transformers")]
    loaded = load_clip_model(entries[0], tokenizer_dir=tmp_path / "unused-tokenizer")
    assert not (tmp_path / "unused-tokenizer").exists()  # the folder's own tokenizer was used
    assert (loaded.name, loaded.image_size, loaded.context_length, loaded.embed_dim) == (
        "tiny-hf",
        IMAGE,
        32,
        32,
    )
    check_same(loaded, model, pixels)
    # context length from the model: long texts are cut to 32 tokens and still end with EOS
    ids = loaded.tokenize(["cat " * 60])
    assert ids.shape == (1, 32) and ids[0, 0] == 49406 and ids[0, -1] == 49407 and ids[0, 1] == 2368
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_tokenizer_matches_clip(tmp_path: Path, source: CLIPModel, tokenizer_folder: Path) -> None:
    path = tmp_path / "clip" / "ViT-T-8.pt"
    path.parent.mkdir(parents=True)
    torch.save(to_openai(source), path)
    loaded = load_clip_model(discover_clip_models(tmp_path)[0], tokenizer_dir=tokenizer_folder)
    ids = loaded.tokenize(["a photo of a cat"])
    assert ids.shape == (1, 77)
    assert ids[0, :7].tolist() == CAT_IDS and set(ids[0, 7:].tolist()) == {49407}


def test_openai_plain_state_dict(tmp_path: Path, source: CLIPModel, tokenizer_folder: Path, pixels) -> None:
    path = tmp_path / "clip" / "ViT-T-8.pt"
    path.parent.mkdir(parents=True)
    torch.save(to_openai(source), path)
    entry = discover_clip_models(tmp_path)[0]
    assert entry == ClipModelEntry("ViT-T-8", path, "openai")
    loaded = load_clip_model(entry, tokenizer_dir=tokenizer_folder)
    assert loaded.model.config.vision_config.num_attention_heads == 1  # 64 channels per head
    assert loaded.model.config.text_config.num_attention_heads == 2
    assert loaded.model.config.vision_config.hidden_act == "quick_gelu"
    check_same(loaded, source, pixels)
    assert loaded.model.logit_scale.item() == pytest.approx(source.logit_scale.item())


def test_openai_torchscript_archive_half(
    tmp_path: Path, source: CLIPModel, tokenizer_folder: Path, pixels
) -> None:
    """OpenAI ships TorchScript archives in float16; tensors are read without running TorchScript."""
    half = {k: v.half() for k, v in to_openai(source).items()}
    path = tmp_path / "clip" / "ViT-T-8.pt"
    path.parent.mkdir(parents=True)
    save_torchscript(half, path)
    with zipfile.ZipFile(path) as zf:
        assert any(n.endswith("/constants.pkl") for n in zf.namelist())  # a real TorchScript archive
    rounded = CLIPModel(source.config)
    rounded.load_state_dict({k: v.float() for k, v in source.state_dict().items()})
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.half().float())
    loaded = load_clip_model(discover_clip_models(tmp_path)[0], tokenizer_dir=tokenizer_folder)
    check_same(loaded, rounded.eval(), pixels)


def test_openclip_safetensors_with_config(tmp_path: Path, tokenizer_folder: Path, pixels) -> None:
    model = tiny_clip(act="gelu", seed=1)
    folder = tmp_path / "clip" / "laion-tiny"
    folder.mkdir(parents=True)
    safetensors.torch.save_file(to_openai(model), folder / "open_clip_model.safetensors")
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.3, 0.35]
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"width": 64, "head_width": 64},
            "text_cfg": {"heads": 2},
        },
        "preprocess_cfg": {"mean": mean, "std": std},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    entry = discover_clip_models(tmp_path)[0]
    assert entry == ClipModelEntry("laion-tiny", folder / "open_clip_model.safetensors", "openclip")
    loaded = load_clip_model(entry, tokenizer_dir=tokenizer_folder)
    assert loaded.model.config.text_config.hidden_act == "gelu"
    check_same(loaded, model, pixels, mean, std)


def test_openclip_training_checkpoint(tmp_path: Path, tokenizer_folder: Path, pixels) -> None:
    """A DDP training checkpoint ({"state_dict": {"module.visual...": ...}}), gelu by OpenCLIP's default."""
    model = tiny_clip(act="gelu", seed=2)
    path = tmp_path / "clip" / "epoch_3.pth"
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in to_openai(model).items()}}, path)
    loaded = load_clip_model(discover_clip_models(tmp_path)[0], tokenizer_dir=tokenizer_folder)
    check_same(loaded, model, pixels)


def test_encode_image_is_differentiable(tmp_path: Path, source: CLIPModel, tokenizer_folder: Path) -> None:
    path = tmp_path / "clip" / "ViT-T-8.pt"
    path.parent.mkdir(parents=True)
    torch.save(to_openai(source), path)
    loaded = load_clip_model(discover_clip_models(tmp_path)[0], tokenizer_dir=tokenizer_folder)
    x = torch.rand(1, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = loaded.encode_text(["a photo of a cat"])
    loss = -torch.nn.functional.cosine_similarity(loaded.encode_image(x), target).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in loaded.parameters())
    # a step against the gradient raises the similarity
    with torch.no_grad():
        before = loss.item()
        after = -torch.nn.functional.cosine_similarity(loaded.encode_image(x - 0.05 * x.grad.sign()), target)
    assert after.item() < before
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        loaded.encode_image(torch.rand(1, 3, 64, 64))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path, tokenizer_folder: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "clip" / "evil.pt"
    path.parent.mkdir(parents=True)
    torch.save({"visual.proj": torch.zeros(2, 2), "payload": _Evil(marker)}, path)
    with pytest.raises(UnsafeCheckpoint, match=r"(posix|os|nt)\.system"):
        load_clip_model(discover_clip_models(tmp_path)[0], tokenizer_dir=tokenizer_folder)
    assert not marker.exists()


def test_malicious_torchscript_is_refused(tmp_path: Path, source: CLIPModel, tokenizer_folder: Path) -> None:
    marker = tmp_path / "pwned"
    good, path = tmp_path / "good.pt", tmp_path / "clip" / "evil.pt"
    path.parent.mkdir(parents=True)
    save_torchscript(to_openai(source), good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Evil(marker), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(UnsafeCheckpoint, match="system"):
        load_clip_model(discover_clip_models(tmp_path)[0], tokenizer_dir=tokenizer_folder)
    assert not marker.exists()


def test_refused_architectures(tmp_path: Path, source: CLIPModel, tokenizer_folder: Path) -> None:
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    rn = {
        "visual.conv1.weight": torch.zeros(32, 3, 3, 3),
        "visual.layer1.0.conv1.weight": torch.zeros(8, 32, 1, 1),
    }
    rn["visual.attnpool.positional_embedding"] = torch.zeros(50, 64)
    safetensors.torch.save_file(rn, clip_dir / "RN50.safetensors")
    safetensors.torch.save_file({"conv_in.weight": torch.zeros(4, 4)}, clip_dir / "unet.safetensors")
    variant = to_openai(source)
    variant["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(64)
    safetensors.torch.save_file(variant, clip_dir / "layerscale.safetensors")
    entries = {e.name: e for e in discover_clip_models(tmp_path)}
    assert set(entries) == {"layerscale", "RN50", "unet"}
    with pytest.raises(UnknownArchitecture, match="RN50: ResNet image towers"):
        load_clip_model(entries["RN50"], tokenizer_dir=tokenizer_folder)
    with pytest.raises(UnknownArchitecture, match="unet: not a CLIP ViT"):
        load_clip_model(entries["unet"], tokenizer_dir=tokenizer_folder)
    with pytest.raises(UnknownArchitecture, match=r"unsupported CLIP variant.*ls_1\.gamma"):
        load_clip_model(entries["layerscale"], tokenizer_dir=tokenizer_folder)


def test_truncated_files(tmp_path: Path, source: CLIPModel, tokenizer_folder: Path) -> None:
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    safetensors.torch.save_file(to_openai(source), clip_dir / "a.safetensors")
    save_torchscript(to_openai(source), clip_dir / "b.pt")
    for name in ("a.safetensors", "b.pt"):
        data = (clip_dir / name).read_bytes()
        (clip_dir / name).write_bytes(data[: len(data) * 2 // 3])
    entries = discover_clip_models(tmp_path)
    assert [e.name for e in entries] == ["a", "b"]
    for entry in entries:
        with pytest.raises(CorruptCheckpoint, match=entry.path.name):
            load_clip_model(entry, tokenizer_dir=tokenizer_folder)


def test_unknown_name_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "clip").mkdir()
    torch.save({"x": torch.zeros(1)}, tmp_path / "clip" / "only.pt")
    with pytest.raises(ModelNotFound, match=r"no CLIP model named 'ViT-L-14'; available: only"):
        find_clip_model(tmp_path, "ViT-L-14")
    with pytest.raises(ModelNotFound):
        load_clip_model(ClipModelEntry("gone", tmp_path / "clip" / "gone.pt", "openai"))


def test_discovery_names(tmp_path: Path, source: CLIPModel) -> None:
    clip_dir = tmp_path / "clip"
    (clip_dir / "hub" / "laion-b").mkdir(parents=True)
    (clip_dir / "sub").mkdir()
    state = {"x": torch.zeros(1)}
    torch.save(state, clip_dir / "Same.pt")
    safetensors.torch.save_file(state, clip_dir / "Same.safetensors")
    safetensors.torch.save_file(state, clip_dir / "sub" / "open_clip_pytorch_model.bin")
    torch.save(state, clip_dir / "sub" / "other.bin")
    torch.save(state, clip_dir / "hub" / "laion-b" / "too-deep.pt")  # two levels down: not scanned
    (clip_dir / "notes.txt").write_text("x")
    names = [(e.name, e.kind) for e in discover_clip_models(tmp_path)]
    assert names == [
        ("clip/Same.pt", "openai"),
        ("clip/Same.safetensors", "openclip"),
        ("sub", "openclip"),
        ("sub/other", "openclip"),
    ]
    assert discover_clip_models(tmp_path / "nowhere") == []


def test_demo_clip_folder(tmp_path: Path, tokenizer_folder: Path) -> None:
    from tools.demo_model.clip_model import build_clip, load_clip, pixel_values, save_clip

    model = build_clip(torch.Generator().manual_seed(0))
    folder = save_clip(model, tmp_path / "models" / "demo" / "demo-clip-v1")
    entries = discover_clip_models(tmp_path / "models")
    assert entries == [ClipModelEntry("demo-clip-v1", folder, "transformers")]
    loaded = load_clip_model(entries[0], tokenizer_dir=tokenizer_folder)
    demo, _ = load_clip(folder, tokenizer_dir=tokenizer_folder)
    assert (
        loaded.image_size == 64 and loaded.context_length == demo.config.text_config.max_position_embeddings
    )
    image = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = demo.get_image_features(pixel_values=pixel_values([image]))
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    torch.testing.assert_close(loaded.encode_image(x), ref, atol=1e-5, rtol=0)
    assert loaded.tokenize(["a photo of a cat"])[0, :7].tolist() == CAT_IDS


def test_loaded_objects_are_independent(tmp_path: Path, source: CLIPModel, tokenizer_folder: Path) -> None:
    buffer = io.BytesIO()
    torch.save(to_openai(source), buffer)
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "m.pt").write_bytes(buffer.getvalue())
    entry = find_clip_model(tmp_path, "m")
    a = load_clip_model(entry, tokenizer_dir=tokenizer_folder)
    b = load_clip_model(entry, tokenizer_dir=tokenizer_folder)
    assert a is not b and a.model.logit_scale is not b.model.logit_scale


def test_model_manager_lists_and_loads(
    tmp_path: Path, source: CLIPModel, tokenizer_folder: Path, pixels
) -> None:
    paths = make_paths(tmp_path / "data", tokenizer_folder.parent)
    torch.save(to_openai(source), paths.model_dir("clip") / "ViT-T-8.pt")
    manager = ModelManager(paths, cpu_policy())
    assert [(e.name, e.kind) for e in manager.clip_models()] == [("ViT-T-8", "openai")]
    loaded = manager.load_clip("ViT-T-8")
    check_same(loaded, source, pixels)
    assert next(loaded.parameters()).device == manager.policy.device
    with pytest.raises(ModelNotFound, match="available: ViT-T-8"):
        manager.load_clip("ViT-L-14")
