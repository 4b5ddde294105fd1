"""User settings (A1111's ``config.json``): names, defaults, types, load and save.

Settings keep A1111's option names so ``/sdapi/v1/options`` clients and old ``config.json`` files work.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

OPTION_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        # Stable Diffusion
        "sd_model_checkpoint": "",
        "sd_vae": "Automatic",
        "sd_checkpoints_limit": 1,
        "sd_checkpoint_cache": 0,
        "CLIP_stop_at_last_layers": 1,
        "emphasis": "Original",
        "use_old_scheduling": False,
        "randn_source": "GPU",
        "img2img_fix_steps": False,
        "initial_noise_multiplier": 1.0,
        "inpainting_mask_weight": 1.0,
        "sdxl_crop_top": 0,
        "sdxl_crop_left": 0,
        "sdxl_refiner_low_aesthetic_score": 2.5,
        "sdxl_refiner_high_aesthetic_score": 6.0,
        # sampler parameters
        "eta_ancestral": 1.0,
        "eta_ddim": 0.0,
        "eta_noise_seed_delta": 0,
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": 0.0,
        "s_noise": 1.0,
        "sigma_min": 0.0,
        "sigma_max": 0.0,
        "rho": 0.0,
        "always_discard_next_to_last_sigma": False,
        # saving images
        "samples_save": True,
        "samples_format": "png",
        "samples_filename_pattern": "",
        "save_images_add_number": True,
        "grid_save": True,
        "grid_format": "png",
        "grid_extended_filename": False,
        "n_rows": -1,
        "return_grid": True,
        "enable_pnginfo": True,
        "jpeg_quality": 80,
        "webp_lossless": False,
        "save_to_dirs": True,
        "grid_save_to_dirs": True,
        "directories_filename_pattern": "[date]",
        "directories_max_prompt_words": 8,
        "outdir_samples": "",
        # live previews
        "live_previews_enable": True,
        "show_progress_every_n_steps": 10,
        "live_preview_content": "Prompt",
        "show_progress_type": "Approx cheap",
        # optimizations
        "cuda_graphs": True,
        # upscaling (model upscalers such as ESRGAN)
        "ESRGAN_tile": 192,
        "ESRGAN_tile_overlap": 8,
        # API
        "api_enable_requests": False,
        "api_max_request_mb": 64,
        "api_max_pixels": 16777216,
        # extensions
        "extensions_index_url": "",
        "disabled_extensions": [],
        # limits
        "max_image_size": 4096,
        "max_batch_count": 100,
        "max_batch_size": 64,
    }
)


class Options:
    """Thread-safe settings store backed by ``config.json`` (unknown keys are kept and saved back)."""

    def __init__(self, file: Path | None = None, values: Mapping[str, Any] | None = None) -> None:
        self._file = file
        self._lock = threading.RLock()
        self._values: dict[str, Any] = dict(OPTION_DEFAULTS)
        if file is not None and file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self._values.update(data)
            except (OSError, ValueError):
                pass  # a broken config.json falls back to defaults; it is overwritten on the next save
        if values:
            self._values.update(values)

    def get(self, name: str, default: Any = None) -> Any:
        """The value of one option (``default`` for unknown names)."""
        with self._lock:
            return self._values.get(name, OPTION_DEFAULTS.get(name, default))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        with self._lock:
            if name in self._values:
                return self._values[name]
        raise AttributeError(f"unknown option {name!r}")

    def as_dict(self) -> dict[str, Any]:
        """A copy of every option."""
        with self._lock:
            return dict(self._values)

    def update(self, changes: Mapping[str, Any], save: bool = True) -> None:
        """Set options (type-checked against the defaults' types) and save ``config.json``."""
        with self._lock:
            for key, value in changes.items():
                default = OPTION_DEFAULTS.get(key)
                if default is not None and not isinstance(default, str) and isinstance(value, str):
                    raise ValueError(f"option {key!r} expects {type(default).__name__}, got {value!r}")
                self._values[key] = value
            if save:
                self.save()

    def save(self) -> None:
        """Write ``config.json`` atomically (no-op without a file)."""
        if self._file is None:
            return
        with self._lock:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._file.parent, prefix=".config-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._values, f, indent=4, ensure_ascii=False)
            os.replace(tmp, self._file)
