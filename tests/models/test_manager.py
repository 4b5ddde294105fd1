"""ModelManager: identity and hashes, discovery, lookup, VAE choice, switching with an LRU, memory, errors."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import save_file

import webui.models.hashing as hashing
import webui.models.manager as manager_module
from tests.models.conftest import ManagerFactory, TinyCheckpoint, cpu_policy, make_paths
from webui.config.flags import parse_flags
from webui.config.paths import Paths
from webui.models.checkpoint_files import load_state_dict
from webui.models.errors import CorruptCheckpoint, ModelNotFound, UnknownArchitecture, UnsafeCheckpoint
from webui.models.loader import LoadedModel
from webui.models.manager import CacheLimits, ModelManager


@pytest.fixture
def sha_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file whose full sha256 gets computed."""
    calls: list[Path] = []
    real = hashing.sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return calls


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the checkpoints actually loaded from disk (not served from the cache)."""
    calls: list[str] = []
    real = manager_module.load_checkpoint

    def counting(info, *args, **kwargs):
        calls.append(info.name)
        return real(info, *args, **kwargs)

    monkeypatch.setattr(manager_module, "load_checkpoint", counting)
    return calls


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def _unet_works(model: LoadedModel) -> torch.Tensor:
    cfg = model.unet.config
    x = torch.ones(1, cfg.in_channels, 8, 8)
    out = model.unet(x, torch.tensor([10]), encoder_hidden_states=torch.ones(1, 77, cfg.cross_attention_dim))
    assert torch.isfinite(out.sample).all()
    return out.sample


# identity and hashes ------------------------------------------------------------------------------
def test_title_and_sha256_after_loading_are_cached(
    make_manager: ManagerFactory, sha_calls: list[Path]
) -> None:
    manager = make_manager("sd1.safetensors")
    path = manager.paths.ckpt_dirs[0] / "sd1.safetensors"
    (info,) = manager.refresh()
    assert (info.title, info.sha256, sha_calls) == ("sd1.safetensors", None, [])  # hashing is lazy
    model = manager.load("sd1.safetensors")
    digest = _sha256(path)
    assert model.checkpoint.sha256 == digest
    assert model.checkpoint.title == f"sd1.safetensors [{digest[:10]}]"
    assert sha_calls == [path]
    cache = json.loads(manager.paths.hash_cache_file.read_text(encoding="utf-8"))
    assert cache[str(path.resolve())]["sha256"] == digest

    # a fresh manager (next start of the app) reads the hash from hashes.json
    again = ModelManager(manager.paths, cpu_policy())
    assert [c.title for c in again.refresh()] == [f"sd1.safetensors [{digest[:10]}]"]
    again.load("sd1")
    assert sha_calls == [path]


def test_hash_is_recomputed_when_the_file_changes(
    make_manager: ManagerFactory, sha_calls: list[Path], tiny_checkpoints: dict[str, TinyCheckpoint]
) -> None:
    manager = make_manager("sd1.safetensors")
    path = manager.paths.ckpt_dirs[0] / "sd1.safetensors"
    first = manager.load("sd1")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    shutil.copyfile(tiny_checkpoints["sd1_other.safetensors"].path, path)  # same size, new content
    manager.refresh()
    assert manager.find("sd1").title == "sd1.safetensors"  # the cached hash no longer applies
    second = manager.load("sd1")
    assert second is not first  # not the stale model of the old file
    assert second.checkpoint.sha256 == _sha256(path) != first.checkpoint.sha256
    assert len(sha_calls) == 2
    other_unet = tiny_checkpoints["sd1_other.safetensors"].components["unet"]
    assert torch.equal(second.unet.conv_in.weight, other_unet.conv_in.weight)


def test_lookup_by_every_a1111_identifier(make_manager: ManagerFactory) -> None:
    manager = make_manager("sub/sd1.safetensors", "sd2_v.safetensors")
    path = manager.paths.ckpt_dirs[0] / "sub" / "sd1.safetensors"
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    info = manager.find("sub/sd1.safetensors")
    manager.ensure_hash(info)
    assert (info.name, info.model_name, info.name_for_extra, info.legacy_hash) == (
        "sub/sd1.safetensors",
        "sub_sd1",
        "sd1",
        legacy,
    )
    for key in (
        f"sub/sd1.safetensors [{digest[:10]}]",
        "sub/sd1.safetensors",
        "sub_sd1",
        "sd1",
        digest[:10],
        digest,
        legacy,
        f"sub/sd1.safetensors [{legacy}]",
        "sub/sd1.safetensors [0123456789]",  # a stale hash in an old infotext still finds the file
        str(path),
    ):
        assert manager.find(key) is info, key
    with pytest.raises(ModelNotFound) as err:
        manager.find("sd3_medium")
    message = str(err.value)
    assert "'sd3_medium'" in message
    assert f"sub/sd1.safetensors [{digest[:10]}]" in message and "sd2_v.safetensors" in message


def test_find_accepts_a_path_outside_the_models_folder(make_manager: ManagerFactory, tmp_path: Path) -> None:
    manager = make_manager("sd1.safetensors")
    outside = tmp_path / "elsewhere" / "mine.safetensors"
    outside.parent.mkdir()
    shutil.copy(manager.paths.ckpt_dirs[0] / "sd1.safetensors", outside)
    assert manager.find(str(outside)).name == "mine.safetensors"
    assert [c.name for c in manager.checkpoints()] == ["mine.safetensors", "sd1.safetensors"]


# discovery and VAE choice -------------------------------------------------------------------------
def _write_vae(path: Path, source: Path) -> None:
    """A standalone VAE file (encoder.* / decoder.* keys) taken from a tiny checkpoint."""
    state = load_state_dict(source)
    save_file(
        {k.removeprefix("first_stage_model."): v for k, v in state.items() if "first_stage" in k}, str(path)
    )


def test_discovery_recursive_ckpt_dir_and_vae_beside(
    tmp_path: Path, make_manager: ManagerFactory, tiny_checkpoints: dict[str, TinyCheckpoint]
) -> None:
    extra = tmp_path / "more-models"
    (extra / "x").mkdir(parents=True)
    shutil.copy(tiny_checkpoints["sd1_inpaint.safetensors"].path, extra / "x" / "inpaint.safetensors")
    manager = make_manager("sd1.safetensors", "sub/deeper/sd2_v.safetensors", argv=("--ckpt-dir", str(extra)))
    sd_dir = manager.paths.ckpt_dirs[0]
    assert manager.paths.ckpt_dirs == (tmp_path / "data" / "models" / "Stable-diffusion", extra)
    _write_vae(sd_dir / "sd1.vae.safetensors", tiny_checkpoints["sd1_other.safetensors"].path)
    (sd_dir / "sd1.yaml").write_text("model: {}\n", encoding="utf-8")
    (sd_dir / "notes.txt").write_text("not a model", encoding="utf-8")

    names = [c.name for c in manager.refresh()]
    assert names == ["sd1.safetensors", "sub/deeper/sd2_v.safetensors", "x/inpaint.safetensors"]
    assert manager.find("sub_deeper_sd2_v").path == sd_dir / "sub" / "deeper" / "sd2_v.safetensors"
    assert [v.name for v in manager.vaes()] == ["sd1.vae.safetensors"]

    automatic = manager.load("sd1")  # VAE "Automatic": the sd1.vae.safetensors beside it
    assert automatic.vae_info is not None and automatic.vae_info.name == "sd1.vae.safetensors"
    other_vae = tiny_checkpoints["sd1_other.safetensors"].components["vae"]
    assert torch.equal(automatic.vae.decoder.conv_out.weight, other_vae.decoder.conv_out.weight)
    baked = manager.load("sd1", vae="None")
    baked_vae = tiny_checkpoints["sd1.safetensors"].components["vae"]
    assert baked.vae_info is None
    assert torch.equal(baked.vae.decoder.conv_out.weight, baked_vae.decoder.conv_out.weight)
    assert manager.load("x/inpaint.safetensors").spec.label == "SD1.x inpainting"  # no VAE beside it
    with pytest.raises(ModelNotFound, match=r"available: Automatic, None, sd1\.vae\.safetensors"):
        manager.load("sd1", vae="missing-vae.pt")


def test_paths_from_flags(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    paths = Paths.from_flags(parse_flags([]), root)
    assert paths.models_dir == root / "models"
    assert paths.ckpt_dirs == (root / "models" / "Stable-diffusion",)
    assert paths.vae_dirs == (root / "models" / "VAE",)
    assert paths.hash_cache_file == root / "cache" / "hashes.json"

    flags = parse_flags(["--data-dir", "data", "--models-dir", "/srv/models", "--ckpt-dir", "ckpts"])
    paths = Paths.from_flags(flags, root)
    assert paths.data_dir == root / "data"
    assert paths.models_dir == Path("/srv/models")
    assert paths.ckpt_dirs == (Path("/srv/models/Stable-diffusion"), root / "data" / "ckpts")
    assert paths.outputs_dir == root / "data" / "outputs"
    assert paths.config_file == root / "data" / "config.json"

    created = Paths.from_flags(parse_flags(["--data-dir", str(tmp_path / "d")]), root).ensure()
    assert all((created.models_dir / sub).is_dir() for sub in ("Stable-diffusion", "VAE", "Lora"))


# switching, LRU, memory ---------------------------------------------------------------------------
def test_switch_back_with_one_model_cached_in_ram(
    make_manager: ManagerFactory, load_calls: list[str]
) -> None:
    manager = make_manager(
        "sd1.safetensors", "sd1_inpaint.safetensors", "sd2_v.safetensors", limits=CacheLimits(in_ram=1)
    )
    a = manager.load("sd1")
    b = manager.load("sd1_inpaint")
    assert manager.current is b
    assert manager.load("sd1") is a  # from the RAM cache
    assert manager.load("sd1") is a and load_calls == ["sd1.safetensors", "sd1_inpaint.safetensors"]
    manager.load("sd2_v")  # cache now: sd1 (recently used) and sd2_v; sd1_inpaint was least recent
    assert manager.load("sd1") is a
    assert manager.load("sd1_inpaint") is not b
    assert load_calls == [
        "sd1.safetensors",
        "sd1_inpaint.safetensors",
        "sd2_v.safetensors",
        "sd1_inpaint.safetensors",
    ]
    _unet_works(manager.current)


def test_switch_back_without_cache_reloads(make_manager: ManagerFactory, load_calls: list[str]) -> None:
    manager = make_manager(
        "sd1.safetensors", "sd1_inpaint.safetensors", limits=CacheLimits(on_device=1, in_ram=0)
    )
    a = manager.load("sd1")
    manager.load("sd1_inpaint")
    a2 = manager.load("sd1")
    assert a2 is not a and load_calls == ["sd1.safetensors", "sd1_inpaint.safetensors", "sd1.safetensors"]
    torch.testing.assert_close(_unet_works(a2), _unet_works(a), rtol=0, atol=0)
    assert manager.load() is a2  # no name: the current model


def test_repeated_switches_do_not_leak_memory(make_manager: ManagerFactory) -> None:
    manager = make_manager("sd1.safetensors", "sd1_inpaint.safetensors", limits=CacheLimits(in_ram=0))
    names = ["sd1", "sd1_inpaint"]
    process = psutil.Process()
    for i in range(2):  # warm-up: config folders, allocator pools, lazy imports
        manager.load(names[i % 2])
    gc.collect()
    before = process.memory_info().rss
    for i in range(10):
        manager.load(names[i % 2])
    gc.collect()
    after = process.memory_info().rss
    growth = (after - before) / 2**20
    print(
        f"RSS before {before / 2**20:.1f} MiB, after 10 switches {after / 2**20:.1f} MiB, growth {growth:.1f} MiB"
    )
    assert growth < 150


def test_unload_reload_free_vram_and_close(make_manager: ManagerFactory, load_calls: list[str]) -> None:
    manager = make_manager("sd1.safetensors", "sd1_inpaint.safetensors", limits=CacheLimits(in_ram=1))
    assert manager.reload() is None
    manager.unload()  # nothing loaded: no error
    a = manager.load("sd1")
    b = manager.load("sd1_inpaint")
    manager.unload()
    assert manager.current is b
    assert all(p.device.type == "cpu" for m in b.modules() for p in m.parameters())
    assert manager.reload() is b and b.device == manager.policy.device
    _unet_works(b)
    manager.free_vram()  # drops the cached sd1, keeps the active one
    assert manager.current is b
    assert manager.load("sd1") is not a
    assert load_calls == ["sd1.safetensors", "sd1_inpaint.safetensors", "sd1.safetensors"]
    manager.close()
    assert manager.current is None


def test_on_loaded_callback_and_default_checkpoint(
    tmp_path: Path, tokenizer_cache: Path, tiny_checkpoints
) -> None:
    paths = make_paths(tmp_path, tokenizer_cache)
    seen: list[LoadedModel] = []
    manager = ModelManager(paths, cpu_policy(), on_loaded=seen.append)
    with pytest.raises(ModelNotFound, match="no checkpoints found"):
        manager.load()
    shutil.copy(tiny_checkpoints["sd1_inpaint.safetensors"].path, paths.ckpt_dirs[0] / "b.safetensors")
    shutil.copy(tiny_checkpoints["sd1.safetensors"].path, paths.ckpt_dirs[0] / "a.safetensors")
    manager.refresh()
    model = manager.load()  # the first checkpoint by name
    assert model.checkpoint.name == "a.safetensors" and seen == [model]


# errors keep the previous model -------------------------------------------------------------------
def test_errors_keep_the_previous_model(
    make_manager: ManagerFactory, tiny_checkpoints: dict[str, TinyCheckpoint], tmp_path: Path
) -> None:
    manager = make_manager("sd1.safetensors", "sd2_v.safetensors")
    sd_dir = manager.paths.ckpt_dirs[0]
    good = manager.load("sd1")
    reference = _unet_works(good)
    data = (sd_dir / "sd1.safetensors").read_bytes()
    (sd_dir / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (sd_dir / "garbage.safetensors").write_bytes(b"\x00" * 64 + os.urandom(64))
    (sd_dir / "garbage.ckpt").write_bytes(b"this is not a checkpoint")
    save_file(
        {"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 8)}, str(sd_dir / "lora.safetensors")
    )
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"w": torch.ones(1)}, "x": Evil()}, sd_dir / "evil.ckpt")
    manager.refresh()
    (sd_dir / "sd2_v.safetensors").unlink()  # listed, then deleted before loading

    cases = [
        ("cut.safetensors", CorruptCheckpoint),
        ("garbage.safetensors", CorruptCheckpoint),
        ("garbage.ckpt", CorruptCheckpoint),
        ("lora.safetensors", UnknownArchitecture),
        ("evil.ckpt", UnsafeCheckpoint),
        ("sd2_v.safetensors", ModelNotFound),
        ("no-such-model.safetensors", ModelNotFound),
    ]
    for name, error in cases:
        with pytest.raises(error, match=re.escape(name)):
            manager.load(name)
        assert manager.current is good, name
        torch.testing.assert_close(_unet_works(manager.current), reference, rtol=0, atol=0)
    assert not marker.exists()
    assert manager.load("sd1") is good


@pytest.mark.gpu
def test_unload_and_reload_move_the_model_between_gpu_and_ram(
    tmp_path: Path, tokenizer_cache: Path, tiny_checkpoints: dict[str, TinyCheckpoint]
) -> None:
    from webui.models.devices import choose_policy

    paths = make_paths(tmp_path, tokenizer_cache)
    shutil.copy(tiny_checkpoints["sd1.safetensors"].path, paths.ckpt_dirs[0] / "sd1.safetensors")
    shutil.copy(tiny_checkpoints["sd1_inpaint.safetensors"].path, paths.ckpt_dirs[0] / "b.safetensors")
    manager = ModelManager(paths, choose_policy(parse_flags([])), limits=CacheLimits(in_ram=1))
    a = manager.load("sd1")
    assert all(p.device.type == "cuda" for m in a.modules() for p in m.parameters())
    manager.unload()
    assert all(p.device.type == "cpu" for m in a.modules() for p in m.parameters())
    assert manager.reload() is a and next(a.unet.parameters()).device.type == "cuda"
    b = manager.load("b")  # the previous model leaves the GPU for the RAM cache
    assert next(a.unet.parameters()).device.type == "cpu" and next(b.unet.parameters()).device.type == "cuda"
    manager.close()
