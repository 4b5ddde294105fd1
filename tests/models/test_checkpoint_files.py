"""Safe reading of checkpoint files: safetensors headers, restricted unpickling, clear errors."""

from __future__ import annotations

import hashlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.models.checkpoint_files import load_state_dict, read_header, read_safetensors_header
from webui.models.errors import CorruptCheckpoint, ModelNotFound, UnsafeCheckpoint
from webui.models.hashing import legacy_model_hash, sha256_file, short_hash


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "model.diffusion_model.a.weight": torch.randn(4, 3, generator=g),
        "model.diffusion_model.b.bias": torch.randn(5, generator=g).half(),
    }


def test_safetensors_header_has_shapes_dtypes_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), str(path), metadata={"modelspec.prediction_type": "v", "ss_note": "x"})
    header = read_safetensors_header(path)
    assert dict(header.shapes) == {
        "model.diffusion_model.a.weight": (4, 3),
        "model.diffusion_model.b.bias": (5,),
    }
    assert dict(header.dtypes) == {
        "model.diffusion_model.a.weight": "F32",
        "model.diffusion_model.b.bias": "F16",
    }
    assert dict(header.metadata) == {"modelspec.prediction_type": "v", "ss_note": "x"}


def test_safetensors_tensors_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(_tensors(), str(path))
    loaded = load_state_dict(path)
    assert set(loaded) == set(_tensors())
    for key, value in _tensors().items():
        assert torch.equal(loaded[key], value)
    meta = load_state_dict(path, device="meta")
    assert {k: tuple(v.shape) for k, v in meta.items()} == {k: tuple(v.shape) for k, v in _tensors().items()}
    assert all(v.device.type == "meta" for v in meta.values())


def test_ckpt_state_dict_loads(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": _tensors(), "global_step": 470000}, path)
    loaded = load_state_dict(path)
    assert set(loaded) == set(_tensors())
    assert all(torch.equal(loaded[k], v) for k, v in _tensors().items())
    assert dict(read_header(path).shapes) == {
        "model.diffusion_model.a.weight": (4, 3),
        "model.diffusion_model.b.bias": (5,),
    }


class _Evil:
    """Pickles to ``os.system("touch <target>")``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, zip_format: bool) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": _tensors(), "payload": _Evil(target)},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(UnsafeCheckpoint, match=r"evil\.ckpt: refused to load.*system") as info:
        load_state_dict(path)
    assert "safetensors" in str(info.value)  # tells the user what to do instead
    assert not target.exists()
    with pytest.raises(UnsafeCheckpoint):
        read_header(path)
    assert not target.exists()


def _fake_lightning(monkeypatch: pytest.MonkeyPatch) -> type:
    name = "pytorch_lightning.callbacks.model_checkpoint"
    module = types.ModuleType(name)

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.monitor = "val/loss_simple_ema"
            self.best_model_score = torch.tensor(0.25)

    ModelCheckpoint.__module__ = name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, name, module)
    return ModelCheckpoint


def test_old_lightning_checkpoint_loads_with_inert_stub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sd-v1-4.ckpt"
    with monkeypatch.context() as m:
        cls = _fake_lightning(m)
        torch.save({"state_dict": _tensors(), "callbacks": {"ckpt": cls()}, "epoch": 6}, path)
    assert "pytorch_lightning" not in sys.modules  # the file is read without the real package
    loaded = load_state_dict(path)
    assert all(torch.equal(loaded[k], v) for k, v in _tensors().items())


def test_truncated_safetensors_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file(_tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(CorruptCheckpoint, match=r"cut\.safetensors: .*truncated"):
        load_state_dict(path)
    with pytest.raises(CorruptCheckpoint, match=r"cut\.safetensors"):
        read_header(path)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("noise.safetensors", bytes(range(256)) * 8),
        ("short.safetensors", b"\x01\x02"),
        ("json.safetensors", (10).to_bytes(8, "little") + b"not json!!"),
        ("text.ckpt", b"this is not a checkpoint"),
        ("proto.ckpt", b"\x80\x02garbage"),
        ("zip.ckpt", b"PK\x03\x04" + b"x" * 100),
        ("empty.ckpt", b""),
    ],
)
def test_garbage_files_are_corrupt_with_file_name(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CorruptCheckpoint, match=name.replace(".", r"\.")):
        load_state_dict(path)


def test_truncated_ckpt_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.ones(10000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpoint, match=r"cut\.ckpt"):
        load_state_dict(path)


def test_ckpt_without_tensors_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "none.ckpt"
    torch.save({"state_dict": {"step": 3}}, path)
    with pytest.raises(CorruptCheckpoint, match=r"none\.ckpt: the file holds no tensors"):
        load_state_dict(path)


@pytest.mark.parametrize("name", ["gone.safetensors", "gone.ckpt"])
def test_missing_file_is_model_not_found(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelNotFound, match=name.replace(".", r"\.")):
        load_state_dict(tmp_path / name)
    with pytest.raises(ModelNotFound, match=name.replace(".", r"\.")):
        read_header(tmp_path / name)


def test_hashes_match_hashlib_and_a1111_definitions(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * (5 * 4096 + 7)  # about 5.2 MiB, not a multiple of the read chunk
    path.write_bytes(data)
    full = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == full
    assert short_hash(full) == full[:10]
    # A1111's legacy "model hash": sha256 of 64 KiB at offset 1 MiB, first 8 hex digits
    assert legacy_model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
