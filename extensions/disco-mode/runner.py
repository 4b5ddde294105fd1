"""Running disco: the guidance wrapper the core's sampling passes get, and the jobs of the Disco tab.

Latent engine: a run is an ordinary generation of the loaded checkpoint (any sampler, CFG, img2img for an
init image) whose denoiser is wrapped by :class:`~.guidance.CLIPGuidedDenoiser` when the job carries disco
settings in its ``extension_args``. The wrapper factory is called on the GPU worker for every sampling
pass; CLIP models load there once and stay cached in the :class:`DiscoRunner` (one per extension load).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.extensions.api import (
    ExtensionAPI,
    ExtensionRun,
    GenerationResult,
    InvalidParameter,
    SamplingContext,
)

from .animation import prompts_for_frame
from .clip_interface import GuidanceClip
from .guidance import ClipGuide, CLIPGuidedDenoiser
from .prompts import WeightedPrompt, parse_prompt
from .settings import DiscoSettings

# The key of a disco run's settings inside the job's extension_args entry of this extension.
SETTINGS_KEY = "settings"
FRAME_KEY = "frame"
PARTIALS_KEY = "partials_dir"  # where intermediate saves go (set by the Disco tab's runs)
INIT_SCALE_KEY = "init_scale"
INFOTEXT_KEY = "Disco"
# Named to Disco's folder convention: outputs/disco-images/<batch name>/
OUTPUT_FOLDER = "disco-images"


def split_prompts(lines: Sequence[str]) -> tuple[list[WeightedPrompt], str, str]:
    """Disco prompt lines -> (weighted prompts for CLIP, the SD prompt, the SD negative prompt).

    The checkpoint's own text conditioning gets the positive prompts (joined by ", "); prompts with a
    negative weight, which CLIP pushes away from, go to its negative prompt."""
    prompts = [parse_prompt(line) for line in lines]
    positive = ", ".join(p.text for p in prompts if p.weight > 0)
    negative = ", ".join(p.text for p in prompts if p.weight < 0)
    return prompts, positive, negative


def load_init_image(path: str, width: int, height: int) -> Image.Image:
    """The init image of a run, as RGB at the run's size."""
    file = Path(path)
    if not file.is_file():
        raise InvalidParameter("init_image", f"file not found: {path}")
    try:
        with Image.open(file) as image:
            return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    except OSError as exc:
        raise InvalidParameter("init_image", f"{path} is not a readable image ({exc})") from None


def pixels(image: Image.Image, device: torch.device) -> torch.Tensor:
    """A PIL image as ``[1, 3, H, W]`` in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].to(device)


class DiscoRunner:
    """The extension's state for one load: the CLIP cache and the wrapper factory."""

    def __init__(
        self,
        api: ExtensionAPI,
        load_clip: Callable[[str, torch.device], GuidanceClip],
        clip_names: Callable[[], list[str]],
    ) -> None:
        self.api = api
        self._load_clip = load_clip
        self._clip_names = clip_names
        self._clips: dict[tuple[str, str], GuidanceClip] = {}
        self._lock = threading.Lock()
        self.last_guidance: CLIPGuidedDenoiser | None = None  # the last wrapper built (tests read its loss)

    # --- CLIP models --------------------------------------------------------------------------------

    def resolve_clip_names(self, names: Sequence[str]) -> list[str]:
        """The CLIP models a run uses: the names given, or (none given) every installed one."""
        available = self._clip_names()
        if not names:
            if not available:
                raise InvalidParameter(
                    "clip_models",
                    "no CLIP model is installed: put one in models/clip/ (or train the demo CLIP)",
                )
            return available
        missing = [n for n in names if n not in available]
        if missing:
            raise InvalidParameter(
                "clip_models",
                f"CLIP model {missing[0]!r} not found; installed: {', '.join(available) or '(none)'}",
            )
        return list(names)

    def clips(self, names: Sequence[str], device: torch.device) -> list[GuidanceClip]:
        """The CLIP models ``names`` on ``device`` (loaded once, then cached)."""
        result = []
        with self._lock:
            for name in self.resolve_clip_names(names):
                key = (name, str(device))
                if key not in self._clips:
                    self._clips[key] = self._load_clip(name, device)
                result.append(self._clips[key])
        return result

    def forget_clips(self) -> None:
        """Drop the cached CLIP models (frees their memory)."""
        with self._lock:
            self._clips.clear()

    def resolved(self, settings: DiscoSettings) -> DiscoSettings:
        """``settings`` as the run will use them: a drawn seed for -1 and the CLIP models named, so the
        saved settings reproduce the run."""
        fixed = with_fixed_seed(settings)
        return fixed.replace(clip_models=tuple(self.resolve_clip_names(fixed.clip_models)))

    # --- the denoiser wrapper ----------------------------------------------------------------------

    def settings_of(self, sampling: SamplingContext) -> tuple[DiscoSettings, dict[str, Any]] | None:
        """The disco settings a sampling pass asks for, or None when the job is not a disco job."""
        args = sampling.extension_args.get(self.api.id) or {}
        if SETTINGS_KEY not in args:
            return None
        data = args[SETTINGS_KEY]
        settings = data if isinstance(data, DiscoSettings) else DiscoSettings.from_dict(data)
        return settings, dict(args)

    def wrap(
        self, model: Callable[..., torch.Tensor], sampling: SamplingContext
    ) -> Callable[..., torch.Tensor]:
        """The wrapper factory: ``model`` guided by CLIP for disco jobs, untouched otherwise."""
        found = self.settings_of(sampling)
        if found is None:
            return model
        settings, args = found
        frame = int(args.get(FRAME_KEY, 0))
        prompts = [parse_prompt(line) for line in prompts_for_frame(settings.text_prompts, frame)]
        init = None
        init_scale = float(args.get(INIT_SCALE_KEY, settings.init_scale))
        if init_scale > 0 and getattr(sampling.params, "init_images", None):
            init = pixels(sampling.params.init_images[0], sampling.device)
        guided = settings if init_scale == settings.init_scale else settings.replace(init_scale=init_scale)
        images = image_prompts(settings.image_prompts, frame)
        guide = ClipGuide(self.clips(settings.clip_models, sampling.device), prompts, images, guided, init)
        decode = sampling.decode if settings.guidance_decoder == "vae" else sampling.decode_approx
        seed = sampling.seeds[0] if sampling.seeds else 0
        generator = torch.Generator().manual_seed(int(seed))
        wrapper = CLIPGuidedDenoiser(model, decode, guide, guided, sampling.sigmas, generator)
        self.last_guidance = wrapper
        if args.get(PARTIALS_KEY) and settings.intermediate_save_steps():
            return IntermediateSaver(wrapper, sampling, settings, Path(args[PARTIALS_KEY]))
        return wrapper

    # --- runs ----------------------------------------------------------------------------------------

    def generation_fields(
        self,
        settings: DiscoSettings,
        frame: int = 0,
        init_image: Image.Image | None = None,
        skip: float = 0.0,
    ) -> dict[str, Any]:
        """The core generation request of one latent-engine image (or animation frame)."""
        _, prompt, negative = split_prompts(prompts_for_frame(settings.text_prompts, frame))
        negative = ", ".join(t for t in (settings.negative_prompt, negative) if t)
        fields: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative,
            "sampler_name": settings.sampler,
            "scheduler": settings.schedule,
            "steps": settings.steps,
            "cfg_scale": settings.cfg_scale,
            "width": settings.width,
            "height": settings.height,
            "seed": settings.seed,
            "eta": settings.eta,
            "n_iter": 1,
            "batch_size": 1,
        }
        if init_image is None and settings.init_image:
            init_image = load_init_image(settings.init_image, settings.width, settings.height)
            skip = settings.skip_steps / settings.steps
        if init_image is not None:
            fields.update(mode="img2img", init_images=[init_image], denoising_strength=max(0.01, 1.0 - skip))
        return fields

    def run_latent(
        self, run: ExtensionRun, settings: DiscoSettings, init: Image.Image | None = None
    ) -> GenerationResult:
        """One Disco tab run on the loaded checkpoint: ``n_batches`` images, seeds counting up, saved with
        the settings JSON under ``outputs/disco-images/<batch name>/``. ``init`` (an uploaded image) is used
        like ``init_image``, with ``skip_steps``."""
        folder = run.output_folder(OUTPUT_FOLDER, settings.batch_name)
        fixed = self.resolved(settings)
        fixed.save_json(free_name(folder, settings.batch_name, "_settings.json"))
        if init is not None:
            init = init.convert("RGB").resize((fixed.width, fixed.height), Image.Resampling.LANCZOS)
        run.preview_every(fixed.display_rate)
        images, infotexts, seeds, paths = [], [], [], []
        for index in range(fixed.n_batches):
            run.set_text(f"Disco: image {index + 1} of {fixed.n_batches}")
            one = fixed.replace(seed=(fixed.seed + index) % (2**32))
            result = run.generate(
                self.generation_fields(one, init_image=init, skip=one.skip_steps / one.steps),
                extension_args={
                    self.api.id: {SETTINGS_KEY: one.to_dict(), PARTIALS_KEY: str(folder / "partials")}
                },
                folder=f"{OUTPUT_FOLDER}/{fixed.batch_name}",
            )
            images += result.images
            infotexts += result.infotexts
            seeds += result.seeds
            paths += result.paths
            if result.interrupted:
                break
        return GenerationResult(tuple(images), tuple(infotexts), tuple(seeds), tuple(paths), False)

    def note_infotext(
        self, extension_args: Mapping[str, Any], extra_generation_params: dict[str, Any]
    ) -> None:
        """``before_process`` hook: a disco job's settings go into its infotext (``Disco: {...}``)."""
        args = (extension_args or {}).get(self.api.id) or {}
        if SETTINGS_KEY in args:
            data = args[SETTINGS_KEY]
            settings = data if isinstance(data, DiscoSettings) else DiscoSettings.from_dict(data)
            extra_generation_params[INFOTEXT_KEY] = settings.infotext_value()


class IntermediateSaver:
    """Saves the x0 estimate as a PNG at the steps of ``intermediate_saves`` (Disco's ``partials/``)."""

    def __init__(
        self, guided: CLIPGuidedDenoiser, sampling: SamplingContext, settings: DiscoSettings, folder: Path
    ) -> None:
        self.guided, self.sampling, self.folder = guided, sampling, folder
        self._offset = settings.steps - guided.steps  # steps skipped by an init image
        self._due = set(settings.intermediate_save_steps())
        self._prefix = f"{settings.batch_name}_{sampling.seeds[0] if sampling.seeds else settings.seed}"

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        x0 = self.guided(x, sigma, **cond)
        step = self._offset + self.guided.step_index(sigma)  # the run's step, skipped steps included
        if step in self._due:
            self._due.discard(step)
            with torch.no_grad():
                image = to_image(self.sampling.decode(x0[:1].detach())[0])
            self.folder.mkdir(parents=True, exist_ok=True)
            image.save(self.folder / f"{self._prefix}_{step:04d}.png")
        return x0


def to_image(x: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [-1, 1] -> an RGB image (rounded, not truncated)."""
    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.rint(array).astype(np.uint8))


def image_prompts(table: Mapping[int, Sequence[str]], frame: int) -> list[tuple[Image.Image, float]]:
    """The image prompts in force at ``frame`` (lines ``path:weight``) as ``(RGB image, weight)`` pairs."""
    if not table:
        return []
    pairs = []
    for line in prompts_for_frame(table, frame):
        prompt = parse_prompt(line, "image_prompts")
        file = Path(prompt.text)
        if not file.is_file():
            raise InvalidParameter("image_prompts", f"image prompt file not found: {prompt.text}")
        try:
            with Image.open(file) as image:
                pairs.append((image.convert("RGB"), prompt.weight))
        except OSError as exc:
            raise InvalidParameter(
                "image_prompts", f"{prompt.text} is not a readable image ({exc})"
            ) from None
    return pairs


def with_fixed_seed(settings: DiscoSettings) -> DiscoSettings:
    """``settings`` with a random seed (-1) drawn now, so the saved settings reproduce the run."""
    if settings.seed >= 0:
        return settings
    return settings.replace(seed=secrets.randbelow(2**32))


def free_name(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/<stem>(<n>)<suffix>`` with the first unused n, as Disco numbers its runs."""
    n = 0
    while (folder / f"{stem}({n}){suffix}").exists():
        n += 1
    return folder / f"{stem}({n}){suffix}"
