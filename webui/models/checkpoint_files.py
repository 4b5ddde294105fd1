"""Reading checkpoint files safely: safetensors headers without tensor data, and tensors from
safetensors or pickle-based ``.ckpt`` files without ever executing code from the file."""

from __future__ import annotations

import json
import pickle
import struct
import types
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from webui.models.errors import CorruptCheckpoint, ModelNotFound, UnsafeCheckpoint
from webui.models.torchscript_files import load_torchscript_tensors, torchscript_prefix

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip


@dataclass(frozen=True)
class CheckpointHeader:
    """Keys, shapes and metadata of a checkpoint, read without loading tensor data."""

    path: Path
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)


def read_safetensors_header(path: Path) -> CheckpointHeader:
    """Parse the JSON header of a ``.safetensors`` file; validates it against the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CorruptCheckpoint(f"{path.name}: file is too short to be a safetensors checkpoint")
            (n,) = struct.unpack("<Q", raw_len)
            if n <= 1 or n > _MAX_HEADER or 8 + n > size:
                raise CorruptCheckpoint(
                    f"{path.name}: invalid safetensors header length {n} (file is {size} bytes)"
                )
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError as e:
        raise ModelNotFound(f"checkpoint file not found: {path}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{path.name}: safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise CorruptCheckpoint(f"{path.name}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    data_len = size - 8 - n
    for key, info in header.items():
        try:
            dtype, shape, (start, end) = (
                info["dtype"],
                tuple(int(d) for d in info["shape"]),
                info["data_offsets"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptCheckpoint(f"{path.name}: malformed entry for tensor {key!r}") from e
        expected = _DTYPE_SIZES.get(dtype, 0) * _numel(shape)
        if end > data_len or start > end or (expected and end - start != expected):
            raise CorruptCheckpoint(
                f"{path.name}: tensor {key!r} lies outside the file or has the wrong size "
                "(the file is truncated or corrupt)"
            )
        shapes[key] = shape
        dtypes[key] = dtype
    return CheckpointHeader(
        path=path, shapes=shapes, dtypes=dtypes, metadata={str(k): str(v) for k, v in metadata.items()}
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def read_header(path: Path) -> CheckpointHeader:
    """Keys and shapes of any supported checkpoint (a ``.ckpt`` is read with restricted unpickling)."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return read_safetensors_header(path)
    state = load_state_dict(path, device="meta")
    return CheckpointHeader(path=path, shapes={k: tuple(v.shape) for k, v in state.items()})


def load_state_dict(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load the tensors of a checkpoint file.

    ``.safetensors`` files are memory-mapped. TorchScript archives (OpenAI's CLIP ``.pt`` files) are read by
    :mod:`webui.models.torchscript_files`: tensors only, no TorchScript. Other pickle-based files go through
    ``torch.load(weights_only=True)`` and, for old files that reference harmless training-framework classes,
    a restricted unpickler that admits only tensors, containers and those classes as inert stubs. Anything else is refused with
    :class:`UnsafeCheckpoint` and nothing from the file is executed.
    """
    if not path.is_file():
        raise ModelNotFound(f"checkpoint file not found: {path}")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        read_safetensors_header(path)  # clear messages for truncation before safetensors' own errors
        import safetensors.torch

        try:
            if device == "meta":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118
            return safetensors.torch.load_file(str(path), device=device)
        except Exception as e:  # safetensors raises its own SafetensorError
            raise CorruptCheckpoint(f"{path.name}: cannot read safetensors data ({e})") from e
    return _load_pickle_checkpoint(path, device)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CorruptCheckpoint(f"{path.name}: the file holds no state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CorruptCheckpoint(f"{path.name}: the file holds no tensors")
    return tensors


def _load_pickle_checkpoint(path: Path, device: str) -> dict[str, torch.Tensor]:
    map_location = "cpu" if device == "meta" else device
    mmap = zipfile.is_zipfile(path)
    prefix = torchscript_prefix(path) if mmap else None
    if prefix is not None:  # torch.load would hand it to torch.jit.load, which runs TorchScript
        return {k: v.to(map_location) for k, v in load_torchscript_tensors(path, prefix).items()}
    try:
        obj = torch.load(str(path), map_location=map_location, weights_only=True, mmap=mmap)
        return _unwrap(obj, path)
    except pickle.UnpicklingError:
        # torch's allow-list refused a global; retry with ours, which stubs a few inert classes.
        try:
            obj = torch.load(
                str(path),
                map_location=map_location,
                weights_only=False,
                pickle_module=_restricted_pickle(),
                mmap=mmap,
            )
        except UnsafeCheckpoint as e:
            raise UnsafeCheckpoint(f"{path.name}: {e}") from None
        except Exception as e:
            # No forbidden global was met: the pickle stream itself is broken.
            raise CorruptCheckpoint(f"{path.name}: cannot read checkpoint ({e})") from e
        return _unwrap(obj, path)
    except (CorruptCheckpoint, UnsafeCheckpoint):
        raise
    except Exception as e:  # a malformed pickle can fail with almost any error (IndexError, KeyError ...)
        raise CorruptCheckpoint(f"{path.name}: cannot read checkpoint ({e})") from e


class _InertStub:
    """Stands in for harmless training-framework objects stored in old checkpoints."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


# (module, name) pairs a restricted unpickler may resolve. Everything else is refused.
_ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = types.MappingProxyType(
    {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "float16"): torch.float16,
        ("torch", "float32"): torch.float32,
        ("torch", "bfloat16"): torch.bfloat16,
        ("builtins", "set"): set,
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): _InertStub,
        ("pytorch_lightning.callbacks.early_stopping", "EarlyStopping"): _InertStub,
        ("numpy.core.multiarray", "scalar"): _InertStub,
        ("numpy._core.multiarray", "scalar"): _InertStub,
        ("numpy", "dtype"): _InertStub,
        ("__builtin__", "set"): set,
    }
)


def _restricted_pickle() -> types.ModuleType:
    """A pickle-like module whose Unpickler resolves only allow-listed globals."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            allowed = _ALLOWED_GLOBALS.get((module, name))
            if allowed is None:
                raise UnsafeCheckpoint(
                    f"refused to load: the checkpoint references {module}.{name}, which is not a tensor "
                    "(it could run code); convert the file to .safetensors from a trusted source"
                )
            return allowed

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.__name__ = "pickle"  # torch checks pickle_module.__name__ for protocol handling
    return module
