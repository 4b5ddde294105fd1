"""One Disco tab run on the GPU worker: a still run on the latent engine, a 2D animation on it, or a run
of the original Disco models (the pixel engine)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin

from webui.extensions.api import ExtensionRun, InvalidParameter

from .animation import FrameRequest, run_animation
from .keyframes import AnimationSettings
from .prompts import parse_prompt
from .runner import (
    FRAME_KEY,
    INFOTEXT_KEY,
    INIT_SCALE_KEY,
    OUTPUT_FOLDER,
    SETTINGS_KEY,
    DiscoRunner,
    free_name,
    load_init_image,
    pixels,
    to_image,
)
from .settings import DiscoSettings


@dataclasses.dataclass(frozen=True)
class DiscoResult:
    """What a disco job returns: the images (with infotext, seed, file) and, for animations, the videos."""

    images: tuple[Image.Image, ...]
    infotexts: tuple[str, ...]
    seeds: tuple[int, ...]
    paths: tuple[Path, ...]
    videos: tuple[Path, ...] = ()


class DiscoJobs:
    """Runs the Disco tab's jobs; keeps the pixel engine's models loaded between runs."""

    def __init__(self, runner: DiscoRunner) -> None:
        self.runner = runner
        self._pixel_models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def run(
        self,
        run: ExtensionRun,
        settings: DiscoSettings,
        animation: AnimationSettings,
        init: Image.Image | None,
    ) -> DiscoResult:
        """Dispatch one job by engine and animation mode."""
        if animation.animation_mode == "2D":
            if settings.engine != "latent":
                raise InvalidParameter("animation_mode", "2D animation runs on the latent engine")
            return self.animate(run, settings, animation, init)
        if settings.engine == "pixel":
            return self.run_pixel(run, settings, init)
        done = self.runner.run_latent(run, settings, init)
        return DiscoResult(done.images, done.infotexts, done.seeds, done.paths)

    # --- animation (latent engine) --------------------------------------------------------------------

    def animate(
        self,
        run: ExtensionRun,
        settings: DiscoSettings,
        animation: AnimationSettings,
        init: Image.Image | None,
    ) -> DiscoResult:
        """A 2D animation: frame 0 from scratch (or the init image), every later frame the warped previous
        one re-diffused with ``frames_skip_steps`` skipped and ``frames_scale`` as its init loss scale."""
        settings = self.runner.resolved(settings)
        folder_name = f"{OUTPUT_FOLDER}/{settings.batch_name}"
        folder = run.output_folder(OUTPUT_FOLDER, settings.batch_name)
        if not animation.resume:
            settings.save_json(free_name(folder, settings.batch_name, "_settings.json"))
        runner, key = self.runner, self.runner.api.id
        infotexts: list[str] = []

        def render(request: FrameRequest) -> Image.Image:
            frame_settings = settings.replace(seed=request.seed)
            image = request.init_image if request.init_image is not None else init
            skip = (
                request.skip_fraction
                if request.init_image is not None
                else settings.skip_steps / settings.steps
            )
            if image is not None:
                image = image.convert("RGB").resize(
                    (settings.width, settings.height), Image.Resampling.LANCZOS
                )
            args = {SETTINGS_KEY: frame_settings.to_dict(), FRAME_KEY: request.frame}
            if request.init_image is not None:
                args[INIT_SCALE_KEY] = request.init_scale
            run.set_text(f"Disco: frame {request.frame + 1} of {animation.max_frames}")
            result = run.generate(
                {
                    **runner.generation_fields(frame_settings, request.frame, image, skip),
                    "do_not_save_samples": True,
                },
                extension_args={key: args},
                folder=folder_name,
            )
            if result.interrupted or not result.images:
                run.check()
                raise InvalidParameter("frame", f"frame {request.frame} produced no image")
            infotexts.append(result.infotexts[0])
            out = result.images[0].copy()
            out.info["parameters"] = result.infotexts[0]
            return out

        def progress(frame: int, total: int) -> None:
            run.check()

        done = run_animation(
            animation, render, folder, settings.seed, settings.text_prompts, callback=progress,
            batch_name=settings.batch_name,
        )  # fmt: skip
        last = Image.open(done.frame_paths[-1])
        last.load()
        return DiscoResult(
            images=(last,),
            infotexts=(infotexts[-1] if infotexts else str(last.info.get("parameters", "")),),
            seeds=(settings.seed + len(done.frame_paths) - 1,),
            paths=(done.frame_paths[-1],),
            videos=(done.mp4_path, done.gif_path),
        )

    # --- the pixel engine (the original Disco models) -------------------------------------------------

    def pixel_models(self, device: torch.device) -> tuple[Any, Any]:
        """The guided-diffusion UNet (and the secondary model when installed) from ``models/disco/``."""
        from .pixel.models import find_pixel_models, load_pixel_unet, load_secondary_model

        models_dir = self.runner.api.models_dir
        if models_dir is None:
            raise InvalidParameter("engine", "the pixel engine needs a models folder")
        found = find_pixel_models(models_dir)
        unets = [f for f in found if f.kind == "unet"]
        if not unets:
            raise InvalidParameter(
                "engine",
                "the pixel engine needs a Disco Diffusion model (e.g. 512x512_diffusion_uncond_finetune_008100.pt) "
                f"in {Path(models_dir) / 'disco'}",
            )
        secondary_files = [f for f in found if f.kind == "secondary"]
        with self._lock:
            key = (str(unets[0].path), str(device))
            if key not in self._pixel_models:
                self._pixel_models.clear()
                unet = load_pixel_unet(unets[0].path).to(device).eval().requires_grad_(False)
                secondary = None
                if secondary_files:
                    secondary = (
                        load_secondary_model(secondary_files[0].path).to(device).eval().requires_grad_(False)
                    )
                self._pixel_models[key] = (unet, secondary)
            return self._pixel_models[key]

    def run_pixel(self, run: ExtensionRun, settings: DiscoSettings, init: Image.Image | None) -> DiscoResult:
        """Disco's own loop: DDIM (or PLMS) on the unconditional guided-diffusion model, CLIP-guided."""
        from .guidance import ClipGuide
        from .pixel.sampling import run_pixel

        settings = self.runner.resolved(settings)
        device = self.runner.api.device
        unet, secondary = self.pixel_models(device)
        folder = run.output_folder(OUTPUT_FOLDER, settings.batch_name)
        settings.save_json(free_name(folder, settings.batch_name, "_settings.json"))
        if init is None and settings.init_image:
            init = load_init_image(settings.init_image, settings.width, settings.height)
        init_tensor = (
            pixels(init.resize((settings.width, settings.height)), device) if init is not None else None
        )
        prompts = [parse_prompt(line) for line in settings.text_prompts[min(settings.text_prompts)]]
        guide = ClipGuide(
            self.runner.clips(settings.clip_models, device), prompts, None, settings, init_tensor
        )
        mode = "plms" if settings.sampler.lower() == "plms" else "ddim"
        images, infotexts, seeds, paths = [], [], [], []
        for index in range(settings.n_batches):
            seed = (settings.seed + index) % 2**32
            generator = torch.Generator(device="cpu").manual_seed(seed)
            cut_generator = torch.Generator(device="cpu").manual_seed(seed + 1)

            def loss(
                images_pm1: torch.Tensor, step: int, steps: int, cuts: torch.Generator = cut_generator
            ) -> torch.Tensor:
                return guide.loss(images_pm1, step, steps, cuts)

            def report(step: int, total: int, pred: torch.Tensor) -> None:
                run.report(step, total, lambda: to_image(pred[0]))

            run.set_text(f"Disco: image {index + 1} of {settings.n_batches}")
            out = run_pixel(unet, settings, loss, generator, report, secondary, sampling_mode=mode,
                            init_image=init_tensor)  # fmt: skip
            image = to_image(out[0])
            infotext = (
                f"{', '.join(p.text for p in prompts)}\nSeed: {seed}, {INFOTEXT_KEY}: {_quoted(settings)}"
            )
            path = free_name(folder, settings.batch_name, ".png")
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", infotext)
            image.save(path, pnginfo=info)
            images.append(image)
            infotexts.append(infotext)
            seeds.append(seed)
            paths.append(path)
        return DiscoResult(tuple(images), tuple(infotexts), tuple(seeds), tuple(paths))


def _quoted(settings: DiscoSettings) -> str:
    return json.dumps(settings.infotext_value())
