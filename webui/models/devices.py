"""Device and precision policy. Every ``torch.cuda`` / ``torch.mps`` call of the project lives here."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from webui.config.flags import Flags


@dataclass(frozen=True)
class DevicePolicy:
    """Where models run and in which precision."""

    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    attention: str = "sdpa"  # "sdpa" | "xformers"
    offload: str = "none"  # "none" | "medvram" | "lowvram"

    @property
    def is_cuda(self) -> bool:
        """True when the compute device is a CUDA GPU."""
        return self.device.type == "cuda"


def cuda_available() -> bool:
    """Whether a CUDA device can be used."""
    return torch.cuda.is_available()


def mps_available() -> bool:
    """Whether Apple's MPS backend can be used."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def xformers_available() -> bool:
    """Whether the optional xformers package is importable."""
    import importlib.util

    return importlib.util.find_spec("xformers") is not None


def choose_policy(flags: Flags) -> DevicePolicy:
    """CUDA (``--device-id``) > MPS > CPU; fp16 on CUDA unless asked otherwise, fp32 elsewhere."""
    if "all" in flags.use_cpu or "sd" in flags.use_cpu:
        device = torch.device("cpu")
    elif cuda_available():
        device = torch.device(f"cuda:{int(flags.device_id)}" if flags.device_id else "cuda")
    elif mps_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")

    if device.type != "cuda" or flags.no_half or flags.precision in ("full", "fp32"):
        dtype = torch.float32
    elif flags.precision == "bf16":
        dtype = torch.bfloat16
    else:
        dtype = torch.float16
    vae_dtype = torch.float32 if (flags.no_half_vae or dtype == torch.float32) else dtype
    attention = "xformers" if flags.xformers and device.type == "cuda" and xformers_available() else "sdpa"
    offload = "lowvram" if flags.lowvram else "medvram" if flags.medvram else "none"
    return DevicePolicy(device=device, dtype=dtype, vae_dtype=vae_dtype, attention=attention, offload=offload)


def empty_cache(device: torch.device | None = None) -> None:
    """Release cached allocator memory after collecting garbage."""
    gc.collect()
    if device is not None and device.type == "cuda" and cuda_available():
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()
    elif device is not None and device.type == "mps" and mps_available():
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation on ``device`` can use: free on the card plus what PyTorch's cache holds
    unused; None off CUDA (no meaningful bound)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def is_out_of_memory(error: BaseException) -> bool:
    """True for an accelerator out-of-memory error."""
    return isinstance(error, torch.OutOfMemoryError)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement on a CUDA device."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated bytes since the last reset (0 off CUDA)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def memory_report(device: torch.device) -> dict[str, object]:
    """RAM and (on CUDA) VRAM figures in the shape of A1111's ``/sdapi/v1/memory``."""
    import psutil

    vm = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    report: dict[str, object] = {
        "ram": {"free": vm.available, "used": rss, "total": vm.total},
        "cuda": {"error": "CUDA is not in use"},
    }
    if device.type == "cuda" and cuda_available():
        free, total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
        report["cuda"] = {
            "system": {"free": free, "used": total - free, "total": total},
            "active": {
                "current": stats.get("active_bytes.all.current", 0),
                "peak": stats.get("active_bytes.all.peak", 0),
            },
            "allocated": {
                "current": stats.get("allocated_bytes.all.current", 0),
                "peak": stats.get("allocated_bytes.all.peak", 0),
            },
            "reserved": {
                "current": stats.get("reserved_bytes.all.current", 0),
                "peak": stats.get("reserved_bytes.all.peak", 0),
            },
            "inactive": {
                "current": stats.get("inactive_split_bytes.all.current", 0),
                "peak": stats.get("inactive_split_bytes.all.peak", 0),
            },
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
        }
    return report
