"""Reading the tensors of a TorchScript archive (``torch.jit.save``, e.g. OpenAI's CLIP ``.pt`` files)
without running TorchScript and without unpickling anything but tensors and inert attribute records.

A TorchScript zip holds ``<prefix>/data.pkl`` (the module tree: objects of ``__torch__.*`` classes whose
state is a dict of attributes), ``<prefix>/data/<key>`` (raw storages) and ``<prefix>/code/`` (the
TorchScript source, which we never read). Module objects become :class:`_ScriptObject` records; the
tensors found in their attributes are returned under dotted names (``visual.conv1.weight``).
"""

from __future__ import annotations

import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from webui.models.errors import CorruptCheckpoint, UnsafeCheckpoint

_STORAGE_DTYPES = types.MappingProxyType(
    {
        "FloatStorage": torch.float32,
        "HalfStorage": torch.float16,
        "BFloat16Storage": torch.bfloat16,
        "DoubleStorage": torch.float64,
        "LongStorage": torch.int64,
        "IntStorage": torch.int32,
        "ShortStorage": torch.int16,
        "CharStorage": torch.int8,
        "ByteStorage": torch.uint8,
        "BoolStorage": torch.bool,
    }
)


def torchscript_prefix(path: Path) -> str | None:
    """The record prefix of a TorchScript archive (``"model"`` for ``model/data.pkl``), else None."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return None
    for name in names:
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == "constants.pkl" and f"{parts[0]}/data.pkl" in names:
            return parts[0]
    return None


class _ScriptObject:
    """An inert stand-in for a scripted module: keeps its attribute dict, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state) if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """Rebuild a tensor view of a flat storage tensor (``torch._utils._rebuild_tensor_v2``'s arguments)."""
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _identity(value: Any, *_: Any) -> Any:
    return value


def _allowed_global(module: str, name: str) -> Any:
    if module.startswith("__torch__"):
        return _ScriptObject
    if module == "torch" and name in _STORAGE_DTYPES:
        return _STORAGE_DTYPES[name]
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
        return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
        return _identity
    if module == "collections" and name == "OrderedDict":
        return dict
    if module == "torch.jit._pickle" and (name.startswith("build_") or name == "restore_type_tag"):
        return _identity
    return None


def load_torchscript_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """All tensors of the module tree in a TorchScript archive, by dotted attribute name (on the CPU).

    Raises :class:`UnsafeCheckpoint` if the pickle references anything other than scripted-module
    records, storages and tensor rebuilders, and :class:`CorruptCheckpoint` for truncated archives.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            if f"{prefix}/byteorder" in zf.namelist() and zf.read(f"{prefix}/byteorder").strip() != b"little":
                raise CorruptCheckpoint(f"{path.name}: big-endian TorchScript archives are not supported")
            root = _unpickle(zf, prefix, path)
    except (CorruptCheckpoint, UnsafeCheckpoint):
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise CorruptCheckpoint(f"{path.name}: cannot read TorchScript archive ({e})") from e
    tensors: dict[str, torch.Tensor] = {}
    _collect(root, "", tensors, set())
    if not tensors:
        raise CorruptCheckpoint(f"{path.name}: the TorchScript archive holds no tensors")
    return tensors


def _unpickle(zf: zipfile.ZipFile, prefix: str, path: Path) -> Any:
    storages: dict[str, torch.Tensor] = {}

    class ScriptUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            allowed = _allowed_global(module, name)
            if allowed is None:
                raise UnsafeCheckpoint(
                    f"{path.name}: refused to load: the archive references {module}.{name}, which is not a "
                    "tensor (it could run code)"
                )
            return allowed

        def persistent_load(self, pid: Any) -> torch.Tensor:
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise CorruptCheckpoint(f"{path.name}: unexpected storage reference {pid!r}")
            _, dtype, key, _location, numel = pid
            if not isinstance(dtype, torch.dtype):
                raise CorruptCheckpoint(f"{path.name}: unexpected storage type {dtype!r}")
            if key not in storages:
                raw = zf.read(f"{prefix}/data/{key}")
                nbytes = int(numel) * torch.empty((), dtype=dtype).element_size()
                if len(raw) < nbytes:
                    raise CorruptCheckpoint(f"{path.name}: storage {key} is truncated")
                flat = torch.frombuffer(bytearray(raw[:nbytes]), dtype=torch.uint8)
                storages[key] = flat.view(dtype) if nbytes else torch.empty(0, dtype=dtype)
            return storages[key]

    with zf.open(f"{prefix}/data.pkl") as f:
        return ScriptUnpickler(f).load()


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, _ScriptObject):
        for key, value in obj.attributes.items():
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                out[name] = value
            elif isinstance(value, _ScriptObject):
                _collect(value, name + ".", out, seen)
