"""Model upscalers (ESRGAN family) without spandrel: discovery, registration, tiling and blending, repeated
passes, safe file reading and the errors users see. A fake ``spandrel`` module (injected through
:class:`SpandrelLoader`'s seam) and known torch modules (nearest upsampling) stand in for real models;
``test_esrgan_spandrel.py`` runs real spandrel architectures where spandrel can be imported.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import pickle
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from webui.config.flags import parse_flags
from webui.config.options import Options
from webui.context import AppContext, build_context
from webui.engine.errors import InvalidParameter
from webui.engine.esrgan import (
    ESRGAN_OWNER,
    ModelUpscaler,
    ModelUpscalers,
    SpandrelLoader,
    TileSettings,
    UpscaleModel,
    UpscaleModelCache,
    UpscalerUnavailable,
    find_upscaler_models,
    image_to_tensor,
    read_upscaler_state_dict,
    tensor_to_image,
    tiled_upscale,
)
from webui.engine.extras import ExtrasParams, upscale
from webui.engine.images import UpscalerRegistry, resize_image
from webui.models.errors import CorruptCheckpoint, ModelError, UnknownArchitecture, UnsafeCheckpoint

HAS_SPANDREL = importlib.util.find_spec("spandrel") is not None


def nearest(scale: int = 4) -> torch.nn.Module:
    """A model whose output is known exactly: every pixel becomes a ``scale`` x ``scale`` block."""
    return torch.nn.Upsample(scale_factor=scale, mode="nearest")


class Counting:
    """Wraps a model and records the (h, w) of every input it sees."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model = model
        self.calls: list[tuple[int, int]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((int(x.shape[-2]), int(x.shape[-1])))
        return self.model(x)


def fake_loader(scale: int = 4, calls: list[Path] | None = None) -> Callable[[Path], UpscaleModel]:
    """``load_model`` for :class:`UpscaleModelCache` giving a nearest-neighbour model."""

    def load(path: Path) -> UpscaleModel:
        if calls is not None:
            calls.append(path)
        return UpscaleModel(run=Counting(nearest(scale)), scale=scale)

    return load


def no_spandrel() -> types.ModuleType:
    """An ``import spandrel`` that fails the way it does beside a mismatched torchvision."""
    raise ImportError("No module named 'torchvision'")


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode=mode)


def upscaler(tmp_path: Path, load: Callable[[Path], UpscaleModel], tile: int = 0, overlap: int = 0,
             name: str = "4x-fake") -> ModelUpscaler:  # fmt: skip
    path = tmp_path / "models" / "ESRGAN" / f"{name}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        torch.save({"w": torch.zeros(1)}, path)
    return ModelUpscaler(name, path, UpscaleModelCache(load_model=load), lambda: TileSettings(tile, overlap))


# --- discovery ---------------------------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read during discovery")
    return path


def test_discovery_finds_model_files_by_stem(tmp_path: Path):
    models = tmp_path / "models"
    touch(models / "ESRGAN" / "4x-UltraSharp.pth")
    touch(models / "ESRGAN" / "sub" / "2x-Sharp.safetensors")
    touch(models / "ESRGAN" / "old.ckpt")
    touch(models / "ESRGAN" / "scripted.PT")
    touch(models / "ESRGAN" / "notes.txt")
    touch(models / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    touch(models / "RealESRGAN" / "4x-UltraSharp.safetensors")  # same stem as an ESRGAN file: skipped
    touch(models / "ESRGAN" / "Lanczos.pth")  # a built-in's name: skipped
    touch(models / "Stable-diffusion" / "model.safetensors")

    files = find_upscaler_models(models)
    assert [p.name for p in files] == [
        "2x-Sharp.safetensors", "4x-UltraSharp.pth", "Lanczos.pth", "old.ckpt", "scripted.PT",
        "4x-UltraSharp.safetensors", "RealESRGAN_x4plus.pth",
    ]  # fmt: skip

    registry = UpscalerRegistry.with_builtins()
    found = ModelUpscalers(models, UpscaleModelCache(load_model=fake_loader())).refresh(registry)
    assert found == ["2x-Sharp", "4x-UltraSharp", "old", "scripted", "RealESRGAN_x4plus"]
    assert registry.names() == ["None", "Lanczos", "Nearest", *found]
    model = registry.get("4x-UltraSharp")
    assert isinstance(model, ModelUpscaler) and model.path == models / "ESRGAN" / "4x-UltraSharp.pth"


def test_refresh_replaces_the_model_upscalers_only(tmp_path: Path):
    models = tmp_path / "models"
    touch(models / "ESRGAN" / "a.pth")
    registry = UpscalerRegistry.with_builtins()
    ups = ModelUpscalers(models, UpscaleModelCache(load_model=fake_loader()))
    assert ups.refresh(registry) == ["a"]
    (models / "ESRGAN" / "a.pth").unlink()
    touch(models / "ESRGAN" / "b.pth")
    assert ups.refresh(registry) == ["b"]
    assert registry.names() == ["None", "Lanczos", "Nearest", "b"]
    assert registry.unregister_owner(ESRGAN_OWNER) == ["b"]
    assert ModelUpscalers(tmp_path / "missing", ups.cache).refresh(registry) == []


@pytest.fixture()
def esrgan_context(tmp_path: Path) -> Iterator[AppContext]:
    """A started application context whose data folder holds ``models/ESRGAN/4x-UltraSharp.pth``."""
    root = tmp_path / "data"
    touch(root / "models" / "ESRGAN" / "4x-UltraSharp.pth")
    flags = parse_flags(["--data-dir", str(root), "--use-cpu", "all", "--nowebui"])
    ctx = build_context(flags, root, options=Options(None), load_extensions=False)
    ctx.start()
    try:
        yield ctx
    finally:
        ctx.close()


def test_context_lists_models_in_upscaler_menus_and_api(esrgan_context: AppContext, tmp_path: Path):
    from fastapi.testclient import TestClient

    from webui.app.generation_controls import hires_upscalers
    from webui.server import create_app

    ctx = esrgan_context
    assert ctx.upscalers.names() == ["None", "Lanczos", "Nearest", "4x-UltraSharp"]  # the Extras menus
    form = types.SimpleNamespace(ui=types.SimpleNamespace(ctx=ctx))
    assert hires_upscalers(form)[-4:] == ["None", "Lanczos", "Nearest", "4x-UltraSharp"]  # type: ignore[arg-type]

    touch(ctx.paths.models_dir / "RealESRGAN" / "R-ESRGAN 4x+.pth")
    assert ctx.refresh_upscalers() == ["4x-UltraSharp", "R-ESRGAN 4x+"]

    with TestClient(create_app(ctx)) as client:
        items = client.get("/sdapi/v1/upscalers").json()
        assert [i["name"] for i in items] == ["None", "Lanczos", "Nearest", "4x-UltraSharp", "R-ESRGAN 4x+"]
        assert items[3]["model_name"] == "ESRGAN"
        assert items[3]["model_path"] == str(ctx.paths.models_dir / "ESRGAN" / "4x-UltraSharp.pth")
        assert items[1]["model_path"] is None
        # the file is no model: a clear error naming it, never a silent Lanczos
        buffer = io.BytesIO()
        random_image(8, 8).save(buffer, format="PNG")
        image = base64.b64encode(buffer.getvalue()).decode()
        r = client.post("/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "4x-UltraSharp"})
        assert r.status_code == 500, r.text
        message = r.json()["errors"]
        assert "4x-UltraSharp" in message
        assert HAS_SPANDREL or "pip install spandrel" in message


def test_tile_settings_come_from_the_options():
    assert TileSettings.from_options(Options(None)) == TileSettings(192, 8)
    assert TileSettings.from_options(Options(None, {"ESRGAN_tile": 0, "ESRGAN_tile_overlap": 16})) == (
        TileSettings(0, 16)
    )
    assert TileSettings.from_options(Options(None, {"ESRGAN_tile": "x", "ESRGAN_tile_overlap": -3})) == (
        TileSettings(192, 0)
    )


# --- tiling ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(37, 23), (64, 64), (50, 71), (1, 9)])
@pytest.mark.parametrize("tile", [8, 13, 16, 32, 100])
@pytest.mark.parametrize("overlap", [0, 8])
def test_tiled_output_equals_untiled(size: tuple[int, int], tile: int, overlap: int):
    width, height = size
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(width * height))
    model = Counting(lambda t: nearest(4)(t) ** 2 * 0.5 + 0.25)  # pixel-local, so tiling changes nothing
    whole = model(x)
    tiled = tiled_upscale(model, x, 4, tile, overlap)
    assert tiled.shape == (1, 3, height * 4, width * 4) and tiled.dtype == torch.float32
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)
    if height > tile or width > tile:
        assert len(model.calls) > 2
        assert all(h <= tile and w <= tile for h, w in model.calls[1:])


def test_tile_zero_runs_the_whole_image_once():
    model = Counting(nearest(2))
    x = torch.rand(1, 3, 40, 30)
    torch.testing.assert_close(tiled_upscale(model, x, 2, tile=0, overlap=8), nearest(2)(x))
    assert model.calls == [(40, 30)]


def test_overlapping_tiles_are_feathered():
    # A model that brightens each tile by a different amount: the blend must move gradually between
    # neighbouring tiles instead of jumping at a seam.
    offsets = iter([0.0, 0.25, 0.5])
    x = torch.zeros(1, 1, 16, 28)
    out = tiled_upscale(lambda t: t + next(offsets), x, 1, tile=16, overlap=8)  # tiles at x = 0, 8, 12
    row = out[0, 0, 0]
    steps = row[1:] - row[:-1]
    assert float(steps.min()) >= 0 and float(steps.max()) < 0.1  # a seam would jump by 0.25
    assert float(row[0]) == 0 and float(row[-1]) == 0.5
    assert torch.equal(out[0, 0], row.expand(16, 28))


def test_wrong_model_output_shape_is_an_error():
    with pytest.raises(ModelError, match="expected 40x40"):
        tiled_upscale(nearest(2), torch.rand(1, 3, 10, 10), 4, tile=0)


def test_image_tensor_round_trip():
    img = random_image(13, 7)
    x = image_to_tensor(img)
    assert x.shape == (1, 3, 7, 13) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert np.array_equal(np.asarray(tensor_to_image(x)), np.asarray(img))
    assert np.asarray(tensor_to_image(x * 3 - 1)).max() == 255  # clamped, no wrap-around


# --- the upscaler ------------------------------------------------------------------------------------


def test_upscale_by_the_model_scale_is_the_model_output(tmp_path: Path):
    img = random_image(32, 24)
    up = upscaler(tmp_path, fake_loader(), tile=16, overlap=8)
    out = up.upscale(img, 4)
    assert out.size == (128, 96) and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((128, 96), Image.Resampling.NEAREST)))


def test_model_runs_repeatedly_to_reach_the_scale(tmp_path: Path):
    img = random_image(32, 24)
    up = upscaler(tmp_path, fake_loader())
    out = up.upscale(img, 8)
    assert out.size == (256, 192)
    model = up.cache.get(up.path).run
    assert model.calls == [(24, 32), (96, 128)]  # type: ignore[attr-defined]
    expected = img.resize((512, 384), Image.Resampling.NEAREST).resize((256, 192), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize(
    ("scale", "size", "passes"), [(2.5, (80, 60), 1), (4.1, (131, 98), 2), (1.3, (41, 31), 1)]
)
def test_non_integer_scales_give_the_exact_size(
    tmp_path: Path, scale: float, size: tuple[int, int], passes: int
):
    up = upscaler(tmp_path, fake_loader())
    assert up.upscale(random_image(32, 24), scale).size == size
    assert len(up.cache.get(up.path).run.calls) == passes  # type: ignore[attr-defined]


def test_restoration_model_runs_once_then_lanczos(tmp_path: Path):
    up = upscaler(tmp_path, fake_loader(scale=1))
    assert up.upscale(random_image(20, 10), 3).size == (60, 30)
    assert len(up.cache.get(up.path).run.calls) == 1  # type: ignore[attr-defined]


def test_no_enlargement_needs_no_model(tmp_path: Path):
    loads: list[Path] = []
    up = upscaler(tmp_path, fake_loader(calls=loads))
    assert up.upscale(random_image(20, 10), 1.0).size == (20, 10)
    assert up.upscale(random_image(20, 10), 0.5).size == (10, 5)
    assert loads == []


def test_alpha_is_kept(tmp_path: Path):
    img = random_image(16, 12, "RGBA")
    out = upscaler(tmp_path, fake_loader()).upscale(img, 2)
    assert out.mode == "RGBA" and out.size == (32, 24)
    expected_alpha = img.getchannel("A").resize((32, 24), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(expected_alpha))


def test_models_are_cached_and_bounded(tmp_path: Path):
    loads: list[Path] = []
    cache = UpscaleModelCache(load_model=fake_loader(calls=loads), capacity=1)
    a, b = (touch(tmp_path / f"{n}.pth") for n in "ab")
    first = cache.get(a)
    assert cache.get(a) is first and loads == [a]
    cache.get(b)
    assert cache.loaded() == [b] and loads == [a, b]
    cache.get(a)
    assert loads == [a, b, a]
    os.utime(a, ns=(1, 1))  # changed on disk: loaded again
    cache.get(a)
    assert loads == [a, b, a, a] and cache.loaded() == [a]
    cache.clear()
    assert cache.loaded() == []
    with pytest.raises(ModelError, match="not found"):
        cache.get(tmp_path / "gone.pth")


def test_extras_and_resize_use_the_model(tmp_path: Path):
    registry = UpscalerRegistry.with_builtins()
    up = upscaler(tmp_path, fake_loader())
    registry.register(up, owner=ESRGAN_OWNER)
    img = random_image(32, 24)
    result, info = upscale(img, ExtrasParams(upscaling_resize=4, upscaler_1="4x-fake"), registry)
    assert result.size == (128, 96)
    assert np.array_equal(np.asarray(result), np.asarray(img.resize((128, 96), Image.Resampling.NEAREST)))
    assert "Postprocess upscaler: 4x-fake" in info
    # the hires. fix path: resize_image with the registry name
    assert resize_image(0, img, 80, 60, "4x-fake", registry=registry).size == (80, 60)
    assert up.cache.get(up.path).run.calls == [(24, 32), (24, 32)]  # type: ignore[attr-defined]


# --- loading through spandrel (faked) ----------------------------------------------------------------


class FakeUnsupported(Exception):
    pass


class FakeDescriptor:
    """The parts of spandrel's ImageModelDescriptor the loader uses."""

    def __init__(self, scale: int = 4, purpose: str = "SR", channels: int = 3) -> None:
        self.scale, self.purpose = scale, purpose
        self.input_channels = self.output_channels = channels
        self.supports_half, self.supports_bfloat16 = True, False
        self.tiling = "supported"
        self.architecture = types.SimpleNamespace(name="FakeNet")
        self.moved: list[Any] = []

    def to(self, *args: Any) -> FakeDescriptor:
        self.moved.append(args)
        return self

    def eval(self) -> FakeDescriptor:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return nearest(self.scale)(x)


def fake_spandrel(**descriptor: Any) -> types.ModuleType:
    """A stand-in ``spandrel`` module: BasicSR wrappers are unwrapped, a ``"weird"`` key is unsupported."""
    module = types.ModuleType("spandrel")
    seen: list[dict[str, Any]] = []

    def canonicalize_state_dict(state: dict[str, Any]) -> dict[str, Any]:
        return state.get("params_ema", state)

    class ModelLoader:
        def __init__(self, device: str = "cpu") -> None:
            pass

        def load_from_state_dict(self, state: dict[str, Any]) -> FakeDescriptor:
            seen.append(state)
            if "weird" in state:
                raise FakeUnsupported("no architecture")
            if state["conv.weight"].shape != (4, 3):
                raise RuntimeError("size mismatch for conv.weight")
            return FakeDescriptor(**descriptor)

    module.canonicalize_state_dict = canonicalize_state_dict  # type: ignore[attr-defined]
    module.ModelLoader = ModelLoader  # type: ignore[attr-defined]
    module.UnsupportedModelError = FakeUnsupported  # type: ignore[attr-defined]
    module.ImageModelDescriptor = FakeDescriptor  # type: ignore[attr-defined]
    module.ModelTiling = types.SimpleNamespace(INTERNAL="internal")  # type: ignore[attr-defined]
    module.seen = seen  # type: ignore[attr-defined]
    return module


def spandrel_upscaler(path: Path, module: types.ModuleType) -> ModelUpscaler:
    loader = SpandrelLoader("cpu", torch.float16, import_spandrel=lambda: module)
    return ModelUpscaler(path.stem, path, UpscaleModelCache(load_model=loader), lambda: TileSettings(16, 4))


def test_pth_and_safetensors_load_through_spandrel(tmp_path: Path):
    from safetensors.torch import save_file

    weights = {"conv.weight": torch.ones(4, 3)}
    torch.save({"params_ema": weights}, tmp_path / "4x-basicsr.pth")
    save_file(weights, str(tmp_path / "4x-plain.safetensors"))
    img = random_image(20, 12)
    for name in ("4x-basicsr.pth", "4x-plain.safetensors"):
        module = fake_spandrel()
        out = spandrel_upscaler(tmp_path / name, module).upscale(img, 4)
        assert out.size == (80, 48)
        assert np.array_equal(np.asarray(out), np.asarray(img.resize((80, 48), Image.Resampling.NEAREST)))
        assert list(module.seen[0]) == ["conv.weight"]  # type: ignore[attr-defined]


def test_loader_picks_device_and_dtype():
    fp16_cuda = SpandrelLoader("cuda", torch.float16, import_spandrel=fake_spandrel)
    descriptor = FakeDescriptor()
    assert fp16_cuda._dtype_for(descriptor) == torch.float16
    assert SpandrelLoader("cuda", torch.bfloat16)._dtype_for(descriptor) == torch.float32  # unsupported
    assert SpandrelLoader("cpu", torch.float16)._dtype_for(descriptor) == torch.float32


def test_missing_spandrel_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "models" / "ESRGAN" / "4x-foo.pth"
    path.parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.ones(4, 3)}, path)

    registry = UpscalerRegistry.with_builtins()
    loader = SpandrelLoader(import_spandrel=no_spandrel)
    ModelUpscalers(tmp_path / "models", UpscaleModelCache(load_model=loader)).refresh(registry)
    assert "4x-foo" in registry  # listed all the same
    for run in (
        lambda: registry.get("4x-foo").upscale(random_image(8, 8), 2),
        lambda: upscale(random_image(8, 8), ExtrasParams(upscaler_1="4x-foo"), registry),
        lambda: resize_image(0, random_image(8, 8), 16, 16, "4x-foo", registry=registry),
    ):
        with pytest.raises(UpscalerUnavailable) as info:
            run()
        message = str(info.value)
        assert "'4x-foo'" in message and "`spandrel`" in message and "pip install spandrel" in message
        assert "torchvision" in message


@pytest.mark.skipif(HAS_SPANDREL, reason="spandrel is installed")
def test_default_loader_without_spandrel(tmp_path: Path):
    up = upscaler(tmp_path, SpandrelLoader())
    with pytest.raises(UpscalerUnavailable, match="pip install spandrel"):
        up.upscale(random_image(8, 8), 2)


def test_unknown_architecture_and_corrupt_files_name_the_file(tmp_path: Path):
    from safetensors.torch import save_file

    cases = {
        "weird.pth": (lambda p: torch.save({"weird": torch.ones(1)}, p), UnknownArchitecture),
        "mismatch.pth": (lambda p: torch.save({"conv.weight": torch.ones(2)}, p), CorruptCheckpoint),
        "garbage.pth": (lambda p: p.write_bytes(b"\x80\x04garbage" * 10), CorruptCheckpoint),
        "list.pth": (lambda p: torch.save([torch.ones(1)], p), CorruptCheckpoint),
        "truncated.safetensors": (
            lambda p: (save_file({"a": torch.ones(100)}, str(p)), p.write_bytes(p.read_bytes()[:-50])),
            CorruptCheckpoint,
        ),
    }
    for name, (write, error) in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(error) as info:
            spandrel_upscaler(path, fake_spandrel()).upscale(random_image(8, 8), 2)
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("descriptor", "message"),
    [({"purpose": "FaceSR"}, "FaceSR model"), ({"channels": 1}, "only RGB"), ({"scale": 2}, None)],
)
def test_non_upscaler_models_are_refused(tmp_path: Path, descriptor: dict[str, Any], message: str | None):
    path = tmp_path / "m.pth"
    torch.save({"conv.weight": torch.ones(4, 3)}, path)
    up = spandrel_upscaler(path, fake_spandrel(**descriptor))
    if message is None:
        assert up.upscale(random_image(8, 8), 2).size == (16, 16)
        return
    with pytest.raises(UnknownArchitecture, match=message):
        up.upscale(random_image(8, 8), 2)


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("style", ["zip", "legacy", "pickle"])
def test_malicious_pickle_is_refused(tmp_path: Path, style: str):
    marker = tmp_path / "pwned"
    path = tmp_path / f"4x-evil-{style}.pth"
    payload = {"conv.weight": torch.ones(4, 3), "x": Evil(marker)}
    if style == "zip":
        torch.save(payload, path)
    elif style == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()

    with pytest.raises(UnsafeCheckpoint) as info:
        read_upscaler_state_dict(path)
    assert path.name in str(info.value)
    with pytest.raises(UnsafeCheckpoint) as info:
        spandrel_upscaler(path, fake_spandrel()).upscale(random_image(8, 8), 2)
    assert path.name in str(info.value)
    assert not marker.exists()


def test_hires_fix_uses_the_model_upscaler(sd1_context: AppContext, tmp_path: Path):
    from webui.engine.params import GenerationParams
    from webui.engine.processing import EngineServices, generate

    registry = UpscalerRegistry.with_builtins()
    up = upscaler(tmp_path, fake_loader())
    registry.register(up, owner=ESRGAN_OWNER)
    ctx = sd1_context
    services = EngineServices(ctx.models, ctx.samplers, Options(None, ctx.options.as_dict()), None, registry)
    request = dict(prompt="a red circle", width=64, height=64, steps=1, sampler_name="Euler", seed=1,
                   do_not_save_samples=True, do_not_save_grid=True, enable_hr=True, hr_scale=1.5,
                   hr_second_pass_steps=1, denoising_strength=0.5, hr_upscaler="4x-fake")  # fmt: skip
    result = generate(services, GenerationParams(**request))
    assert result.images[0].size == (96, 96)
    assert "Hires upscaler: 4x-fake" in result.infotexts[0]
    assert up.cache.get(up.path).run.calls == [(64, 64)]  # type: ignore[attr-defined]

    broken_cache = UpscaleModelCache(load_model=SpandrelLoader(import_spandrel=no_spandrel))
    broken = ModelUpscaler("4x-broken", up.path, broken_cache)
    registry.register(broken, owner=ESRGAN_OWNER)
    with pytest.raises(UpscalerUnavailable, match="4x-fake"):
        generate(services, GenerationParams(**{**request, "hr_upscaler": "4x-broken"}))
    with pytest.raises(InvalidParameter):
        generate(services, GenerationParams(**{**request, "hr_upscaler": "4x-missing"}))
