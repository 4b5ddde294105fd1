"""CLIP models for guidance (disco mode): discovery under ``models/clip/`` and offline loading.

Every kind is loaded into a ``transformers.CLIPModel``: transformers folders directly, OpenAI ``.pt``
files (TorchScript archives or plain state dicts) and OpenCLIP state dicts through
:mod:`webui.models.clip_convert`. Tensors are always read with the restricted reader of
:mod:`webui.models.checkpoint_files`, so no file can run code. Loading returns a new frozen
:class:`GuidanceClipModel` each time; callers cache it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from webui.models.checkpoint_files import load_state_dict, read_safetensors_header
from webui.models.clip_convert import (
    ClipHints,
    check_clip_vit,
    infer_clip_config,
    strip_wrappers,
    to_transformers_keys,
)
from webui.models.errors import CorruptCheckpoint, ModelError, ModelNotFound, UnknownArchitecture
from webui.models.tokenizer_files import write_clip_tokenizer

ClipKind = Literal["transformers", "openai", "openclip"]
CLIP_SUBDIR = "clip"
DEMO_CLIP_NAME = "demo-clip-v1"
DEMO_CLIP_SUBDIR = Path("demo") / DEMO_CLIP_NAME
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
OPEN_CLIP_FILE_NAMES = (
    "open_clip_pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
)
OPEN_CLIP_CONFIG = "open_clip_config.json"
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_TRANSFORMERS_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ClipModelEntry:
    """A CLIP model found on disk: its display name, file or folder, and how to read it."""

    name: str
    path: Path
    kind: ClipKind


def is_transformers_clip_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a transformers model (``config.json`` plus weights or a shard index)."""
    if not (folder / "config.json").is_file():
        return False
    return any((folder / n).is_file() for n in (*_TRANSFORMERS_WEIGHTS, *_TRANSFORMERS_INDEXES))


def _file_kind(path: Path) -> ClipKind:
    return "openai" if path.suffix.lower() == ".pt" else "openclip"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _scan_clip_dir(clip_dir: Path) -> list[tuple[str, ClipModelEntry]]:
    """(preferred name, entry) for every model in ``clip_dir`` and its direct subfolders."""
    found: list[tuple[str, ClipModelEntry]] = []
    if not clip_dir.is_dir():
        return found
    for child in sorted(filter(_visible, clip_dir.iterdir())):
        if child.is_dir():
            if is_transformers_clip_folder(child):
                found.append((child.name, ClipModelEntry(child.name, child, "transformers")))
                continue
            for f in sorted(filter(_visible, child.iterdir())):
                if f.is_file() and f.suffix.lower() in WEIGHT_SUFFIXES:
                    name = child.name if f.name in OPEN_CLIP_FILE_NAMES else f"{child.name}/{f.stem}"
                    found.append((name, ClipModelEntry(name, f, _file_kind(f))))
        elif child.is_file() and child.suffix.lower() in WEIGHT_SUFFIXES:
            found.append((child.stem, ClipModelEntry(child.stem, child, _file_kind(child))))
    return found


def discover_clip_models(models_dir: Path) -> list[ClipModelEntry]:
    """CLIP models in ``models_dir/clip`` (files, and transformers folders or weight files one folder
    deep) plus the demo CLIP folder ``models_dir/demo/demo-clip-v1``, sorted by name.

    Names are file stems (folder names for transformers folders and OpenCLIP hub folders); names that
    would clash are replaced by the path relative to ``models_dir``.
    """
    found = _scan_clip_dir(models_dir / CLIP_SUBDIR)
    demo = models_dir / DEMO_CLIP_SUBDIR
    if is_transformers_clip_folder(demo):
        found.append((DEMO_CLIP_NAME, ClipModelEntry(DEMO_CLIP_NAME, demo, "transformers")))
    counts: dict[str, int] = {}
    for name, _ in found:
        counts[name] = counts.get(name, 0) + 1
    entries = [
        e if counts[name] == 1 else ClipModelEntry(e.path.relative_to(models_dir).as_posix(), e.path, e.kind)
        for name, e in found
    ]
    return sorted(entries, key=lambda e: (e.name.casefold(), e.name))


def find_clip_model(models_dir: Path, name: str) -> ClipModelEntry:
    """The discovered CLIP model called ``name``; :class:`ModelNotFound` lists the available ones."""
    entries = discover_clip_models(models_dir)
    for entry in entries:
        if name == entry.name:
            return entry
    available = ", ".join(e.name for e in entries) or "none (put CLIP models in models/clip)"
    raise ModelNotFound(f"no CLIP model named {name!r}; available: {available}")


class GuidanceClipModel(torch.nn.Module):
    """A frozen CLIP for guidance: normalises [0, 1] pixels itself and returns projected embeddings.

    Attributes:
        name: the entry's name. image_size: the side the image tower expects. context_length: tokens
        per text. model: the wrapped ``transformers.CLIPModel``. tokenizer: its ``CLIPTokenizer``.
    """

    def __init__(
        self,
        name: str,
        model: Any,
        tokenizer: Any,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), False)
        self.eval()

    @property
    def embed_dim(self) -> int:
        """Size of the (projected) image and text embeddings."""
        return int(self.model.config.projection_dim)

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.model.parameters())
        return p.device, p.dtype

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings ``[B, D]`` (float32) of ``pixels`` ``[B, 3, S, S]`` in [0, 1] with
        ``S == image_size``; differentiable with respect to ``pixels``."""
        s = self.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[-2:]) != (s, s):
            raise ValueError(
                f"{self.name}: expected pixels of shape [B, 3, {s}, {s}], got {list(pixels.shape)}"
            )
        device, dtype = self._device_dtype()
        x = (pixels.to(device=device, dtype=torch.float32) - self.mean) / self.std
        features = self.model.get_image_features(pixel_values=x.to(dtype))
        return _pooled(features).float()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]``: BOS, the text's tokens (truncated to fit), EOS, EOS padding."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{self.name}: texts must be a non-empty list of strings")
        tok = self.tokenizer
        encoded = tok(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        bos, eos, n = int(tok.bos_token_id), int(tok.eos_token_id), self.context_length
        rows = []
        for ids in encoded:
            row = [bos, *list(ids)[: n - 2], eos]
            rows.append(row + [eos] * (n - len(row)))
        return torch.tensor(rows, dtype=torch.long)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings ``[N, D]`` (float32, no gradient) of ``texts``."""
        device, _ = self._device_dtype()
        features = self.model.get_text_features(input_ids=self.tokenize(texts).to(device))
        return _pooled(features).float()


def _pooled(features: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor, or (transformers 5) an output whose ``pooler_output`` it is."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def load_clip_model(
    entry: ClipModelEntry,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer_dir: Path | None = None,
) -> GuidanceClipModel:
    """Load ``entry`` offline as a new frozen :class:`GuidanceClipModel` on ``device`` in ``dtype``.

    The tokenizer is the folder's own (transformers folders that ship one), else the real CLIP BPE
    tokenizer written into ``tokenizer_dir`` (default: a folder in the system's temporary directory).
    Raises :class:`ModelNotFound`, :class:`CorruptCheckpoint` (truncated or mismatching weights),
    :class:`UnsafeCheckpoint` (pickles that would run code) or :class:`UnknownArchitecture` (not a CLIP
    ViT, ResNet towers).
    """
    if not entry.path.exists():
        raise ModelNotFound(f"{entry.name}: {entry.path} does not exist")
    if entry.kind == "transformers":
        model, mean, std = _load_transformers_folder(entry)
    elif entry.kind in ("openai", "openclip"):
        model, mean, std = _load_original_layout(entry)
    else:
        raise ModelError(f"{entry.name}: unknown CLIP model kind {entry.kind!r}")
    tokenizer = _tokenizer_for(entry, tokenizer_dir)
    wrapper = GuidanceClipModel(entry.name, model, tokenizer, mean, std)
    return wrapper.to(device=torch.device(device), dtype=dtype)


def _tokenizer_for(entry: ClipModelEntry, tokenizer_dir: Path | None) -> Any:
    from transformers import CLIPTokenizer

    if entry.kind == "transformers" and (entry.path / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(str(entry.path))
    folder = tokenizer_dir or Path(tempfile.gettempdir()) / "webui-clip-tokenizer"
    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder)))


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{name}: cannot read {path.name} ({e})") from e
    if not isinstance(data, dict):
        raise CorruptCheckpoint(f"{name}: {path.name} is not a JSON object")
    return data


def _mean_std(
    values: dict[str, Any], mean_key: str, std_key: str, name: str
) -> tuple[list[float], list[float]]:
    mean, std = values.get(mean_key, OPENAI_MEAN), values.get(std_key, OPENAI_STD)
    try:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError) as e:
        raise CorruptCheckpoint(f"{name}: invalid image mean/std ({e})") from e
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CorruptCheckpoint(f"{name}: image mean/std must be three numbers (std > 0)")
    return mean, std


def _folder_weights(folder: Path, name: str) -> list[Path]:
    for index in _TRANSFORMERS_INDEXES:
        if (folder / index).is_file():
            weight_map = _read_json(folder / index, name).get("weight_map", {})
            return [folder / f for f in sorted(set(weight_map.values()))]
    return [next(folder / n for n in _TRANSFORMERS_WEIGHTS if (folder / n).is_file())]


def _load_transformers_folder(entry: ClipModelEntry) -> tuple[Any, list[float], list[float]]:
    from transformers import CLIPConfig, CLIPModel

    folder, name = entry.path, entry.name
    if not is_transformers_clip_folder(folder):
        raise ModelNotFound(f"{name}: {folder} is not a transformers model folder (config.json + weights)")
    config_dict = _read_json(folder / "config.json", name)
    if config_dict.get("model_type") != "clip":
        raise UnknownArchitecture(
            f"{name}: config.json describes a {config_dict.get('model_type')!r} model, not a CLIP model "
            "(both towers are needed)"
        )
    try:
        config = CLIPConfig.from_dict(config_dict)
    except (TypeError, ValueError) as e:
        raise CorruptCheckpoint(f"{name}: invalid config.json ({e})") from e
    state: dict[str, torch.Tensor] = {}
    for weights in _folder_weights(folder, name):
        if weights.suffix == ".safetensors":
            read_safetensors_header(weights)  # clear message for truncated files
        state.update(load_state_dict(weights))
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    model = _build(CLIPModel(config), state, name)
    mean, std = OPENAI_MEAN, OPENAI_STD
    if (folder / "preprocessor_config.json").is_file():
        mean, std = _mean_std(
            _read_json(folder / "preprocessor_config.json", name), "image_mean", "image_std", name
        )
    return model, list(mean), list(std)


def _hints(entry: ClipModelEntry, open_clip_cfg: dict[str, Any]) -> ClipHints:
    model_cfg = open_clip_cfg.get("model_cfg", open_clip_cfg)
    vision = model_cfg.get("vision_cfg") or {}
    text = model_cfg.get("text_cfg") or {}
    if "quick_gelu" in model_cfg:
        quick = bool(model_cfg["quick_gelu"])
    else:  # OpenAI's CLIPs use QuickGELU; OpenCLIP marks such models "-quickgelu" in their names
        quick = entry.kind == "openai" or "quickgelu" in entry.path.as_posix().lower()
    vision_heads = None
    if "width" in vision and "head_width" in vision:
        vision_heads = int(vision["width"]) // int(vision["head_width"])
    text_heads = int(text["heads"]) if "heads" in text else None
    return ClipHints(quick_gelu=quick, vision_heads=vision_heads, text_heads=text_heads)


def _load_original_layout(entry: ClipModelEntry) -> tuple[Any, list[float], list[float]]:
    from transformers import CLIPConfig, CLIPModel

    path, name = entry.path, entry.name
    if not path.is_file():
        raise ModelNotFound(f"{name}: {path} is not a file")
    config_file = path.parent / OPEN_CLIP_CONFIG
    open_clip_cfg = _read_json(config_file, name) if config_file.is_file() else {}
    state = strip_wrappers(load_state_dict(path))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    check_clip_vit(shapes, name)
    try:
        config = CLIPConfig(**infer_clip_config(shapes, _hints(entry, open_clip_cfg)))
    except ModelError as e:
        raise type(e)(f"{name}: {e}") from e
    model = _build(CLIPModel(config), to_transformers_keys(state, name), name)
    preprocess = open_clip_cfg.get("preprocess_cfg") or {}
    mean, std = _mean_std(preprocess, "mean", "std", name)
    return model, mean, std


def _build(model: Any, state: dict[str, torch.Tensor], name: str) -> Any:
    """Copy ``state`` into ``model`` strictly (every weight present, shapes equal)."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        message = str(e).split("\n\t", 1)[-1][:400]
        raise CorruptCheckpoint(f"{name}: weights do not fit the CLIP architecture ({message})") from e
    return model.float().eval()
