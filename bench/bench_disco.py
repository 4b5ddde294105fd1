#!/usr/bin/env python3
"""Disco mode's CLIP guidance cost (latent engine): s/it with and without guidance, and peak VRAM.

    python bench/bench_disco.py                                   # CUDA if present (fp16), else CPU (fp32)
    python bench/bench_disco.py --device cuda --dtype fp16        # the issue's setting: SD1.5, 512x512, 25 steps
    python bench/bench_disco.py --device cpu --size 128 --steps 5 --repeats 1 --threads 2
    python bench/bench_disco.py --tiny                            # smoke run: tiny SD1 and tiny CLIP

An SD1.5-architecture checkpoint with random weights is written in the single-file layout and loaded through
the model manager; a ViT-B/32-architecture CLIP (OpenAI sizes, random weights) is saved as a transformers
folder under ``models/clip/``, where the extension finds it and loads it with ``load_clip_model``. The app is
built with ``build_context`` on the repository (so the shipped disco-mode extension loads) and every run is a
real txt2img job on the GPU worker: the plain run has no ``extension_args``, a guided run carries
``{"disco-mode": {"settings": ...}}``. Disco jobs are submitted as the extension submits its own (the job
generates with the extension as the trusted owner of its ``extension_args`` entry), since disco mode has no
txt2img controls that ``submit_generation`` would accept. Same sampler (Euler a, Karras), steps, size, CFG,
seed for all; the variants are interleaved in every repeat. Guidance uses the latent defaults
(``DiscoSettings.defaults("latent")``: 16 cuts per cut batch, ``guidance_end`` 0.8, ...) except what a
variant changes.

s/it is the sampling loop (from the start of the pass to the last step; the guided pass includes building
the guide, i.e. encoding its text prompts with CLIP) divided by the steps; "job s" is the whole job
(prompt encoding, sampling, VAE decode, image). Peak VRAM is ``torch.cuda.max_memory_allocated`` over a
run (weights included; the CLIP is loaded in fp32, as the extension loads it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

EXTENSION_ID = "disco-mode"
CLIP_NAME = "ViT-B-32-random"
TINY_CLIP_NAME = "tiny-clip-random"
SAMPLER, SCHEDULE = "Euler a", "karras"

# OpenAI CLIP ViT-B/32: vision width 768, 12 layers, patch 32 at 224; text width 512, 12 layers; projection 512.
VIT_B_32 = {
    "vision_config": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          patch_size=32, image_size=224, hidden_act="quick_gelu"),
    "text_config": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                        max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
                        pad_token_id=49407, bos_token_id=49406, eos_token_id=49407),
    "projection_dim": 512,
}  # fmt: skip
TINY_CLIP = {
    "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          patch_size=8, image_size=32),
    "text_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        max_position_embeddings=77, vocab_size=49408, pad_token_id=49407, bos_token_id=49406,
                        eos_token_id=49407),
    "projection_dim": 32,
}  # fmt: skip

# Variant -> changes to the latent defaults (None: no guidance at all).
VARIANTS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "full": {},  # gradient through UNet + VAE decoder, every step, cutn_batches 2 (the default)
    "full-cutn1": {"cutn_batches": 1},
    "approx-grad": {"approximate_gradient": True},  # no UNet backward pass
    "approx-decoder": {"guidance_decoder": "approx"},  # linear latent->RGB instead of the VAE
    "every-2": {"guide_every": 2},
    "cheapest": {"approximate_gradient": True, "guidance_decoder": "approx", "cutn_batches": 1},
}


def write_sd1_checkpoint(path: Path, tiny: bool) -> None:
    """A random-weight SD1 checkpoint: SD1.5's architecture, or the tests' tiny SD1 model."""
    from tests.factories import FULL_SIZE_CONFIGS, _build_components, write_tiny_checkpoint
    from webui.models.ldm_export import export_single_file

    if tiny:
        write_tiny_checkpoint(path, "sd1")
        return
    torch.manual_seed(0)  # the libraries' own random initialisation: activations of sane size
    comps = _build_components(FULL_SIZE_CONFIGS["sd1"], False)
    export_single_file(path, "sd1", comps["unet"], comps["vae"], comps["text_encoder"], dtype=torch.float16)


def write_clip_folder(folder: Path, tiny: bool) -> None:
    """A transformers CLIP folder with random weights and the real CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    from webui.models.tokenizer_files import write_clip_tokenizer

    torch.manual_seed(0)
    sizes = TINY_CLIP if tiny else VIT_B_32
    config = CLIPConfig(
        text_config=dict(sizes["text_config"]),
        vision_config=dict(sizes["vision_config"]),
        projection_dim=sizes["projection_dim"],
    )
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    write_clip_tokenizer(folder)


def guided_steps(settings: Any, steps: int) -> int:
    """How many of ``steps`` the guidance runs at (the window and ``guide_every``, as the wrapper decides)."""
    return sum(
        settings.guidance_start <= step / steps <= settings.guidance_end and step % settings.guide_every == 0
        for step in range(steps)
    )


class StepClock:
    """Times the sampling loop of each job: the pass start (when the denoiser wrappers are built) and every
    step (the ``on_step`` hook), synchronising the device first."""

    def __init__(self, host: Any, device: torch.device) -> None:
        from webui.models import devices

        self._sync = lambda: devices.synchronize(device)
        self._wrap = host.wrap_denoiser
        self.start: float | None = None
        self.steps: list[float] = []
        # engine_services reads host.wrap_denoiser for every job: the clock sits in front of the real one
        host.wrap_denoiser = self.wrap_denoiser
        host.hooks.add("on_step", self.on_step, owner="bench-disco")

    def reset(self) -> None:
        self.start, self.steps = None, []

    def wrap_denoiser(self, model: Any, sampling: Any = None) -> Any:
        self._sync()
        self.start = time.perf_counter()
        return self._wrap(model, sampling)

    def on_step(self, **_: Any) -> None:
        self._sync()
        self.steps.append(time.perf_counter())

    def loop_seconds(self) -> float:
        if self.start is None or not self.steps:
            raise RuntimeError("the sampling loop was not timed (no pass start or no steps)")
        return self.steps[-1] - self.start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=None, help="image side (default 512; 64 with --tiny)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                    help="model precision on CUDA (default fp16); the CPU always runs fp32")  # fmt: skip
    ap.add_argument(
        "--tiny", action="store_true", help="tiny SD1 test model and tiny CLIP: a quick smoke run"
    )
    ap.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    ap.add_argument(
        "--warmup", type=int, default=1, help="warm-up runs (plain and full, 2 steps) before timing"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="data folder to keep (and reuse) the checkpoint and CLIP in; default: a temp folder")  # fmt: skip
    ap.add_argument(
        "--json", default=None, help="write the results here (e.g. bench/results/disco.json; - for stdout)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    dtype = "fp32" if device == "cpu" else (args.dtype or "fp16")
    size = args.size or (64 if args.tiny else 512)
    variants = ["plain", *(v for v in args.variants if v != "plain")]

    from webui.config.flags import parse_flags
    from webui.config.options import Options
    from webui.context import build_context

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-disco-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = (
        work / "models" / "Stable-diffusion" / f"bench-sd1{'-tiny' if args.tiny else '15'}-random.safetensors"
    )
    clip_name = TINY_CLIP_NAME if args.tiny else CLIP_NAME
    clip_dir = work / "models" / "clip" / clip_name
    t0 = time.perf_counter()
    if not ckpt.is_file():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        write_sd1_checkpoint(ckpt, args.tiny)
    if not (clip_dir / "config.json").is_file():
        write_clip_folder(clip_dir, args.tiny)
    print(f"models ready in {time.perf_counter() - t0:.1f}s: {ckpt.name} ({ckpt.stat().st_size / 1e6:.0f} MB), "
          f"CLIP {clip_name}", flush=True)  # fmt: skip

    flag_list = ["--data-dir", str(work)]
    if device == "cpu":
        flag_list += ["--use-cpu", "all"]
    elif dtype == "fp32":
        flag_list += ["--no-half"]
    elif dtype == "bf16":
        flag_list += ["--precision", "bf16"]
    options = Options(None, {"samples_save": False, "grid_save": False, "live_previews_enable": False})
    ctx = build_context(parse_flags(flag_list), ROOT, options=options)
    try:
        return run(args, ctx, ckpt, clip_name, size, dtype, variants)
    finally:
        ctx.close()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(
    args: argparse.Namespace, ctx: Any, ckpt: Path, clip_name: str, size: int, dtype: str, variants: list[str]
) -> int:
    """Load the checkpoint, run the interleaved repeats, print the table (and write the JSON)."""
    from webui.engine.params import GenerationParams
    from webui.extensions.loading import package_name
    from webui.models import devices

    # the extension's own modules, as the host imported them
    settings_mod = importlib.import_module(f"{package_name(EXTENSION_ID)}.settings")
    runner_mod = importlib.import_module(f"{package_name(EXTENSION_ID)}.runner")
    status = {e.id: e for e in ctx.extensions.list()}.get(EXTENSION_ID)
    if status is None or status.status != "loaded":
        raise SystemExit(f"the {EXTENSION_ID} extension did not load: {status and status.error}")
    model = ctx.models.load()  # the only checkpoint in the data folder
    device = model.device
    print(f"loaded {model.spec.label} on {device} ({model.dtype}) in {model.load_seconds:.2f}s; "
          f"{size}x{size}, {args.steps} steps, {SAMPLER} {SCHEDULE}, torch threads {torch.get_num_threads()}",
          flush=True)  # fmt: skip
    weights_gb = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    ctx.start()
    clock = StepClock(ctx.extensions, device)

    base = settings_mod.DiscoSettings.defaults("latent").replace(
        steps=args.steps, width=size, height=size, seed=args.seed, sampler=SAMPLER, schedule=SCHEDULE,
        clip_models=(clip_name,),
    )  # fmt: skip
    _, prompt, negative = runner_mod.split_prompts(base.text_prompts[0])
    negative = ", ".join(t for t in (base.negative_prompt, negative) if t)

    def params_for(variant: str, steps: int) -> GenerationParams:
        changes = VARIANTS[variant]
        ext_args = {}
        if changes is not None:
            settings = base.replace(steps=steps, **changes)
            ext_args = {EXTENSION_ID: {runner_mod.SETTINGS_KEY: settings.to_dict()}}
        return GenerationParams(
            prompt=prompt, negative_prompt=negative, sampler_name=SAMPLER, scheduler=SCHEDULE, steps=steps,
            cfg_scale=base.cfg_scale, eta=base.eta, width=size, height=size, seed=args.seed, batch_size=1,
            do_not_save_samples=True, do_not_save_grid=True, extension_args=ext_args,
        )  # fmt: skip

    def one_run(variant: str, steps: int) -> dict[str, float]:
        params = params_for(variant, steps)
        clock.reset()
        devices.synchronize(device)
        devices.reset_peak_memory(device)
        t = time.perf_counter()
        # the way the extension's own jobs generate: its extension_args entry is trusted (owner)
        job = ctx.submit_job(
            "txt2img", lambda job_ctx: ctx.generate_in_job(params, job_ctx, owner=EXTENSION_ID)
        )
        result = job.wait(24 * 3600)
        devices.synchronize(device)
        job_s = time.perf_counter() - t
        if len(clock.steps) != steps or not result.images:
            raise RuntimeError(
                f"{variant}: expected {steps} steps and an image, got {len(clock.steps)} steps"
            )
        return {"loop_s": clock.loop_seconds(), "job_s": job_s,
                "peak_gb": devices.peak_memory_bytes(device) / 2**30}  # fmt: skip

    for _ in range(args.warmup):  # kernels, allocator, the CLIP load (cached by the extension afterwards)
        for variant in ("plain", "full"):
            one_run(variant, min(args.steps, 2))
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for r in range(args.repeats):  # interleaved so drift hits every variant equally
        for variant in variants:
            runs[variant].append(one_run(variant, args.steps))
            last = runs[variant][-1]
            print(f"  repeat {r + 1}/{args.repeats} {variant:15s} {last['loop_s'] / args.steps:8.3f} s/it  "
                  f"job {last['job_s']:.2f}s", flush=True)  # fmt: skip

    plain_s_it = statistics.median(x["loop_s"] for x in runs["plain"]) / args.steps
    rows = []
    for variant in variants:
        changes = VARIANTS[variant]
        settings = base if changes is None else base.replace(**changes)
        s_it = statistics.median(x["loop_s"] for x in runs[variant]) / args.steps
        rows.append({
            "variant": variant, "changes": changes,
            "guided_steps": 0 if changes is None else guided_steps(settings, args.steps),
            "cutn_batches": None if changes is None else settings.cutn_batches,
            "s_per_it": s_it, "it_per_s": 1 / s_it, "ratio_to_plain": s_it / plain_s_it,
            "job_s": statistics.median(x["job_s"] for x in runs[variant]),
            "peak_vram_gb": max(x["peak_gb"] for x in runs[variant]) if device.type == "cuda" else None,
            "runs": runs[variant],
        })  # fmt: skip

    arch = "tiny SD1 + tiny CLIP" if args.tiny else "SD1.5 + ViT-B/32 (random weights)"
    print(f"\n{arch}, {device} {dtype}, {size}x{size}, {args.steps} steps, {args.repeats} repeat(s), "
          f"median of repeats" + (f"; weights resident {weights_gb:.2f} GB" if device.type == "cuda" else ""))  # fmt: skip
    print(f"{'variant':15s} {'guided':>7s} {'cutn':>4s} {'s/it':>9s} {'it/s':>8s} {'x plain':>8s} "
          f"{'job s':>8s} {'peak GB':>8s}")  # fmt: skip
    for row in rows:
        guided = f"{row['guided_steps']}/{args.steps}"
        cutn = "-" if row["cutn_batches"] is None else str(row["cutn_batches"])
        peak = "-" if row["peak_vram_gb"] is None else f"{row['peak_vram_gb']:.2f}"
        print(f"{row['variant']:15s} {guided:>7s} {cutn:>4s} {row['s_per_it']:9.3f} {row['it_per_s']:8.3f} "
              f"{row['ratio_to_plain']:8.2f} {row['job_s']:8.2f} {peak:>8s}")  # fmt: skip
    full = next((r for r in rows if r["variant"] == "full"), None)
    if device.type == "cuda" and full is not None:
        print(f"targets: full guidance <= 3x plain: {full['ratio_to_plain']:.2f}x; peak VRAM <= 8 GB: "
              f"{max(r['peak_vram_gb'] for r in rows):.2f} GB")  # fmt: skip

    if args.json:
        report = {
            "config": {"arch": arch, "device": str(device), "dtype": dtype, "size": size, "steps": args.steps,
                       "repeats": args.repeats, "sampler": SAMPLER, "schedule": SCHEDULE, "seed": args.seed,
                       "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                       "weights_resident_gb": weights_gb if device.type == "cuda" else None,
                       "guidance_defaults": {k: v for k, v in dataclasses.asdict(base).items()
                                             if k not in ("text_prompts", "image_prompts")}},
            "results": rows,
        }  # fmt: skip
        text = json.dumps(report, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
