"""Model upscalers with the real ``spandrel``: a tiny random-weight ESRGAN (RRDBNet) written as ``.pth`` and
``.safetensors`` into ``models/ESRGAN`` and run through our upscaler, the Extras code and the hires. fix
resize. Skipped where spandrel (or the torchvision it imports) cannot be imported.

Self-contained: only ``webui.engine`` / ``webui.models``, torch, safetensors, numpy and PIL.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.esrgan import (
    ModelUpscaler,
    ModelUpscalers,
    SpandrelLoader,
    TileSettings,
    UpscaleModelCache,
    image_to_tensor,
    tensor_to_image,
)
from webui.engine.extras import ExtrasParams, upscale
from webui.engine.images import UpscalerRegistry, resize_image
from webui.models.errors import UnknownArchitecture, UnsafeCheckpoint

pytestmark = pytest.mark.skipif(importlib.util.find_spec("spandrel") is None, reason="needs spandrel")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def rrdbnet_class() -> Any:
    """spandrel's ESRGAN (RRDBNet) class, or a skip when spandrel cannot be imported here."""
    try:
        from spandrel.architectures.ESRGAN import ESRGAN
    except Exception as e:  # e.g. a torchvision built for another torch
        pytest.skip(f"spandrel cannot be imported: {e}")
    return ESRGAN


def image(width: int = 32, height: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A random 4x RRDBNet (8 filters, 1 block) saved as ``4x-tiny.pth`` and ``4x-tiny-st.safetensors``."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = rrdbnet_class()(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).eval()
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    torch.save(state, folder / "4x-tiny.pth")
    save_file(state, str(folder / "4x-tiny-st.safetensors"))
    return net, tmp_path / "models"


def registry_for(models_dir: Path, tile: int = 0, overlap: int = 0, **cache: Any) -> UpscalerRegistry:
    registry = UpscalerRegistry.with_builtins()
    ModelUpscalers(models_dir, UpscaleModelCache(DEVICE, torch.float32, **cache),
                   lambda: TileSettings(tile, overlap)).refresh(registry)  # fmt: skip
    return registry


def direct(net: torch.nn.Module, img: Image.Image) -> np.ndarray:
    """The model run by hand on the whole image (fp32, CPU)."""
    with torch.inference_mode():
        out = net.float().cpu()(image_to_tensor(img)).clamp(0, 1)
    return np.asarray(tensor_to_image(out), dtype=np.int32)


def close(a: Image.Image, b: np.ndarray, tolerance: int = 1) -> bool:
    return int(np.abs(np.asarray(a, dtype=np.int32) - b).max()) <= tolerance


@pytest.mark.parametrize("name", ["4x-tiny", "4x-tiny-st"])
def test_upscale_by_four_is_the_model_output(tiny: tuple[torch.nn.Module, Path], name: str):
    net, models = tiny
    registry = registry_for(models)
    assert registry.names()[-2:] == ["4x-tiny", "4x-tiny-st"]
    img = image()
    out = registry.get(name).upscale(img, 4)
    assert out.size == (128, 96) and out.mode == "RGB"
    assert close(out, direct(net, img), tolerance=1 if DEVICE.type == "cpu" else 2)


def test_extras_and_hires_paths(tiny: tuple[torch.nn.Module, Path]):
    net, models = tiny
    registry = registry_for(models)
    img = image()
    expected = direct(net, img)
    result, info = upscale(img, ExtrasParams(upscaling_resize=4, upscaler_1="4x-tiny"), registry)
    assert result.size == (128, 96) and "Postprocess upscaler: 4x-tiny" in info
    assert close(result, expected, tolerance=1 if DEVICE.type == "cpu" else 2)
    hires = resize_image(0, img, 128, 96, "4x-tiny", registry=registry)  # what hires. fix calls
    assert close(hires, expected, tolerance=1 if DEVICE.type == "cpu" else 2)
    assert resize_image(0, img, 80, 60, "4x-tiny", registry=registry).size == (80, 60)  # 2.5x
    assert registry.get("4x-tiny").upscale(img, 8).size == (256, 192)  # two passes


def test_tiled_run_has_the_right_size(tiny: tuple[torch.nn.Module, Path]):
    _, models = tiny
    registry = registry_for(models, tile=16, overlap=8)
    out = registry.get("4x-tiny").upscale(image(37, 29), 4)
    assert out.size == (148, 116)


def test_basicsr_wrapped_state_dict_loads(tiny: tuple[torch.nn.Module, Path]):
    net, models = tiny
    path = models / "ESRGAN" / "4x-wrapped.pth"
    torch.save({"params_ema": torch.load(models / "ESRGAN" / "4x-tiny.pth", weights_only=True)}, path)
    up = registry_for(models).get("4x-wrapped")
    img = image(16, 12)
    assert close(up.upscale(img, 4), direct(net, img), tolerance=1 if DEVICE.type == "cpu" else 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda(tiny: tuple[torch.nn.Module, Path]):
    net, models = tiny
    path = models / "ESRGAN" / "4x-tiny.pth"
    model = SpandrelLoader(DEVICE, torch.float16)(path)
    assert model.dtype == torch.float16 and model.scale == 4 and model.device.type == "cuda"
    up = ModelUpscaler("4x-tiny", path, UpscaleModelCache(load_model=SpandrelLoader(DEVICE, torch.float16)),
                       lambda: TileSettings(0, 0))  # fmt: skip
    img = image()
    out = np.asarray(up.upscale(img, 4), dtype=np.int32)
    assert float(np.abs(out - direct(net, img)).mean()) < 2.0


def test_unknown_architecture_names_the_file(tmp_path: Path):
    rrdbnet_class()
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    torch.save({"foo.weight": torch.ones(3, 3)}, folder / "4x-mystery.pth")
    up = registry_for(tmp_path / "models").get("4x-mystery")
    with pytest.raises(UnknownArchitecture, match=r"4x-mystery\.pth"):
        up.upscale(image(8, 8), 2)


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_pickle_is_refused(tmp_path: Path):
    rrdbnet_class()
    marker = tmp_path / "pwned"
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    torch.save({"model.0.weight": torch.ones(8, 3, 3, 3), "x": Evil(marker)}, folder / "4x-evil.pth")
    up = registry_for(tmp_path / "models").get("4x-evil")
    with pytest.raises(UnsafeCheckpoint, match=r"4x-evil\.pth"):
        up.upscale(image(8, 8), 2)
    assert not marker.exists()
