"""Shared fixtures of the model-manager tests: tiny checkpoints written once per session, fresh data
folders per test, and a manager that loads the tiny models the way a user's install would."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.factories import write_tiny_checkpoint
from webui.config.flags import parse_flags
from webui.config.paths import Paths
from webui.models.configs import tokenizer_dir
from webui.models.devices import DevicePolicy, choose_policy
from webui.models.manager import CacheLimits, ModelManager


@dataclass(frozen=True)
class TinyCheckpoint:
    """A tiny single-file checkpoint written by the factory, with the components it was made from."""

    path: Path
    family: str
    components: Mapping[str, torch.nn.Module]


# file name -> (family, factory keyword arguments)
TINY_CHECKPOINTS: Mapping[str, tuple[str, Mapping[str, object]]] = {
    "sd1.safetensors": ("sd1", {}),
    "sd2_v.safetensors": ("sd2", {"prediction_type": "v"}),
    "sdxl.safetensors": ("sdxl", {}),
    "sdxl_refiner.safetensors": ("sdxl_refiner", {}),
    "sd1_inpaint.safetensors": ("sd1", {"inpaint": True}),
    "sd1_other.safetensors": ("sd1", {"seed": 5}),
}


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyCheckpoint]:
    """Every tiny checkpoint of :data:`TINY_CHECKPOINTS`, written once into a session folder."""
    folder = tmp_path_factory.mktemp("tiny-checkpoints")
    out: dict[str, TinyCheckpoint] = {}
    for name, (family, kwargs) in TINY_CHECKPOINTS.items():
        components = write_tiny_checkpoint(folder / name, family, **kwargs)  # type: ignore[arg-type]
        out[name] = TinyCheckpoint(folder / name, family, components)
    return out


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated tokenizer folders (CLIP-L and OpenCLIP), built once and copied into each data folder."""
    root = tmp_path_factory.mktemp("model-configs")
    tokenizer_dir(root, "<|endoftext|>")
    tokenizer_dir(root, "!")
    return root / "tokenizers"


def make_paths(root: Path, tokenizer_cache: Path, *argv: str) -> Paths:
    """A fresh installation under ``root`` (flags ``argv``), with the tokenizer files pre-seeded."""
    paths = Paths.from_flags(parse_flags(["--data-dir", str(root), *argv]), root).ensure()
    shutil.copytree(tokenizer_cache, paths.model_configs_dir / "tokenizers", dirs_exist_ok=True)
    return paths


def cpu_policy() -> DevicePolicy:
    """fp32 on the CPU, so loaded weights compare exactly with the factory's on any machine."""
    return choose_policy(parse_flags(["--use-cpu", "all"]))


def build_manager(
    root: Path,
    tokenizer_cache: Path,
    tiny_checkpoints: Mapping[str, TinyCheckpoint],
    *names: str,
    limits: CacheLimits | None = None,
    argv: tuple[str, ...] = (),
) -> ModelManager:
    """A CPU :class:`ModelManager` over a data folder ``root`` holding copies of chosen tiny files.

    A name may carry a subfolder (``"sub/sd1.safetensors"``); the file copied is the tiny checkpoint of
    its base name.
    """
    paths = make_paths(root, tokenizer_cache, *argv)
    for name in names:
        target = paths.ckpt_dirs[0] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tiny_checkpoints[Path(name).name].path, target)
    return ModelManager(paths, cpu_policy(), limits=limits)


ManagerFactory = Callable[..., ModelManager]


@pytest.fixture
def make_manager(
    tmp_path: Path, tokenizer_cache: Path, tiny_checkpoints: dict[str, TinyCheckpoint]
) -> Iterator[ManagerFactory]:
    """``make_manager("sd1.safetensors", ..., limits=..., argv=...)``: :func:`build_manager` in a fresh
    data folder of this test."""
    managers: list[ModelManager] = []

    def build(*names: str, limits: CacheLimits | None = None, argv: tuple[str, ...] = ()) -> ModelManager:
        manager = build_manager(
            tmp_path / "data", tokenizer_cache, tiny_checkpoints, *names, limits=limits, argv=argv
        )
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        manager.close()
